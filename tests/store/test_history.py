"""Finished tasks live in the store, not in memory: reads, paging, counters, restart."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from operator_server.app import sweep_once
from operator_server.engine.tasks import Task
from operator_server.store import MemoryStore
from tests.conftest import Server, create_task, engine_of, wait_task
from tests.store.test_durability import crash_image, running_in
from tests.wsop import connect, expect, mint


async def finished(client: TestClient[Any, Any], n: int, **body: Any) -> list[str]:
    ids = [(await create_task(client, agent="echo", directive=i, **body))["id"] for i in range(n)]
    for task_id in ids:
        assert (await wait_task(client, task_id))["status"] == "passed"
    return ids


async def healthz_tasks(client: TestClient[Any, Any]) -> dict[str, int]:
    body = await (await client.get("/v1/healthz")).json()
    tasks: dict[str, int] = body["tasks"]
    return tasks


async def test_a_finished_task_leaves_memory_and_is_served_from_the_store(
    server: Server, tmp_path: Path
) -> None:
    db = tmp_path / "s.sqlite"
    client = await server(store__path=str(db))
    (task_id,) = await finished(client, 1)
    assert task_id not in engine_of(client).tasks
    got = await (await client.get(f"/v1/tasks/{task_id}")).json()
    assert got["status"] == "passed" and got["result"] == {"value": 0, "ok": True}
    waited = await (await client.get(f"/v1/tasks/{task_id}", params={"wait": "5"})).json()
    assert waited == got
    listed = await (await client.get("/v1/tasks", params={"status": "passed"})).json()
    assert listed["tasks"] == [got]
    cancel = await client.post(f"/v1/tasks/{task_id}/cancel")
    assert cancel.status == 409 and (await cancel.json())["error"]["code"] == "task_finished"
    await client.close()

    again = await server(store__path=str(db))
    assert engine_of(again).tasks == {}
    assert await (await again.get(f"/v1/tasks/{task_id}")).json() == got


async def test_a_long_poll_ends_with_the_stored_end(server: Server) -> None:
    client = await server()
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    task = await create_task(client, agent="coder", operator={"sid": sid})
    poll = asyncio.create_task(client.get(f"/v1/tasks/{task['id']}", params={"wait": "5"}))
    hook = await expect(ws, "hook_before")
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": False})
    polled = await (await poll).json()
    assert polled["status"] == "failed"
    assert task["id"] not in engine_of(client).tasks
    assert await (await client.get(f"/v1/tasks/{task['id']}")).json() == polled


async def test_paging_is_stable_while_tasks_change_status_between_pages(server: Server) -> None:
    client = await server()
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    ids = [
        (await create_task(client, agent="coder", operator={"sid": sid}))["id"] for _ in range(5)
    ]
    hooks = {f["task_id"]: f for f in [await expect(ws, "hook_before") for _ in ids]}
    first = await (await client.get("/v1/tasks", params={"status": "running", "limit": "2"})).json()
    assert [t["id"] for t in first["tasks"]] == ids[:2]
    # The cursor's own task and one not yet listed end between the pages.
    for task_id in (ids[1], ids[3]):
        await ws.send_json({"type": "hook_ack", "req_id": hooks[task_id]["req_id"], "ok": False})
        assert (await wait_task(client, task_id))["status"] == "failed"
    rest = await (
        await client.get(
            "/v1/tasks", params={"status": "running", "limit": "2", "after": first["next"]}
        )
    ).json()
    assert [t["id"] for t in rest["tasks"]] == [ids[2], ids[4]]
    assert rest["next"] is None
    everything = await (await client.get("/v1/tasks", params={"limit": "500"})).json()
    assert [t["id"] for t in everything["tasks"]] == ids


async def test_healthz_counts_follow_create_finish_cancel_retention_and_restart(
    server: Server, tmp_path: Path
) -> None:
    db = tmp_path / "s.sqlite"
    client = await server(store__path=str(db), store__retention_s=3600)
    assert await healthz_tasks(client) == {}
    await finished(client, 3)
    assert await healthz_tasks(client) == {"passed": 3}
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    held = await create_task(client, agent="coder", operator={"sid": sid})
    await expect(ws, "hook_before")
    assert await healthz_tasks(client) == {"passed": 3, "running": 1}
    cancelled = await client.post(f"/v1/tasks/{held['id']}/cancel")
    assert (await cancelled.json())["status"] == "cancelled"
    assert await healthz_tasks(client) == {"passed": 3, "cancelled": 1}
    await client.close()

    again = await server(store__path=str(db), store__retention_s=0.05)
    assert await healthz_tasks(again) == {"passed": 3, "cancelled": 1}
    await asyncio.sleep(0.1)  # let the finished tasks age past the retention
    await sweep_once(again.app)  # type: ignore[arg-type]
    assert await healthz_tasks(again) == {}
    assert (await (await again.get("/v1/tasks")).json())["tasks"] == []


async def test_recovery_loads_only_unfinished_tasks(aiohttp_client: Any) -> None:
    store = MemoryStore()
    client = await running_in(aiohttp_client, store)
    done = await finished(client, 30)
    sid, _ = await mint(client)  # never connects: its task stays running
    held = await create_task(client, agent="coder", operator={"sid": sid})
    loaded: list[str] = []
    real_from_record = Task.from_record

    def counting(rec: dict[str, Any]) -> Task:
        loaded.append(rec["id"])
        return real_from_record(rec)

    image = await crash_image(store)
    Task.from_record = staticmethod(counting)  # type: ignore[method-assign,assignment]
    try:
        with capture_logs() as logs:
            again = await running_in(aiohttp_client, image)
    finally:
        Task.from_record = real_from_record  # type: ignore[method-assign]
    summary = next(e for e in logs if e["event"] == "recovered stored state")
    assert summary["tasks"] == 1 and loaded == [held["id"]]
    assert list(engine_of(again).tasks) == [held["id"]]
    # Re-dispatched at once as attempt 2.
    assert await healthz_tasks(again) == {"passed": len(done), "running": 1}
    assert (await (await again.get(f"/v1/tasks/{done[-1]}")).json())["status"] == "passed"
