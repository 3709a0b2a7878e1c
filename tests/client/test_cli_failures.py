"""What the command line says when something goes wrong: Ctrl-C during a wait,
a refused token, no daemon.  Each message names what to do, in the flags and
variables a command-line user has; the CLI runs as a real process against a
real server (or a port nothing listens on)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from tests.client.test_cli import CLI, base, run_cli
from tests.client.test_operator_cli import run_operator_until_exit
from tests.conftest import Server, directory_of
from tests.processes import started
from tests.test_daemon import free_port
from tests.wsop import eventually, mint


async def _interrupted_while_waiting(
    *args: str,
) -> tuple[int, str, str]:
    """Run ``task ... --wait``, send SIGINT once it says it waits; its exit
    code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    started(proc)
    assert proc.stderr is not None and proc.stdout is not None
    line = await asyncio.wait_for(proc.stderr.readline(), 30)
    assert b"waiting up to" in line, line
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), line.decode() + err.decode()


async def test_ctrl_c_during_task_create_wait_prints_the_id_and_how_to_follow_it(
    server: Server,
) -> None:
    client = await server()
    sid, _ = await mint(client)  # never connects: the task runs until cancelled
    code, out, err = await _interrupted_while_waiting(
        "task", "create", "--url", base(client), "--agent", "x", "--directive", "d",
        "--sid", sid, "--wait", "60",
    )  # fmt: skip
    assert code == 130, err
    assert "Traceback" not in err, err
    task_id = json.loads(out)["id"]  # stdout still carries the task, for scripts
    assert f"operator-server task get {task_id} --wait 60 --url {base(client)}" in err, err
    assert "goes on" in err
    # It only stopped waiting: the task is still there, still running.
    resp = await client.get(f"/v1/tasks/{task_id}")
    assert (await resp.json())["status"] == "running"


async def test_ctrl_c_during_task_get_wait_says_how_to_go_on_waiting(server: Server) -> None:
    client = await server()
    sid, _ = await mint(client)
    resp = await client.post(
        "/v1/tasks", json={"agent": "x", "directive": "d", "operator": {"sid": sid}}
    )
    task_id = (await resp.json())["id"]
    await eventually(lambda: len(directory_of(client).sessions[sid].pending) == 1)
    code, out, err = await _interrupted_while_waiting(
        "task", "get", task_id, "--url", base(client), "--wait", "120"
    )
    assert code == 130, err
    assert "Traceback" not in err and out == "", err
    assert f"operator-server task get {task_id} --wait 120 --url {base(client)}" in err, err


# -- a token the daemon refuses ------------------------------------------------


@pytest.mark.parametrize(
    ("token", "said"),
    [(None, "none was given"), ("wrong-token", "refused the API key given")],
)
async def test_a_refused_api_token_is_said_in_flags_and_variables(
    server: Server, token: str | None, said: str
) -> None:
    client = await server(api_token="the-right-token")
    given = ["--api-token", token] if token else []
    code, _, err = await run_cli("task", "list", "--url", base(client), *given)
    assert code == 1
    first, advice = err.strip().split("\n")
    assert json.loads(first)["error"]["code"] == "unauthorized"  # for scripts, unchanged
    assert said in advice
    assert "pass --api-key KEY or set OPERATOR_SERVER_API_KEY" in advice, advice


async def test_the_operator_says_which_flag_a_refused_api_token_needs(
    server: Server, tmp_path: Path
) -> None:
    client = await server(api_token="the-right-token")
    code, _, err = await run_operator_until_exit(
        "--url", base(client), "--role", "main", "--state-file", str(tmp_path / "op.json")
    )
    assert code == 1 and err.count("\n") == 1, err
    assert "pass --api-key KEY or set OPERATOR_SERVER_API_KEY" in err, err
    assert "Bearer" not in err, err


async def test_the_operator_says_a_refused_session_token_is_its_token_flag(
    server: Server, tmp_path: Path
) -> None:
    client = await server()
    sid, _ = await mint(client, ["main"])
    code, _, err = await run_operator_until_exit(
        "--url", base(client), "--role", "main", "--sid", sid, "--token", "x" * 40,
        "--state-file", str(tmp_path / "op.json"),
    )  # fmt: skip
    assert code == 1 and err.count("\n") == 1, err
    assert f"cannot attach to session {sid}: the daemon at {base(client)} refused its token" in err
    assert "as --token" in err, err


# -- no daemon -----------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["task", "get", "t-1"],
        ["task", "list"],
        ["task", "create", "--agent", "echo", "--directive", "x", "--wait", "5"],
        ["task", "cancel", "t-1"],
        ["operator", "--role", "main"],
    ],
    ids=["get", "list", "create", "cancel", "operator"],
)
async def test_no_daemon_is_said_with_the_url_tried_and_how_to_start_one(
    argv: list[str], tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = await asyncio.create_subprocess_exec(
        *CLI, *argv, "--url", url,
        *(["--state-file", str(tmp_path / "op.json")] if argv[0] == "operator" else []),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    started(proc)
    out, raw = await asyncio.wait_for(proc.communicate(), 30)
    err = raw.decode()
    assert proc.returncode == 1 and out == b"", err
    assert err.count("\n") == 1, err
    assert f"cannot reach {url} (connection refused: nothing listens there)" in err, err
    assert "is the daemon running? (`make run`" in err, err
    assert "ssl:default" not in err and "Connect call failed" not in err, err
