"""Races end in a clear answer: never a 500, never a dead background loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from operator_server.appkeys import STORE
from operator_server.engine import WorkerResult
from tests.conftest import Server, directory_of, engine_of, wait_task
from tests.engine.test_capabilities import bearer, start_parked
from tests.wsop import eventually, handler_suspended, handlers_suspended, mint, slow_body


async def test_concurrent_deletes_give_one_204_and_404s(server: Server, tmp_path: Path) -> None:
    # A real SQLite store, held busy so that every DELETE is in flight at once.
    client = await server(store__path=str(tmp_path / "s.sqlite"))
    sid, token = await mint(client, ["reviewer"])
    store: Any = client.app[STORE]  # type: ignore[index]
    busy = threading.Event()
    hold = asyncio.create_task(store._call(lambda _: busy.wait(5), "hold the store"))
    deletes = [
        asyncio.create_task(client.delete(f"/v1/operators/{sid}", headers=bearer(token)))
        for _ in range(10)
    ]
    await eventually(
        lambda: handlers_suspended("delete_operator") + sum(d.done() for d in deletes) == 10,
        what="every DELETE to be in flight or answered",
    )
    busy.set()
    await hold
    answers = await asyncio.gather(*deletes)
    statuses = sorted(r.status for r in answers)
    assert statuses == [204] + [404] * 9
    for resp in answers:
        if resp.status == 404:
            assert (await resp.json())["error"]["code"] == "operator_not_found"
    assert sid not in directory_of(client).sessions
    # The role was released exactly once and can be taken again.
    await mint(client, ["reviewer"])


async def test_the_idle_sweep_racing_a_delete_ends_cleanly(server: Server, tmp_path: Path) -> None:
    client = await server(store__path=str(tmp_path / "s.sqlite"), session_idle_ttl_s=0.01)
    directory = directory_of(client)
    sid, token = await mint(client, ["reviewer"])
    await eventually(lambda: directory.expired() == [sid], what="the session to be idle")
    swept, deleted = await asyncio.gather(
        directory.sweep(), client.delete(f"/v1/operators/{sid}", headers=bearer(token))
    )
    assert deleted.status in (204, 404)
    # Whoever lost the race did nothing; whoever won removed it once.
    assert (sid in swept) != (deleted.status == 204)
    assert sid not in directory.sessions


async def test_a_failing_sweep_is_logged_and_the_next_one_runs(server: Server) -> None:
    client = await server(sweep_interval_s=0.05, session_idle_ttl_s=0.2)
    directory = directory_of(client)
    real_expired = directory.expired
    failures = []

    def expired_failing_once(now: float | None = None) -> list[str]:
        if not failures:
            failures.append(now)
            raise RuntimeError("sweep broke once")
        return real_expired(now)

    directory.expired = expired_failing_once  # type: ignore[method-assign]
    with capture_logs() as logs:
        sid, _ = await mint(client)
        await eventually(lambda: failures, what="the first sweep to fail")
        await eventually(lambda: sid not in directory.sessions, what="a later sweep to expire it")
    failed = [e for e in logs if e["event"].startswith("sweep failed")]
    assert failed and failed[0]["log_level"] == "error" and failed[0]["exc_info"]


async def test_a_result_arriving_after_its_attempt_ended_is_409(server: Server) -> None:
    client = await server()
    parked, task = await start_parked(client)
    ctx = await parked.attempt(1)
    gate = asyncio.Event()
    post = asyncio.create_task(
        client.post(
            "/v1/worker/result",
            data=slow_body(b'{"value": ', gate, b'"late", "ok": true}'),
            headers=bearer(ctx.worker_handle),
        )
    )
    # The credential has been checked and the handler is waiting for the body.
    await eventually(lambda: handler_suspended("worker_result"), what="the handler to wait")
    resp = await client.post(f"/v1/tasks/{task['id']}/cancel", json={"reason": "stop"})
    assert (await resp.json())["status"] == "cancelled"
    gate.set()
    late = await post
    assert late.status == 409
    assert (await late.json())["error"]["code"] == "attempt_ended"
    done = await wait_task(client, task["id"])
    assert done["attempts"][0]["outputs"] == []


async def test_a_result_for_attempt_1_arriving_during_attempt_2_is_409(server: Server) -> None:
    client = await server()
    parked, task = await start_parked(client, max_attempts=2)
    first = await parked.attempt(1)
    gate = asyncio.Event()
    post = asyncio.create_task(
        client.post(
            "/v1/worker/result",
            data=slow_body(b'{"value": ', gate, b'"late"}'),
            headers=bearer(first.worker_handle),
        )
    )
    await eventually(lambda: handler_suspended("worker_result"), what="the handler to wait")
    parked.release[1].set_result(WorkerResult("not good", ok=False))
    await parked.attempt(2)
    gate.set()
    late = await post
    assert late.status == 409
    assert (await late.json())["error"]["code"] == "attempt_ended"
    engine = engine_of(client)
    assert engine.tasks[task["id"]].attempts[1].tail.events == []
    parked.release[2].set_result(WorkerResult("fine"))
    assert (await wait_task(client, task["id"]))["status"] == "passed"
