"""Task event streams (SSE): order, resume, close at terminal, keepalive, slow readers."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import Server, create_task, engine_of, wait_task
from tests.http.sse import next_block, next_event, read_all
from tests.wsop import connect, eventually, expect, mint, thin_path_task

ECHO_TYPES = ["created", "attempt_started", "status", "output", "attempt_ended", "status"]


async def stream(client: TestClient[Any, Any], path: str, last: int | None = None) -> Any:
    headers = {"Last-Event-ID": str(last)} if last is not None else {}
    resp = await client.get(path, headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    return resp


async def test_a_finished_tasks_stream_replays_creation_to_end_in_order_then_closes(
    server: Server,
) -> None:
    client = await server()
    task = await create_task(client, agent="echo")
    await wait_task(client, task["id"])
    events = await read_all(await stream(client, f"/v1/tasks/{task['id']}/events"))
    assert [e.type for e in events] == ECHO_TYPES
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for e in events:
        assert e.data["task_id"] == task["id"] and e.data["type"] == e.type and e.data["at"]
    assert [e.data["status"] for e in events if e.type == "status"] == ["running", "passed"]
    ended = events[4].data
    assert ended["attempt"] == 1 and ended["outcome"] == "passed"
    output = events[3].data
    assert (output["kind"], output["source"]) == ("final", "agent")
    assert "value" not in output  # an output's value may hold anything, credentials too


async def test_a_live_stream_follows_an_operator_served_task_and_closes_at_its_end(
    server: Server,
) -> None:
    client = await server()
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    task = await create_task(
        client, agent="coder", operator={"sid": sid}, layers=["operator_delegate"]
    )
    resp = await stream(client, f"/v1/tasks/{task['id']}/events")
    seen = []
    while not any(e.type == "request" for e in seen):
        event = await next_event(resp)
        assert event is not None
        seen.append(event)
    spawn = await expect(ws, "spawn")
    request = seen[-1].data
    assert (request["req_id"], request["face"], request["sid"]) == (
        spawn["req_id"],
        "backend",
        sid,
    )
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": {"done": 1}})
    rest = await read_all(resp)  # returns only because the server closes the stream
    types = [e.type for e in seen + rest]
    assert types == [
        "created",
        "attempt_started",
        "status",
        "request",
        "reply",
        "output",
        "attempt_ended",
        "status",
    ]
    assert rest[-1].data["status"] == "passed"
    assert spawn["capability_token"] not in str([e.data for e in seen + rest])
    await ws.close()


async def test_a_tasks_history_ends_at_its_terminal_status_even_with_a_watching_hook(
    server: Server, tmp_path: Path
) -> None:
    """The hook_after notice goes out as the attempt's result is decided: it
    is not recorded after the terminal status (with a status the task no
    longer has), so resuming after that status finds nothing, and so does
    the store, once everything queued is written.  On SQLite, where the
    task's end takes a commit, during which the notice goes out."""
    client = await server(store__path=str(tmp_path / "history.sqlite"))
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    task = await thin_path_task(client, ws, sid)  # hook_after received: it was issued
    path = f"/v1/tasks/{task['id']}/events"
    events = await read_all(await stream(client, path))
    assert [e.type for e in events] == [
        "created",
        "attempt_started",
        "status",
        "request",
        "reply",
        "request",
        "output",
        "reply",
        "output",
        "attempt_ended",
        "status",
    ]
    assert [e.data["face"] for e in events if e.type == "request"] == ["spawn_hook", "backend"]
    store = engine_of(client).store
    await store.flush()
    stored = await store.load_events(0, task["id"], 100)
    assert [e.id for e in stored] == [e.id for e in events]
    assert await read_all(await stream(client, path, last=events[-1].id)) == []
    await ws.close()


async def test_last_event_id_resumes_with_exactly_the_events_after_it(server: Server) -> None:
    client = await server()
    task = await create_task(client, agent="echo")
    await wait_task(client, task["id"])
    path = f"/v1/tasks/{task['id']}/events"
    everything = await read_all(await stream(client, path))
    resumed = await read_all(await stream(client, path, last=everything[2].id))
    assert [e.id for e in resumed] == [e.id for e in everything[3:]]
    assert await read_all(await stream(client, path, last=everything[-1].id)) == []


