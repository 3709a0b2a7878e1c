"""The ready-made operator as a real process: what people do to it.

Kept sessions, attaching by hand, start-up failures, the --exec process group,
the environment's URL and the exit codes of ``task ... --wait``.
"""

from __future__ import annotations

import asyncio
import signal
import stat
from pathlib import Path

import pytest

from operator_server.client.state import SessionState, default_state_file, load_state, save_state
from tests.client.test_cli import CLI, base, run_cli, start_operator, started_operator, stop
from tests.conftest import Server, create_task, directory_of, wait_task
from tests.processes import started
from tests.test_daemon import free_port
from tests.wsop import eventually, mint


def gone(pid: int) -> bool:
    """No such process, or only its zombie is left (nobody may reap it here)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat_line.rsplit(")", 1)[1].split()[0] == "Z"


async def run_operator_until_exit(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "operator",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    started(proc)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# -- the state file --------------------------------------------------------


async def test_the_session_is_kept_in_a_private_state_file_until_the_operator_leaves(
    server: Server, tmp_path: Path
) -> None:
    client = await server()
    state_file = tmp_path / "op.json"
    proc = await start_operator(client, "--role", "main", "--state-file", str(state_file))
    kept = load_state(state_file)
    assert kept is not None and kept.roles == ["main"] and kept.url == base(client)
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert kept.sid in directory_of(client).sessions
    lock = tmp_path / "op.json.lock"
    assert lock.read_text() == f"{proc.pid}\n"
    await stop(proc)
    assert not state_file.exists() and not lock.exists()  # a clean exit leaves nothing
    assert kept.sid not in directory_of(client).sessions


async def test_by_default_the_state_file_lives_under_xdg_state_home(
    server: Server, state_home: Path
) -> None:
    client = await server()
    proc = await start_operator(client, "--role", "main")
    path = default_state_file("operator", base(client), ["main"])
    assert path.is_relative_to(state_home / "operator-server")
    kept = load_state(path)
    assert kept is not None and kept.sid in directory_of(client).sessions
    await stop(proc)
    assert not path.exists()


async def test_a_restarted_operator_resumes_its_session_instead_of_a_roles_conflict(
    server: Server, tmp_path: Path
) -> None:
    client = await server()
    state_file = str(tmp_path / "op.json")
    first = await start_operator(client, "--role", "main", "--state-file", state_file)
    kept = load_state(Path(state_file))
    assert kept is not None
    first.kill()
    await first.wait()
    second, line = await started_operator(client, "--role", "main", "--state-file", state_file)
    assert line.startswith(f"resumed as {kept.sid}".encode()), line
    assert list(directory_of(client).sessions) == [kept.sid]
    await stop(second)
    assert kept.sid not in directory_of(client).sessions


async def test_a_second_operator_on_the_same_state_file_refuses_naming_the_first(
    server: Server, tmp_path: Path
) -> None:
    client = await server()
    state_file = str(tmp_path / "op.json")
    first = await start_operator(client, "--role", "main", "--state-file", state_file)
    kept = load_state(Path(state_file))
    assert kept is not None
    code, out, err = await run_operator_until_exit(
        "--url", base(client), "--role", "main", "--state-file", state_file
    )
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and f"stop pid {first.pid} first" in err, err
    # Not "give it its own --state-file": the role is the first one's either way.
    assert "another --role" in err and "--take-over" in err and "--state-file" not in err, err
    # The first keeps its seat: not resumed under it, not deleted by the second.
    assert list(directory_of(client).sessions) == [kept.sid]
    assert load_state(Path(state_file)) == kept
    await stop(first)
    assert not directory_of(client).sessions


async def test_take_over_moves_the_session_and_the_first_operator_stops_cleanly(
    server: Server, tmp_path: Path
) -> None:
    client = await server()
    state_file = tmp_path / "op.json"
    lock = tmp_path / "op.json.lock"
    first = await start_operator(client, "--role", "main", "--state-file", str(state_file))
    kept = load_state(state_file)
    assert kept is not None
    second, line = await started_operator(
        client, "--role", "main", "--state-file", str(state_file), "--take-over"
    )
    assert line.startswith(f"resumed as {kept.sid}".encode()), line
    # The first sees its socket replaced and stops, in one line, without
    # deleting the session or its state file, and without reconnecting.
    assert first.stdout is not None
    said = (await asyncio.wait_for(first.stdout.read(), 30)).decode()
    assert await asyncio.wait_for(first.wait(), 30) == 0
    assert said.count("\n") == 1 and "taken over by another connection" in said, said
    assert list(directory_of(client).sessions) == [kept.sid]
    assert load_state(state_file) == kept
    (session,) = directory_of(client).sessions.values()
    assert session.connected
    # The file is guarded again, by the second, once the first is gone.
    await eventually(
        lambda: lock.exists() and lock.read_text() == f"{second.pid}\n", 30, "the lock"
    )
    code, _, err = await run_operator_until_exit(
        "--url", base(client), "--role", "main", "--state-file", str(state_file)
    )
    assert code == 1 and f"pid {second.pid}" in err, err
    task = await create_task(client, agent="echo", directive="x", operator={"role": "main"})
    done = await wait_task(client, task["id"], wait=20)
    assert done["attempts"][0]["served_by"]["backend"] == kept.sid
    await stop(second)
    assert not directory_of(client).sessions
    assert not state_file.exists() and not lock.exists()


class AnswersSwallowed:
    """A TCP proxy to the server that, while ``swallowing``, passes each request
    on but never its answer: the server acts, the client never hears of it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.swallowing = True
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        down = None if self.swallowing else writer
        for pipe in (_pipe(reader, up_writer), _pipe(up_reader, down)):
            task = asyncio.create_task(pipe)
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def close(self) -> None:
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None) -> None:
    """Copy ``reader`` into ``writer`` (None: read and drop) until either end closes."""
    try:
        while data := await reader.read(65536):
            if writer is not None:
                writer.write(data)
                await writer.drain()
    except ConnectionError:
        pass
    finally:
        if writer is not None:
            writer.close()


