"""The client library against a real server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from operator_server.client import (
    Ack,
    Halt,
    OperatorClient,
    RequestFailed,
    TaskClient,
    WorkerClient,
)
from tests.conftest import Server, create_task, directory_of, wait_task
from tests.wsop import eventually, mint


def base(client: TestClient[Any, Any]) -> str:
    return str(client.make_url("")).rstrip("/")


async def started(client: TestClient[Any, Any], **kwargs: Any) -> OperatorClient:
    kwargs = {"backoff_min_s": 0.02, "backoff_max_s": 0.1, **kwargs}
    op = OperatorClient(base(client), **kwargs)
    await op.start()
    return op


async def test_handlers_answer_each_frame_kind(server: Server) -> None:
    client = await server()
    seen: dict[str, list[dict[str, Any]]] = {k: [] for k in ("ask", "hb", "ha", "spawn")}
    after_seen = asyncio.Event()

    async def on_hook_before(frame: dict[str, Any]) -> bool:
        seen["hb"].append(frame)
        return True

    async def on_spawn(frame: dict[str, Any]) -> Any:
        seen["spawn"].append(frame)
        async with WorkerClient(base(client), frame["worker_handle"]) as worker:
            prompt = await worker.prompt()
            await worker.result({"len": len(prompt["prompt"])}, ok=False)
        return {}

    async def on_ask(frame: dict[str, Any]) -> Any:
        seen["ask"].append(frame)
        return {"decision": "override", "note": "fine by me"}

    async def on_hook_after(frame: dict[str, Any]) -> None:
        seen["ha"].append(frame)
        after_seen.set()

    op = await started(
        client,
        roles=["main"],
        on_ask=on_ask,
        on_hook_before=on_hook_before,
        on_hook_after=on_hook_after,
        on_spawn=on_spawn,
    )
    assert op.sid is not None and op.roles == ["main"]
    task = await create_task(client, agent="coder", directive="abcd", operator={"role": "main"})
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed"
    override = {"decision": "override", "note": "fine by me"}
    assert done["result"]["value"] == {"original": {"len": 4}, "senior_answer": override}
    await asyncio.wait_for(after_seen.wait(), 5)
    assert [len(v) for v in seen.values()] == [1, 1, 1, 1]
    await op.close()


async def test_halt_and_explicit_acks_map_to_their_frames(server: Server) -> None:
    client = await server()
    replies = iter([Halt("stop here", 1), Ack("partial", ok=False)])

    async def on_spawn(frame: dict[str, Any]) -> Any:
        return next(replies)

    op = await started(client, on_spawn=on_spawn)
    layers = ["operator_delegate"]
    first = await create_task(client, agent="a", operator={"sid": op.sid}, layers=layers)
    assert (await wait_task(client, first["id"]))["result"]["value"]["halted"] is True
    second = await create_task(client, agent="a", operator={"sid": op.sid}, layers=layers)
    done = await wait_task(client, second["id"])
    assert done["status"] == "blocked" and done["result"] == {"value": "partial", "ok": False}
    await op.close()


async def test_a_server_side_drop_is_survived_and_the_replay_answered_once(server: Server) -> None:
    client = await server()
    calls: list[str] = []
    release = asyncio.Event()

    async def on_spawn(frame: dict[str, Any]) -> Any:
        calls.append(frame["req_id"])
        await release.wait()
        return {"n": len(calls)}

    op = await started(client, on_spawn=on_spawn)
    task = await create_task(client, agent="a", operator={"sid": op.sid})
    await eventually(lambda: len(calls) == 1)
    session = directory_of(client).sessions[op.sid or ""]
    session.close_socket(1011, "test drops the socket")
    await eventually(lambda: op.connects == 2, what="reconnect")
    release.set()
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed" and done["result"]["value"] == {"n": 1}
    assert len(calls) == 1
    assert op.errors == []  # no duplicate reply reached the server
    await op.close()


async def test_a_reply_made_while_disconnected_is_resent_on_the_replay(server: Server) -> None:
    client = await server()
    started_evt, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def on_ask(frame: dict[str, Any]) -> Any:
        nonlocal calls
        calls += 1
        started_evt.set()
        await release.wait()
        return "late but sure"

    op = await started(client, on_ask=on_ask, backoff_min_s=0.3, backoff_max_s=0.3)
    bridge: Any = directory_of(client).sessions[op.sid or ""]
    caller = asyncio.create_task(bridge.ask("t-1", "ok?"))
    await started_evt.wait()
    bridge.close_socket(1011, "drop")
    await eventually(lambda: not op.connected.is_set())
    release.set()  # the handler finishes while no socket is up
    assert await asyncio.wait_for(caller, 5) == "late but sure"
    assert calls == 1
    await op.close()


async def test_a_handler_exception_becomes_a_failure_reply(server: Server) -> None:
    client = await server()

    async def on_spawn(frame: dict[str, Any]) -> Any:
        raise RuntimeError("sub-agent would not start")

    async def on_hook_before(frame: dict[str, Any]) -> bool:
        if frame["agent"] == "picky":
            raise ValueError("cannot decide")
        return True

    op = await started(client, on_spawn=on_spawn, on_hook_before=on_hook_before)
    spawn_task = await create_task(client, agent="a", operator={"sid": op.sid})
    done = await wait_task(client, spawn_task["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "operator_error"
    assert "RuntimeError: sub-agent would not start" in done["error"]["message"]
    hook_task = await create_task(client, agent="picky", operator={"sid": op.sid})
    done = await wait_task(client, hook_task["id"])
    assert done["error"]["message"] == "spawn rejected: ValueError: cannot decide"
    await op.close()


async def test_cancel_reaches_the_handler_and_on_cancel(server: Server) -> None:
    client = await server()
    handler_cancelled, told = asyncio.Event(), asyncio.Event()

    async def on_spawn(frame: dict[str, Any]) -> Any:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            handler_cancelled.set()
            raise

    async def on_cancel(frame: dict[str, Any]) -> None:
        assert frame["reason"] == "stop it"
        told.set()

    op = await started(client, on_spawn=on_spawn, on_cancel=on_cancel)
    task = await create_task(client, agent="a", operator={"sid": op.sid})
    await eventually(lambda: bool(op._handling))
    await client.post(f"/v1/tasks/{task['id']}/cancel", json={"reason": "stop it"})
    await asyncio.wait_for(asyncio.gather(handler_cancelled.wait(), told.wait()), 5)
    await op.close()


async def test_attach_to_an_existing_session_and_leave_deletes_it(server: Server) -> None:
    client = await server()
    sid, token = await mint(client, ["main"])
    op = await started(client, sid=sid, token=token)
    assert op.sid == sid and directory_of(client).sessions[sid].connected
    await op.leave()
    assert sid not in directory_of(client).sessions
    assert (await client.post("/v1/operators", json={"roles": ["main"]})).status == 201


async def test_a_deleted_session_stops_the_client_with_a_reason(server: Server) -> None:
    client = await server()
    sid, token = await mint(client)
    op = await started(client, sid=sid, token=token)
    await client.delete(f"/v1/operators/{sid}", headers={"Authorization": f"Bearer {token}"})
    from operator_server.client.operator import SessionGone

    with pytest.raises(SessionGone):
        await asyncio.wait_for(op.wait_closed(), 5)
    await op.close()


async def test_task_client_drives_the_task_routes(server: Server) -> None:
    client = await server()
    async with TaskClient(base(client)) as tasks:
        created = await tasks.create(agent="echo", directive="hello")
        done = await tasks.get(created["id"], wait=5)
        assert done["result"]["value"] == "hello"
        listed = await tasks.list(status="passed")
        assert [t["id"] for t in listed["tasks"]] == [created["id"]]
        with pytest.raises(RequestFailed) as failed:
            await tasks.cancel(created["id"])
        assert failed.value.status == 409 and failed.value.code == "task_finished"
        with pytest.raises(RequestFailed) as missing:
            await tasks.get("t-nope")
        assert missing.value.code == "task_not_found"


async def test_reassign_moves_a_held_request_to_another_role_and_reports_refusals(
    server: Server,
) -> None:
    client = await server()
    held: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    reasons: list[str] = []

    async def park(frame: dict[str, Any]) -> Any:
        await held.put(frame)
        await asyncio.Event().wait()  # a person still thinking: only a cancel ends it

    async def on_cancel(frame: dict[str, Any]) -> None:
        reasons.append(frame["reason"])

    async def work(frame: dict[str, Any]) -> Any:
        return "done"

    first = await started(
        client, roles=["l1"], on_hook_before=park, on_cancel=on_cancel, on_spawn=work
    )
    second = await started(client, roles=["review"])  # approves by default
    task = await create_task(client, agent="a", operator={"role": "l1"})
    frame = await asyncio.wait_for(held.get(), 5)
    with pytest.raises(ValueError):
        await first.reassign(frame["req_id"])
    assert await first.reassign(frame["req_id"], role="review", note="yours")
    assert not first._handling  # its handler was cancelled: no reply is owed
    with pytest.raises(RequestFailed) as refused:
        await first.reassign(frame["req_id"], role="l1")
    assert (refused.value.code, refused.value.status) == ("already_moved", 409)
    await eventually(lambda: reasons == ["reassigned"])
    # The second seat approved it (its default); the spawn, a new request, is l1's.
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed", done["error"]
    await first.close()
    await second.close()