async def test_resume_works_across_a_restart_on_sqlite_and_ids_keep_increasing(
    server: Server, tmp_path: Path
) -> None:
    db = str(tmp_path / "events.sqlite")
    first = await server(store__path=db)
    task = await create_task(first, agent="echo")
    await wait_task(first, task["id"])
    path = f"/v1/tasks/{task['id']}/events"
    before = await read_all(await stream(first, path))
    await first.close()

    second = await server(store__path=db)
    resumed = await read_all(await stream(second, path, last=before[1].id))
    assert [(e.id, e.type, e.data) for e in resumed] == [(e.id, e.type, e.data) for e in before[2:]]
    later = await create_task(second, agent="echo")
    await wait_task(second, later["id"])
    after = await read_all(await stream(second, f"/v1/tasks/{later['id']}/events"))
    assert after[0].id > before[-1].id


async def test_the_all_tasks_stream_filters_by_agent_and_status(server: Server) -> None:
    client = await server()
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    failed = await stream(client, "/v1/events?status=failed")
    by_agent = await stream(client, "/v1/events?agent=echo")
    held = await create_task(
        client, agent="coder", operator={"sid": sid}, layers=["operator_delegate"]
    )
    await expect(ws, "spawn")
    echo = await create_task(client, agent="echo")
    await wait_task(client, echo["id"])
    got = [await next_event(by_agent) for _ in ECHO_TYPES]
    assert [e.type for e in got if e] == ECHO_TYPES
    assert {e.data["task_id"] for e in got if e} == {echo["id"]}
    await ws.close()
    resp = await client.delete(f"/v1/operators/{sid}", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 204
    event = await next_event(failed)
    assert event is not None
    assert (event.data["task_id"], event.data["status"]) == (held["id"], "failed")


async def test_the_all_tasks_stream_starts_now_unless_asked_to_replay(
    server: Server, tmp_path: Path
) -> None:
    """``curl -N /v1/events`` follows what happens from here; ``Last-Event-ID:
    0`` replays everything stored.  Also right after a restart, before this
    process has published anything."""
    db = str(tmp_path / "follow.sqlite")
    first = await server(store__path=db)
    old = await create_task(first, agent="echo")
    await wait_task(first, old["id"])
    await first.close()
    client = await server(store__path=db)
    following = await stream(client, "/v1/events")
    replaying = await stream(client, "/v1/events", last=0)
    new = await create_task(client, agent="echo")
    await wait_task(client, new["id"])
    event = await next_event(following)
    assert event is not None and (event.type, event.data["task_id"]) == ("created", new["id"])
    event = await next_event(replaying)
    assert event is not None and (event.type, event.data["task_id"]) == ("created", old["id"])


async def test_a_quiet_stream_gets_keepalive_comments(server: Server) -> None:
    client = await server(event_keepalive_s=0.05)
    resp = await stream(client, "/v1/events")
    assert await next_block(resp) == [": keepalive"]


async def test_unknown_task_is_404_and_a_bad_last_event_id_is_400(server: Server) -> None:
    client = await server(api_token="tok")
    resp = await client.get("/v1/tasks/t-nope/events")
    assert resp.status == 401
    auth = {"Authorization": "Bearer tok"}
    resp = await client.get("/v1/tasks/t-nope/events", headers=auth)
    assert resp.status == 404
    resp = await client.get("/v1/events", headers={**auth, "Last-Event-ID": "abc"})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "bad_request"


async def test_shutdown_ends_open_streams_cleanly(server: Server) -> None:
    client = await server()
    resp = await stream(client, "/v1/events")
    reading = asyncio.ensure_future(read_all(resp, timeout=10))
    await eventually(lambda: engine_of(client).fanout.subscribers == 1)
    await asyncio.wait_for(client.server.close(), 10)
    assert await asyncio.wait_for(reading, 10) == []  # the chunked body ended properly


async def test_a_reader_that_stops_reading_is_cut_off(server: Server) -> None:
    client = await server(outbound_queue_max=4, write_timeout_s=1)
    engine = engine_of(client)
    # A raw socket with a tiny receive window that never reads past the headers.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (client.host, client.port))
    await loop.sock_sendall(
        sock, f"GET /v1/events HTTP/1.1\r\nHost: {client.host}\r\n\r\n".encode()
    )
    await eventually(lambda: engine.fanout.subscribers == 1)

    async def flood() -> None:
        while engine.fanout.subscribers:
            for _ in range(50):
                await engine.submit(agent="echo", directive="x" * 10)
            await asyncio.sleep(0)

    await asyncio.wait_for(flood(), 30)
    metrics = await (await client.get("/metrics")).text()
    assert "operator_server_slow_peer_disconnects_total 1.0" in metrics
    # The reader, when it finally reads, finds the connection gone.
    received = b""
    while True:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    assert received.startswith(b"HTTP/1.1 200")
    sock.close()


async def test_events_turned_off_store_none_and_both_streams_answer_404(
    server: Server, tmp_path: Path
) -> None:
    client = await server(events=False, **{"store.path": str(tmp_path / "s.sqlite")})
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    task = await create_task(
        client, agent="coder", operator={"sid": sid}, layers=["operator_delegate"]
    )
    spawn = await expect(ws, "spawn")
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": 1, "ok": True})
    assert (await wait_task(client, task["id"]))["status"] == "passed"
    for path in (f"/v1/tasks/{task['id']}/events", "/v1/events"):
        resp = await client.get(path)
        assert resp.status == 404, path
        assert (await resp.json())["error"]["code"] == "not_found"
    store = engine_of(client).store
    await store.flush()
    assert await store.load_events(0, None, 100) == []


async def test_a_task_list_says_where_a_live_follower_of_every_event_takes_over(
    server: Server, tmp_path: Path
) -> None:
    db = str(tmp_path / "handover.sqlite")
    first = await server(store__path=db)
    done = await create_task(first, agent="echo")
    await wait_task(first, done["id"])
    listed = await first.get("/v1/tasks")
    seen = int(listed.headers["X-Last-Event-Id"])
    assert seen == (await read_all(await stream(first, f"/v1/tasks/{done['id']}/events")))[-1].id
    await first.close()

    # After a restart the list still counts what is stored, not from zero.
    second = await server(store__path=db)
    listed = await second.get("/v1/tasks")
    assert int(listed.headers["X-Last-Event-Id"]) == seen
    follow = await stream(second, "/v1/events", last=seen)
    later = await create_task(second, agent="echo")
    first_event = await next_event(follow)
    assert first_event is not None
    assert (first_event.data["task_id"], first_event.type) == (later["id"], "created")


async def test_a_task_stream_resumed_past_its_end_closes_when_the_task_ends(
    server: Server,
) -> None:
    """A Last-Event-ID beyond every event of the task (from another task, or a
    stale store) sends nothing, and the stream still ends with the task."""
    client = await server()
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    held = await create_task(
        client, agent="coder", operator={"sid": sid}, layers=["operator_delegate"]
    )
    await expect(ws, "spawn")  # held there: the task runs until cancelled
    path = f"/v1/tasks/{held['id']}/events"
    resp = await stream(client, path, last=10**15)
    await eventually(lambda: engine_of(client).fanout.subscribers == 1)
    cancel = await client.post(f"/v1/tasks/{held['id']}/cancel", json={})
    assert cancel.status == 200, await cancel.text()
    assert await read_all(resp, timeout=3) == []  # closed, not kept open with keepalives
    # And opened after the end, with such an id: closed at once.
    assert await read_all(await stream(client, path, last=10**15), timeout=3) == []
    await ws.close()


@pytest.mark.parametrize("path", ["/v1/events", "/v1/events?agent=echo"])
async def test_an_event_both_in_the_catch_up_and_queued_live_is_sent_once(
    server: Server, monkeypatch: Any, path: str
) -> None:
    """The stream subscribes, then reads the store.  Here one task runs before
    that read and another after it (the real store's read is held until then),
    so the first task's events are both read and queued, and the second's are
    queued behind them: each must be sent once.  Both the shared feed of the
    unfiltered stream and a filtered stream's own queue."""
    client = await server()
    store = engine_of(client).store
    real_load = store.load_events
    ran: list[str] = []

    async def run_task() -> None:
        task = await create_task(client, agent="echo")
        ran.append(task["id"])
        await wait_task(client, task["id"])
        await store.flush()

    async def load_between_two_tasks(*args: Any) -> Any:
        if ran:
            return await real_load(*args)
        await run_task()
        page = await real_load(*args)
        await run_task()
        return page

    monkeypatch.setattr(store, "load_events", load_between_two_tasks)
    resp = await stream(client, path, last=0)  # catch up on everything stored
    await eventually(lambda: len(ran) == 2, what="the tasks around the read")
    marker = await create_task(client, agent="echo")  # its end is the last thing to read
    seen = []
    while True:
        event = await next_event(resp)
        assert event is not None
        seen.append(event)
        if (event.data["task_id"], event.type, event.data["status"]) == (
            marker["id"],
            "status",
            "passed",
        ):
            break
    ids = [e.id for e in seen]
    assert len(ids) == len(set(ids)), f"sent twice: {sorted(i for i in ids if ids.count(i) > 1)}"
    assert ids == sorted(ids)
    for task_id in ran:
        assert [e.type for e in seen if e.data["task_id"] == task_id] == ECHO_TYPES
