"""Task routes beyond bad input: paging, long-poll, and what reaches the log."""

from __future__ import annotations

import asyncio
from typing import Any

from structlog.testing import capture_logs

from operator_server.background import Background
from operator_server.engine import Engine
from operator_server.store import MemoryStore
from tests.conftest import Server, create_task, make_settings, wait_task
from tests.wsop import connect, expect, mint


async def test_listing_pages_with_a_cursor_in_creation_order(server: Server) -> None:
    client = await server()
    ids = [(await create_task(client, agent="echo", directive=i))["id"] for i in range(5)]
    for task_id in ids:
        await wait_task(client, task_id)
    seen: list[str] = []
    params: dict[str, Any] = {"limit": "2"}
    pages = 0
    while True:
        page = await (await client.get("/v1/tasks", params=params)).json()
        pages += 1
        seen += [t["id"] for t in page["tasks"]]
        if page["next"] is None:
            break
        params["after"] = page["next"]
    assert seen == ids and pages == 3
    # A task id works as a cursor too: the listing continues after that task.
    after = await (await client.get("/v1/tasks", params={"after": ids[1]})).json()
    assert [t["id"] for t in after["tasks"]] == ids[2:]
    only = await (await client.get("/v1/tasks", params={"status": "running"})).json()
    assert only == {"tasks": [], "next": None}


async def test_a_long_poll_answers_after_wait_seconds_with_the_task_as_it_is(
    server: Server,
) -> None:
    client = await server()
    sid, _ = await mint(client)  # never connects: the task stays running
    task = await create_task(client, agent="coder", operator={"sid": sid})
    # The task never ends; a poll that ignored its bound would hang here.
    polled = await asyncio.wait_for(wait_task(client, task["id"], wait=0.3), 5)
    assert polled["status"] == "running"


async def test_no_configured_secret_means_a_random_one_and_no_warning() -> None:
    # A random key loses nothing on one daemon: capabilities never outlive the
    # process that minted them (README, "Decisions where the spec was silent").
    with capture_logs() as logs:
        Engine(make_settings(secret=""), Background(), MemoryStore())
    assert [e["log_level"] for e in logs if "no secret configured" in e["event"]] == ["debug"]


async def test_capabilities_and_handles_never_reach_the_log(server: Server) -> None:
    client = await server()
    with capture_logs() as logs:
        sid, token = await mint(client)
        ws = await connect(client, sid, token)
        task = await create_task(
            client, agent="coder", operator={"sid": sid}, layers=["operator_delegate"]
        )
        spawn = await expect(ws, "spawn")
        handle = {"Authorization": f"Bearer {spawn['worker_handle']}"}
        await client.get("/v1/worker/prompt", headers=handle)
        await client.post("/v1/worker/result", json={"value": 1}, headers=handle)
        await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"]})
        assert (await wait_task(client, task["id"]))["status"] == "passed"
    text = repr(logs)
    assert logs  # the path did log
    for secret in (token, spawn["worker_handle"], spawn["capability_token"]):
        assert secret not in text
