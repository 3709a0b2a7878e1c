"""The command-line tools as real processes against a real server."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import Server, create_task, directory_of, wait_task
from tests.processes import started
from tests.wsop import connect, eventually, expect, mint

CLI = [sys.executable, "-m", "operator_server"]


def base(client: TestClient[Any, Any]) -> str:
    return str(client.make_url("")).rstrip("/")


async def run_cli(*args: str) -> tuple[int, Any, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    started(proc)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, json.loads(out) if out.strip() else None, err.decode()


async def started_operator(
    client: TestClient[Any, Any], *args: str
) -> tuple[asyncio.subprocess.Process, bytes]:
    """The ready-made operator as a real process, once seated; and the line it
    printed on taking its seat."""
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "operator",
        "--url",
        base(client),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    started(proc)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert b"waiting for work" in line, line
    return proc, line


async def start_operator(client: TestClient[Any, Any], *args: str) -> asyncio.subprocess.Process:
    proc, _ = await started_operator(client, *args)
    return proc


async def stop(proc: asyncio.subprocess.Process) -> bytes:
    proc.send_signal(signal.SIGINT)
    assert proc.stdout is not None
    rest = await asyncio.wait_for(proc.stdout.read(), 30)
    assert await proc.wait() == 0
    return rest


async def test_ready_made_operator_runs_exec_as_the_sub_agent(server: Server) -> None:
    client = await server()
    script = 'read line; echo "got: $line for $TASK_ID via ${WORKER_HANDLE%%-*}"'
    proc = await start_operator(client, "--role", "main", "--exec", script)
    task = await create_task(client, agent="shell", directive="hello", operator={"role": "main"})
    done = await wait_task(client, task["id"], wait=20)
    assert done["status"] == "passed"
    assert done["result"] == {"value": f"got: hello for {task['id']} via wh\n", "ok": True}
    sid = done["attempts"][0]["served_by"]["backend"]
    rest = await stop(proc)
    assert b"left" in rest
    assert sid not in directory_of(client).sessions  # Ctrl-C left cleanly


async def test_a_failing_command_blocks_the_task_with_its_exit_status_and_stderr(
    server: Server,
) -> None:
    client = await server()
    command = "echo broken; echo 'first line' >&2; echo 'tests failed' >&2; exit 3"
    proc = await start_operator(client, "--role", "runner", "--exec", command)
    task = await create_task(
        client,
        agent="shell",
        directive="x",
        operator={"backend": "runner", "spawn_hook": "runner"},
    )
    done = await wait_task(client, task["id"], wait=20)
    assert done["status"] == "blocked"
    assert done["result"] == {"value": "broken\n", "ok": False}
    error = {"code": "worker_failed", "message": "exec exited 3: first line\ntests failed"}
    assert done["error"] == error and done["attempts"][0]["error"] == error
    rest = await stop(proc)
    assert b"tests failed" in rest  # still shown at the operator's terminal


async def test_a_command_that_is_not_found_says_so_in_the_tasks_error(server: Server) -> None:
    client = await server()
    proc = await start_operator(client, "--role", "runner", "--exec", "nosuchcmd-xyz")
    task = await create_task(
        client, agent="shell", directive="x", operator={"backend": "runner", "spawn_hook": "runner"}
    )
    done = await wait_task(client, task["id"], wait=20)
    assert done["status"] == "blocked"
    assert done["error"]["code"] == "worker_failed"
    message = done["error"]["message"]
    assert message.startswith("exec exited 127: ") and "nosuchcmd-xyz: not found" in message
    await stop(proc)


async def test_only_the_tail_of_a_long_stderr_is_kept(server: Server) -> None:
    client = await server()
    command = "head -c 10000 /dev/zero | tr '\\0' a >&2; echo ' the end' >&2; exit 1"
    proc = await start_operator(client, "--role", "runner", "--exec", command)
    task = await create_task(
        client, agent="shell", directive="x", operator={"backend": "runner", "spawn_hook": "runner"}
    )
    done = await wait_task(client, task["id"], wait=20)
    message = done["error"]["message"]
    assert message.startswith("exec exited 1: aaa") and message.endswith("aaa the end")
    assert len(message) == len("exec exited 1: ") + 2048 - 1  # 2 KB, its last newline stripped
    await stop(proc)


async def test_with_no_terminal_a_failing_command_blocks_and_the_ask_is_declined_quietly(
    server: Server,
) -> None:
    client = await server()
    proc = await start_operator(client, "--role", "main", "--exec", "echo no; exit 1")
    task = await create_task(client, agent="shell", directive="x", operator={"role": "main"})
    done = await wait_task(client, task["id"], wait=20)
    # The senior (this operator, with nobody at its terminal) declined the
    # escalation, so the work's own verdict stands.
    assert done["status"] == "blocked"
    assert done["result"] == {"value": "no\n", "ok": False}
    rest = await stop(proc)
    assert b"Traceback" not in rest, rest.decode()


async def test_approve_none_rejects_every_spawn(server: Server) -> None:
    client = await server()
    proc = await start_operator(client, "--role", "gate", "--approve", "none")
    task = await create_task(client, agent="x", directive="x", operator={"role": "gate"})
    done = await wait_task(client, task["id"], wait=20)
    assert done["error"]["message"] == "spawn rejected: rejected by the operator (--approve none)"
    await stop(proc)


async def test_task_commands_against_a_real_server(server: Server) -> None:
    client = await server()
    url = ["--url", base(client)]
    code, created, _ = await run_cli(
        "task", "create", *url, "--agent", "echo", "--directive", '{"n": 1}', "--wait", "10"
    )
    assert code == 0 and created["status"] == "passed" and created["result"]["value"] == {"n": 1}
    code, got, _ = await run_cli("task", "get", *url, created["id"])
    assert code == 0 and got["id"] == created["id"]
    code, listed, _ = await run_cli("task", "list", *url, "--status", "passed")
    assert code == 0 and [t["id"] for t in listed["tasks"]] == [created["id"]]
    code, _, err = await run_cli("task", "cancel", *url, created["id"])
    assert code == 1 and json.loads(err)["error"]["code"] == "task_finished"
    code, _, err = await run_cli("task", "create", *url, "--agent", "nope", "--directive", "x")
    assert code == 1 and json.loads(err)["error"]["code"] == "unknown_agent"


async def test_task_create_wait_exits_5_when_the_operator_halts_the_task(server: Server) -> None:
    client = await server()
    sid, token = await mint(client, ["main"])
    ws = await connect(client, sid, token)
    waiting = asyncio.ensure_future(
        run_cli(
            "task", "create", "--url", base(client), "--agent", "coder", "--role", "main",
            "--directive", "x", "--wait", "20",
        )
    )  # fmt: skip
    hook = await expect(ws, "hook_before", timeout=30)
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    spawn = await expect(ws, "spawn")
    await ws.send_json({"type": "spawn_halt", "req_id": spawn["req_id"], "reason": "enough"})
    code, halted, _ = await waiting
    assert code == 5 and halted["status"] == "halted"


async def test_task_cancel_command_stops_a_running_task(server: Server) -> None:
    client = await server()
    sid = (await (await client.post("/v1/operators", json={})).json())["sid"]
    task = await create_task(client, agent="x", operator={"sid": sid})
    await eventually(lambda: len(directory_of(client).sessions[sid].pending) == 1)
    code, cancelled, _ = await run_cli(
        "task", "cancel", "--url", base(client), task["id"], "--reason", "from the cli"
    )
    assert code == 0 and cancelled["status"] == "cancelled"
    assert cancelled["error"]["message"] == "from the cli"


async def test_approve_ask_lets_the_person_at_the_terminal_decide(server: Server) -> None:
    import os
    import pty

    client = await server()
    controller, terminal = pty.openpty()  # a real terminal on stdin: isatty() is true
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "operator",
        "--url",
        base(client),
        "--role",
        "gate",
        "--approve",
        "ask",
        "--exec",
        "cat",
        stdin=terminal,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    started(proc)
    os.close(terminal)
    assert proc.stdout is not None
    try:
        assert b"waiting for work" in await asyncio.wait_for(proc.stdout.readline(), 30)

        async def decide(answer: bytes) -> None:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)  # type: ignore[union-attr]
            assert b"approve spawn of" in line and b"[y/N]" in line, line
            os.write(controller, answer)

        no = await create_task(client, agent="a", directive="x", operator={"role": "gate"})
        await decide(b"n\n")
        done = await wait_task(client, no["id"], wait=20)
        assert done["error"]["message"] == "spawn rejected: rejected at the terminal"

        yes = await create_task(client, agent="a", directive="typed yes", operator={"role": "gate"})
        await decide(b"y\n")
        done = await wait_task(client, yes["id"], wait=20)
        assert done["status"] == "passed" and done["result"]["value"] == "typed yes"
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 30)
        os.close(controller)
