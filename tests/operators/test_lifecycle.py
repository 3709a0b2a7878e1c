"""Connection lifecycle: for every way a socket goes away, each pending request ends."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from structlog.testing import capture_logs

from tests.conftest import Server, create_task, directory_of, engine_of, wait_task
from tests.wsop import connect, eventually, expect, handlers_suspended, mint, no_frame


async def test_disconnect_mid_spawn_then_reconnect_replays_and_completes(server: Server) -> None:
    client = await server()
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    task = await create_task(client, agent="coder", operator={"sid": sid})
    hook = await expect(ws, "hook_before")
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    spawn = await expect(ws, "spawn")
    await ws.close()
    session = directory_of(client).sessions[sid]
    await eventually(lambda: not session.connected, what="detach")
    assert list(session.pending) == [spawn["req_id"]]

    # The sub-agent keeps working over HTTP while its operator is away.
    auth = {"Authorization": f"Bearer {spawn['worker_handle']}"}
    assert (await client.post("/v1/worker/result", json={"value": "v"}, headers=auth)).status == 200

    ws2 = await connect(client, sid, token)
    replayed = await expect(ws2, "spawn")
    assert replayed == spawn  # same req_id, same credentials
    await ws2.send_json({"type": "spawn_ack", "req_id": spawn["req_id"]})
    await expect(ws2, "hook_after")
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed" and done["result"]["value"] == "v"


async def test_replay_resends_every_unanswered_request_in_issue_order_before_new_ones(
    server: Server,
) -> None:
    client = await server()
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    tasks = [await create_task(client, agent="coder", operator={"sid": sid}) for _ in range(5)]
    issued = [(await expect(ws, "hook_before"))["req_id"] for _ in tasks]
    # Answer one so only four are unanswered.
    await ws.send_json({"type": "hook_ack", "req_id": issued[2], "ok": False})
    await wait_task(client, tasks[2]["id"])
    await ws.close()
    await eventually(lambda: not directory_of(client).sessions[sid].connected)

    ws2 = await connect(client, sid, token)
    late = await create_task(client, agent="coder", operator={"sid": sid})
    frames = [await expect(ws2, "hook_before") for _ in range(5)]
    assert [f["req_id"] for f in frames[:4]] == [r for i, r in enumerate(issued) if i != 2]
    assert frames[4]["task_id"] == late["id"]


async def test_a_request_issued_with_no_socket_waits_for_a_connect_within_the_grace(
    server: Server,
) -> None:
    client = await server(reconnect_grace_s=5)
    sid, token = await mint(client)
    task = await create_task(client, agent="coder", operator={"sid": sid})
    session = directory_of(client).sessions[sid]
    await eventually(lambda: len(session.pending) == 1)
    ws = await connect(client, sid, token)
    hook = await expect(ws, "hook_before")
    assert hook["task_id"] == task["id"]
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": False, "reason": "x"})
    assert (await wait_task(client, task["id"]))["error"]["code"] == "spawn_rejected"


async def test_a_request_parked_past_the_grace_fails_operator_unavailable(server: Server) -> None:
    client = await server(reconnect_grace_s=0.2)
    sid, token = await mint(client)
    task = await create_task(client, agent="coder", operator={"sid": sid})
    done = await wait_task(client, task["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "operator_unavailable"
    assert sid in done["error"]["message"] and "reconnect_grace_s" in done["error"]["message"]
    assert directory_of(client).sessions[sid].pending == {}
    # A late connect finds nothing stale to replay.
    ws = await connect(client, sid, token)
    await no_frame(ws)


async def test_a_reply_timeout_sends_cancel_and_fails_operator_timeout(server: Server) -> None:
    client = await server(hook_timeout_s=0.2)
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    task = await create_task(client, agent="coder", operator={"sid": sid})
    hook = await expect(ws, "hook_before")
    cancel = await expect(ws, "cancel")
    assert cancel == {"type": "cancel", "req_id": hook["req_id"], "reason": "no reply within 0.2s"}
    done = await wait_task(client, task["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "operator_timeout"
    # A late reply is refused, and changes nothing.
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    assert (await expect(ws, "error"))["code"] == "unknown_req_id"


async def test_zero_timeout_waits_forever(server: Server) -> None:
    client = await server(hook_timeout_s=0)
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    await create_task(client, agent="coder", operator={"sid": sid})
    await expect(ws, "hook_before")
    # Longer than any small number 0 could be mistaken for (e.g. 1 s).
    await no_frame(ws, within=1.5)
    assert len(directory_of(client).sessions[sid].pending) == 1


async def test_cancelling_a_task_withdraws_each_request_held_for_it(server: Server) -> None:
    client = await server()
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    task = await create_task(client, agent="coder", operator={"sid": sid})
    other = await create_task(client, agent="coder", operator={"sid": sid})
    hooks = {f["task_id"]: f for f in [await expect(ws, "hook_before") for _ in range(2)]}
    resp = await client.post(f"/v1/tasks/{task['id']}/cancel", json={"reason": "user stop"})
    assert (await resp.json())["status"] == "cancelled"
    cancel = await expect(ws, "cancel")
    assert cancel == {
        "type": "cancel",
        "req_id": hooks[task["id"]]["req_id"],
        "reason": "user stop",
    }
    # The other task's request is untouched.
    session = directory_of(client).sessions[sid]
    assert list(session.pending) == [hooks[other["id"]]["req_id"]]


async def test_a_newer_socket_replaces_the_older_and_old_cleanup_keeps_the_new(
    server: Server,
) -> None:
    client = await server()
    sid, token = await mint(client)
    old = await connect(client, sid, token)
    task = await create_task(client, agent="coder", operator={"sid": sid})
    hook = await expect(old, "hook_before")
    new = await connect(client, sid, token)
    closing = await asyncio.wait_for(old.receive(), 5)
    assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 4000
    assert "replaced" in closing.extra
    assert (await expect(new, "hook_before"))["req_id"] == hook["req_id"]
    await old.close()
    await eventually(
        lambda: handlers_suspended("operator_socket") == 1, what="the old handler's cleanup"
    )
    session = directory_of(client).sessions[sid]
    assert session.connected
    await new.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": False})
    assert (await wait_task(client, task["id"]))["status"] == "failed"


async def test_two_sockets_racing_for_one_sid_leave_exactly_one_attached(server: Server) -> None:
    client = await server()
    sid, token = await mint(client)
    a, b = await asyncio.gather(connect(client, sid, token), connect(client, sid, token))
    first_closed = await asyncio.wait(
        [asyncio.create_task(a.receive()), asyncio.create_task(b.receive())],
        timeout=5,
        return_when=asyncio.FIRST_COMPLETED,
    )
    assert len(first_closed[0]) == 1
    closed_msg = next(iter(first_closed[0])).result()
    assert closed_msg.type is aiohttp.WSMsgType.CLOSE and closed_msg.data == 4000
    survivor = b if a.closed or a.close_code else a
    for t in first_closed[1]:
        t.cancel()
    session = directory_of(client).sessions[sid]
    await eventually(
        lambda: handlers_suspended("operator_socket") == 1, what="the loser's handler to end"
    )
    assert session.connected
    task = await create_task(client, agent="coder", operator={"sid": sid})
    hook = await expect(survivor, "hook_before")
    assert hook["task_id"] == task["id"]


async def test_a_silent_peer_is_detached_by_the_heartbeat_and_its_requests_wait(
    server: Server,
) -> None:
    client = await server(heartbeat_s=0.2)
    sid, token = await mint(client)
    ws = await connect(client, sid, token, autoping=False)
    task = await create_task(client, agent="coder", operator={"sid": sid})
    session = directory_of(client).sessions[sid]
    await eventually(lambda: not session.connected, what="heartbeat detach")
    assert len(session.pending) == 1
    await ws.close()
    ws2 = await connect(client, sid, token)
    hook = await expect(ws2, "hook_before")
    assert hook["task_id"] == task["id"]


async def test_idle_sessions_are_swept_like_delete(server: Server) -> None:
    client = await server(session_idle_ttl_s=0.3, sweep_interval_s=0.1, reconnect_grace_s=30)
    sid, token = await mint(client, ["main"])
    kept_sid, kept_token = await mint(client)
    kept = await connect(client, kept_sid, kept_token)
    task = await create_task(client, agent="coder", operator={"sid": sid})
    done = await wait_task(client, task["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "operator_expired"
    assert sid not in directory_of(client).sessions
    assert engine_of(client).resolution.roles.resolve("main") is None
    assert (
        await client.get(f"/v1/operators/{sid}", headers={"Authorization": f"Bearer {token}"})
    ).status == 404
    # A connected session is never idle.
    assert kept_sid in directory_of(client).sessions and not kept.closed


async def test_a_peer_that_stops_reading_is_disconnected_and_loses_nothing(
    server: Server,
) -> None:
    client = await server(write_timeout_s=0.3)
    sid, token = await mint(client)
    ws = await connect(client, sid, token, max_msg_size=0)
    bridge = engine_of(client).resolution.get(sid)
    assert bridge is not None
    session = directory_of(client).sessions[sid]
    big = "x" * 200_000
    with capture_logs() as logs:
        callers = [
            asyncio.create_task(bridge.ask(f"t-{i}", {"i": i, "pad": big})) for i in range(200)
        ]
        await eventually(lambda: not session.connected, within=10, what="slow-peer disconnect")
    assert any("write_timeout_s" in entry["event"] for entry in logs)
    assert len(session.pending) == 200
    await ws.close()

    ws2 = await connect(client, sid, token, max_msg_size=0)
    for _ in range(200):
        ask = await expect(ws2, "ask")
        await ws2.send_json(
            {"type": "answer", "req_id": ask["req_id"], "value": ask["question"]["i"]}
        )
    assert await asyncio.wait_for(asyncio.gather(*callers), 10) == list(range(200))


async def test_cancelled_callers_leave_nothing_pending(server: Server) -> None:
    client = await server()
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    bridge: Any = engine_of(client).resolution.get(sid)
    caller = asyncio.create_task(bridge.ask("t-1", "q"))
    ask = await expect(ws, "ask")
    caller.cancel("caller gave up")
    cancel = await expect(ws, "cancel")
    assert cancel == {"type": "cancel", "req_id": ask["req_id"], "reason": "caller gave up"}
    assert directory_of(client).sessions[sid].pending == {}


async def test_a_burst_past_the_queue_cap_disconnects_and_the_replay_still_gets_through(
    server: Server,
) -> None:
    client = await server(outbound_queue_max=10)
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    bridge: Any = engine_of(client).resolution.get(sid)
    session = directory_of(client).sessions[sid]
    with capture_logs() as logs:
        callers = [asyncio.create_task(bridge.ask(f"t-{i}", i)) for i in range(50)]
        await eventually(lambda: not session.connected, what="cap disconnect")
    assert any("outbound_queue_max" in entry["event"] for entry in logs)
    await ws.close()
    # 50 pending > the cap of 10: the replay is not held to the cap.
    ws2 = await connect(client, sid, token)
    for _ in range(50):
        ask = await expect(ws2, "ask")
        await ws2.send_json({"type": "answer", "req_id": ask["req_id"], "value": ask["question"]})
    assert await asyncio.wait_for(asyncio.gather(*callers), 10) == list(range(50))


async def test_a_hook_after_that_cannot_be_delivered_is_logged_not_lost_silently(
    server: Server,
) -> None:
    from structlog.contextvars import merge_contextvars

    client = await server(reconnect_grace_s=0.2)
    hook_sid, hook_token = await mint(client)
    backend_sid, backend_token = await mint(client)
    hook_ws = await connect(client, hook_sid, hook_token)
    backend_ws = await connect(client, backend_sid, backend_token)
    with capture_logs(processors=[merge_contextvars]) as logs:
        task = await create_task(
            client, agent="coder", operator={"spawn_hook": hook_sid, "backend": backend_sid}
        )
        hook = await expect(hook_ws, "hook_before")
        await hook_ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
        spawn = await expect(backend_ws, "spawn")
        await hook_ws.close()  # the hook's operator leaves before the attempt ends
        hook_session = directory_of(client).sessions[hook_sid]
        await eventually(lambda: not hook_session.connected)
        await backend_ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": 1})
        done = await wait_task(client, task["id"])
        assert done["status"] == "passed"
        await eventually(
            lambda: any(e["event"] == "hook-after not delivered" for e in logs), what="warning"
        )
    warning = next(e for e in logs if e["event"] == "hook-after not delivered")
    assert warning["log_level"] == "warning" and warning["code"] == "operator_unavailable"
    assert warning["task_id"] == task["id"]
    assert hook_session.pending == {}