async def test_an_operator_killed_before_it_kept_its_new_session_takes_it_back(
    server: Server, tmp_path: Path
) -> None:
    client = await server()
    proxy = AnswersSwallowed(int(base(client).rsplit(":", 1)[1]))
    url = await proxy.start()
    state_file = tmp_path / "op.json"
    args = ("operator", "--url", url, "--role", "main", "--state-file", str(state_file))
    pipes = {"stdin": asyncio.subprocess.DEVNULL, "stdout": asyncio.subprocess.PIPE}
    try:
        first = await asyncio.create_subprocess_exec(*CLI, *args, **pipes)
        started(first)
        # The server mints the session; the operator is killed before it hears
        # the answer, so before it could write the new sid down.
        await eventually(lambda: bool(directory_of(client).sessions), 30, "the mint")
        [ghost] = directory_of(client).sessions
        first.kill()
        await first.wait()

        proxy.swallowing = False
        second = await asyncio.create_subprocess_exec(
            *CLI, *args, **pipes, stderr=asyncio.subprocess.STDOUT
        )
        started(second)
        assert second.stdout is not None
        line = await asyncio.wait_for(second.stdout.readline(), 30)
        # Its own session taken back: no roles_conflict with its own ghost.
        assert line.startswith(f"resumed as {ghost}".encode()), line
        assert list(directory_of(client).sessions) == [ghost]
        kept = load_state(state_file)
        assert kept is not None and kept.sid == ghost
        await stop(second)
        assert ghost not in directory_of(client).sessions and not state_file.exists()
    finally:
        await proxy.close()


