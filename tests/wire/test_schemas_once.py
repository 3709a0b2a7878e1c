"""Every marshmallow schema a request needs is built once, not per request."""

from __future__ import annotations

from typing import Any

import marshmallow
import pytest

from tests.conftest import Server, create_task, wait_task
from tests.wsop import connect, expect, mint


async def thin_path_task(client: Any, ws: Any, sid: str) -> None:
    task = await create_task(client, agent="coder", directive="d", operator={"sid": sid})
    hook = await expect(ws, "hook_before")
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    spawn = await expect(ws, "spawn")
    auth = {"Authorization": f"Bearer {spawn['worker_handle']}"}
    assert (await client.get("/v1/worker/prompt", headers=auth)).status == 200
    assert (await client.post("/v1/worker/result", json={"value": 1}, headers=auth)).status == 200
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": {}})
    await expect(ws, "hook_after")
    assert (await wait_task(client, task["id"]))["status"] == "passed"
    listed = await client.get("/v1/tasks", params={"status": "passed", "limit": "5"})
    assert listed.status == 200


async def test_a_task_through_the_thin_path_builds_no_schema(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await server()
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    await thin_path_task(client, ws, sid)  # anything built lazily is built now

    built: list[str] = []
    init = marshmallow.Schema.__init__

    def counting(self: marshmallow.Schema, *args: Any, **kwargs: Any) -> None:
        built.append(type(self).__name__)
        init(self, *args, **kwargs)

    monkeypatch.setattr(marshmallow.Schema, "__init__", counting)
    await thin_path_task(client, ws, sid)
    assert built == []
