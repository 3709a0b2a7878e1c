"""The MCP bridge shows a worker's ask with its form and answers it (real processes)."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.client.test_mcp import bridge, call, call_error, next_of, running_daemon

FORM = {
    "type": "object",
    "properties": {
        "branch": {"type": "string", "title": "Branch"},
        "level": {"type": "string", "enum": ["low", "high"]},
        "merge": {"type": "boolean"},
    },
    "required": ["branch", "merge"],
}


async def test_the_bridge_shows_a_worker_ask_with_its_schema_and_answers_it(
    tmp_path: Path,
) -> None:
    async with (
        running_daemon(tmp_path) as daemon,
        bridge(daemon, tmp_path, "--role", "main") as mcp,
        aiohttp.ClientSession() as http,
    ):
        task = await call(mcp, "task_create", agent="coder", directive="x", role="main")
        await call(mcp, "approve", req_id=(await next_of(mcp, "hook_before"))["req_id"])
        spawn = await next_of(mcp, "spawn")
        auth = {"Authorization": f"Bearer {spawn['worker_handle']}"}
        body = {"question": "which branch?", "answer_schema": FORM, "timeout_s": 0}
        async with http.post(f"{daemon.base}/v1/worker/ask", json=body, headers=auth) as resp:
            assert resp.status == 202
            ask_id = (await resp.json())["ask_id"]

        ask = await next_of(mcp, "ask")
        assert ask["task_id"] == task["id"] and ask["question"] == "which branch?"
        assert ask["answer_schema"] == FORM
        assert ask["parent_req_id"] == spawn["req_id"]
        listed = (await call(mcp, "pending"))["pending"]
        assert [r["answer_schema"] for r in listed if r["type"] == "ask"] == [FORM]

        refused = await call_error(
            mcp, "answer", req_id=ask["req_id"], value={"branch": "main", "merge": "yes"}
        )
        assert refused["code"] == "bad_answer" and "value.merge" in refused["message"]
        assert "nothing was sent" in refused["message"]  # checked before sending
        good = {"branch": "main", "level": "high", "merge": True}
        await call(mcp, "answer", req_id=ask["req_id"], value=good)

        url = f"{daemon.base}/v1/worker/ask/{ask_id}"
        async with http.get(url, params={"wait": "20"}, headers=auth) as resp:
            assert resp.status == 200
            assert await resp.json() == {"ask_id": ask_id, "value": good}
        await call(mcp, "spawn_ack", req_id=spawn["req_id"], value="done")
        done = await call(mcp, "task_get", task_id=task["id"], wait_s=20)
        assert done["status"] == "passed"
