"""Worker asks from the client side: a real ``--exec`` sub-agent asking through
``WorkerClient``, and the terminal operator filling an answer form."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest

from operator_server.client import WorkerClient
from operator_server.client.terminal import TerminalOperator
from tests.client.test_cli import start_operator, stop
from tests.client.test_operator_client import base, started
from tests.conftest import Server, create_task, wait_task
from tests.wsop import connect, expect, mint

SUB_AGENT = """
import asyncio, json, os
from operator_server.client import WorkerClient

async def main():
    async with WorkerClient(os.environ["BASE_URL"], os.environ["WORKER_HANDLE"]) as worker:
        schema = {
            "type": "object",
            "properties": {"branch": {"type": "string"}, "force": {"type": "boolean"}},
            "required": ["branch"],
        }
        answer = await worker.ask({"which": "branch?"}, answer_schema=schema, timeout_s=1)
        print(json.dumps(answer))

asyncio.run(main())
"""


async def test_an_exec_sub_agent_asks_mid_spawn_and_the_seniors_answer_comes_back(
    server: Server, tmp_path: Path
) -> None:
    client = await server()
    senior_sid, senior_token = await mint(client, ["senior"])
    senior = await connect(client, senior_sid, senior_token)
    script = tmp_path / "agent.py"
    script.write_text(SUB_AGENT)
    worker_op = await start_operator(
        client, "--role", "main", "--exec", f"{sys.executable} {script}"
    )
    task = await create_task(
        client,
        agent="shell",
        directive="x",
        operator={"backend": "main", "spawn_hook": "main", "senior_bridge": "senior"},
    )
    ask = await expect(senior, "ask", timeout=30)
    assert ask["question"] == {"which": "branch?"}
    assert ask["answer_schema"]["required"] == ["branch"]
    await senior.send_json(
        {"type": "answer", "req_id": ask["req_id"], "value": {"branch": "main", "force": False}}
    )
    done = await wait_task(client, task["id"], wait=30)
    assert done["status"] == "passed", done
    assert done["result"]["value"].strip() == '{"branch": "main", "force": false}'
    [listed] = done["attempts"][0]["asks"]
    # Nested under the spawn the --exec operator held.
    assert listed["parent_req_id"] is not None and "-spawn-" in listed["parent_req_id"]
    assert ask["parent_req_id"] == listed["parent_req_id"]
    await stop(worker_op)


async def test_the_terminal_operator_asks_a_form_field_by_field_typed_by_the_schema(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    typed = "\n".join(["", "fix-1", "maybe", "y", "sideways", "", "two", "3"]) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(typed))
    out = io.StringIO()
    op = TerminalOperator("http://127.0.0.1:1", role="main", out=out, interactive=True)
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "title": "Branch name"},
            "merge": {"type": "boolean"},
            "level": {"type": "string", "enum": ["low", "high"], "default": "low"},
            "retries": {"type": "integer"},
        },
        "required": ["name", "merge"],
    }
    frame = {"req_id": "r", "task_id": "t-1", "question": "how?", "answer_schema": schema}
    answer = await op.on_ask(frame)
    assert answer == {"name": "fix-1", "merge": True, "level": "low", "retries": 3}
    text = out.getvalue()
    assert "Branch name (string, required):" in text
    assert 'level (one of low / high, default "low"):' in text
    assert "required: type a value" in text and "type y or n" in text
    assert "type one of: low, high" in text and "type a whole number" in text


async def test_operator_client_hands_the_schema_to_on_ask_and_worker_client_gets_the_answer(
    server: Server,
) -> None:
    client = await server()
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    seen: list[dict[str, Any]] = []

    async def on_ask(frame: dict[str, Any]) -> Any:
        seen.append(frame)
        return {"n": 7}

    async def on_spawn(frame: dict[str, Any]) -> Any:
        async with WorkerClient(base(client), frame["worker_handle"]) as worker:
            answer = await worker.ask("how many?", answer_schema=schema, timeout_s=5)
            await worker.result(answer)
        return {}

    op = await started(client, roles=["main"], on_ask=on_ask, on_spawn=on_spawn)
    task = await create_task(client, agent="coder", operator={"role": "main"})
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed" and done["result"]["value"] == {"n": 7}
    [frame] = seen
    assert frame["answer_schema"] == schema and frame["question"] == "how many?"
    assert frame["parent_req_id"].startswith(f"{op.sid}-spawn-")
    await op.close()