async def test_a_kept_session_the_server_no_longer_knows_is_replaced_with_a_warning(
    server: Server, tmp_path: Path
) -> None:
    client = await server()
    state_file = tmp_path / "op.json"
    save_state(state_file, SessionState(base(client), "op-deleted", "tok", ["main"]))
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "operator",
        "--url",
        base(client),
        "--role",
        "main",
        "--state-file",
        str(state_file),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    started(proc)
    assert proc.stdout is not None and proc.stderr is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.startswith(b"joined as op-") and b"waiting for work" in line, line
    warning = await asyncio.wait_for(proc.stderr.readline(), 30)
    assert b"op-deleted" in warning and b"joining as a new session" in warning, warning
    kept = load_state(state_file)
    assert kept is not None and kept.sid != "op-deleted"
    assert kept.sid in directory_of(client).sessions
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_a_state_file_for_another_role_is_refused_not_overwritten(
    server: Server, tmp_path: Path
) -> None:
    client = await server()
    state_file = tmp_path / "op.json"
    other = SessionState(base(client), "op-x", "tok", ["other"])
    save_state(state_file, other)
    code, _, err = await run_operator_until_exit(
        "--url", base(client), "--role", "main", "--state-file", str(state_file)
    )
    assert code == 1
    assert err.count("\n") == 1 and "holds session op-x" in err, err
    assert load_state(state_file) == other


async def test_sid_and_token_attach_to_an_existing_session_by_hand(
    server: Server, tmp_path: Path
) -> None:
    client = await server()
    sid, token = await mint(client, ["main"])
    state_file = tmp_path / "op.json"
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "operator",
        "--url",
        base(client),
        "--role",
        "main",
        "--sid",
        sid,
        "--token",
        token,
        "--exec",
        "tr a-z A-Z",
        "--state-file",
        str(state_file),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    started(proc)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.startswith(f"attached as {sid}".encode()), line
    assert load_state(state_file) == SessionState(base(client), sid, token, ["main"])
    task = await create_task(client, agent="shell", directive="by hand", operator={"role": "main"})
    done = await wait_task(client, task["id"], wait=20)
    assert done["status"] == "passed" and done["result"]["value"] == "BY HAND"
    await stop(proc)
    assert sid not in directory_of(client).sessions and not state_file.exists()


async def test_attaching_with_a_wrong_token_fails_with_one_line(server: Server) -> None:
    client = await server()
    sid, _ = await mint(client, ["main"])
    code, _, err = await run_operator_until_exit(
        "--url", base(client), "--role", "main", "--sid", sid, "--token", "wrong"
    )
    assert code == 1
    assert err.count("\n") == 1 and f"cannot attach to session {sid}" in err, err


# -- start-up failures -----------------------------------------------------


async def test_a_held_role_exits_non_zero_with_one_line_and_nothing_left_open(
    server: Server,
) -> None:
    client = await server()
    holder, _ = await mint(client, ["main"])
    code, out, err = await run_operator_until_exit("--url", base(client), "--role", "main")
    assert code == 1 and out == ""
    assert err.count("\n") == 1, err  # no "Unclosed client session" after it
    assert "role already held" in err and holder in err and "--sid/--token" in err


async def test_an_unreachable_server_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = await run_operator_until_exit(
        "--url", url, "--role", "main", "--state-file", str(tmp_path / "op.json")
    )
    assert code == 1
    assert err.count("\n") == 1 and f"cannot reach {url}" in err, err


async def test_url_defaults_to_the_environment_for_operator_and_task(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await server()
    monkeypatch.setenv("OPERATOR_SERVER_URL", base(client))
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "operator",
        "--role",
        "main",
        "--exec",
        "tr a-z A-Z",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    started(proc)
    assert proc.stdout is not None
    assert b"waiting for work" in await asyncio.wait_for(proc.stdout.readline(), 30)
    code, task, _ = await run_cli(
        "task", "create", "--agent", "a", "--directive", "env", "--role", "main", "--wait", "20"
    )
    assert code == 0 and task["result"]["value"] == "ENV"
    await stop(proc)


# -- the --exec process group -----------------------------------------------


GRANDCHILD = 'sleep 60 & echo $! > "$PIDFILE"; '


async def _grandchild_pid(pidfile: Path) -> int:
    await eventually(lambda: pidfile.exists() and pidfile.read_text().strip() != "", within=20)
    return int(pidfile.read_text())


@pytest.mark.parametrize("how", ["cancel", "timeout", "operator leaves"])
async def test_withdrawing_a_spawn_kills_the_commands_whole_process_group(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    client = await server(spawn_timeout_s=2 if how == "timeout" else 10)
    pidfile = tmp_path / "grandchild.pid"
    monkeypatch.setenv("PIDFILE", str(pidfile))
    proc = await start_operator(client, "--role", "main", "--exec", GRANDCHILD + "wait")
    task = await create_task(client, agent="shell", directive="x", operator={"role": "main"})
    pid = await _grandchild_pid(pidfile)
    assert not gone(pid)
    if how == "cancel":
        resp = await client.post(f"/v1/tasks/{task['id']}/cancel", json={"reason": "enough"})
        assert resp.status == 200
    if how == "operator leaves":
        proc.send_signal(signal.SIGINT)  # Ctrl-C while the command runs
    await eventually(lambda: gone(pid), within=20)
    if how == "operator leaves":
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    else:
        await stop(proc)


async def test_what_the_command_leaves_running_is_killed_when_it_exits(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await server()
    pidfile = tmp_path / "grandchild.pid"
    monkeypatch.setenv("PIDFILE", str(pidfile))
    proc = await start_operator(client, "--role", "main", "--exec", GRANDCHILD + "echo done")
    task = await create_task(client, agent="shell", directive="x", operator={"role": "main"})
    done = await wait_task(client, task["id"], wait=20)
    # It ends with the command, not with the grandchild that still held stdout.
    assert done["status"] == "passed" and done["result"]["value"] == "done\n"
    await eventually(lambda: gone(int(pidfile.read_text())), within=20)
    await stop(proc)


# -- task --wait exit codes -------------------------------------------------


async def test_task_wait_exit_codes_say_how_the_task_ended(server: Server) -> None:
    client = await server()
    url = ["--url", base(client)]
    code, passed, _ = await run_cli(
        "task", "create", *url, "--agent", "echo", "--directive", "x", "--wait", "10"
    )
    assert code == 0 and passed["status"] == "passed"
    code, failed, _ = await run_cli(
        "task",
        "create",
        *url,
        "--agent",
        "a",
        "--directive",
        "x",
        "--role",
        "nobody",
        "--wait",
        "10",
    )
    assert code == 3 and failed["status"] == "failed"
    code, _, _ = await run_cli("task", "get", *url, failed["id"])
    assert code == 0  # without --wait a read is just a read
    code, _, _ = await run_cli("task", "get", *url, failed["id"], "--wait", "1")
    assert code == 3
    sid, _ = await mint(client)  # a session that never connects: the task stays running
    code, running, _ = await run_cli(
        "task", "create", *url, "--agent", "a", "--directive", "x", "--sid", sid, "--wait", "0.5"
    )
    assert code == 4 and running["status"] in ("pending", "running")
    code, _, _ = await run_cli("task", "create", *url, "--agent", "echo", "--directive", "x")
    assert code == 0


async def test_a_wait_longer_than_the_servers_max_wait_still_works(server: Server) -> None:
    client = await server(max_wait_s=300)
    code, task, err = await run_cli(
        "task",
        "create",
        "--url",
        base(client),
        "--agent",
        "echo",
        "--directive",
        "x",
        "--wait",
        "301",
    )
    assert code == 0 and task["status"] == "passed", err


def test_exit_codes_are_documented_in_the_help() -> None:
    import subprocess

    out = subprocess.run([*CLI, "task", "--help"], capture_output=True, text=True, check=True)
    text = " ".join(out.stdout.split())
    assert "3 the task ended but did not pass" in text and "4 it had not ended" in text


async def test_desc_names_the_session_and_log_level_info_shows_the_client_log(
    server: Server, tmp_path: Path
) -> None:
    client = await server()
    proc = await asyncio.create_subprocess_exec(
        *CLI, "operator", "--url", base(client), "--role", "main",
        "--state-file", str(tmp_path / "op.json"),
        "--desc", "Ada's laptop", "--log-level", "info",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    started(proc)
    assert proc.stdout is not None and proc.stderr is not None
    assert b"waiting for work" in await asyncio.wait_for(proc.stdout.readline(), 30)
    (session,) = directory_of(client).sessions.values()
    assert session.desc == "Ada's laptop"
    # The client library's own info lines (quiet at the default, warning) go to stderr.
    assert b"operator connected" in await asyncio.wait_for(proc.stderr.readline(), 30)
    proc.send_signal(signal.SIGINT)
    assert await proc.wait() == 0
