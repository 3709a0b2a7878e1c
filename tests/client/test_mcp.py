"""``operator-server mcp`` end to end: the ``mcp`` SDK's own stdio client launches
the bridge as a real process against a real daemon process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client

from operator_server.engine.tasks import TaskStatus
from tests.client.test_operator_cli import AnswersSwallowed
from tests.processes import started
from tests.test_daemon import Daemon, free_port, start_daemon

BRIDGE = [sys.executable, "-m", "operator_server", "mcp"]


def daemon_args(tmp_path: Path) -> list[str]:
    return ["--secret", "s", "--log-format", "json", "--store-path", str(tmp_path / "d.sqlite")]


@asynccontextmanager
async def running_daemon(tmp_path: Path, *extra: str) -> AsyncIterator[Daemon]:
    daemon = await start_daemon(*daemon_args(tmp_path), *extra)
    try:
        yield daemon
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()


@asynccontextmanager
async def bridge(daemon: Daemon, tmp_path: Path, *args: str) -> AsyncIterator[ClientSession]:
    """A seated bridge: the SDK client has initialized and the session is connected."""
    params = StdioServerParameters(
        command=BRIDGE[0],
        args=[*BRIDGE[1:], "--url", daemon.base, "--backoff-max-s", "0.3", *args],
        env=dict(os.environ),
    )
    # The bridge's stderr goes to a file (stdio_client needs a real one); opening it
    # blocks for no time worth a thread.
    with (
        open(tmp_path / "bridge.stderr", "a") as errlog,  # noqa: ASYNC230
    ):
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            await wait_connected(session)
            yield session


async def wait_connected(session: ClientSession) -> None:
    for _ in range(500):
        if (await call(session, "status"))["connected"]:
            return
        await asyncio.sleep(0.02)  # polling the bridge's own status, not a settle-wait
    raise AssertionError("the bridge did not connect")


async def call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments)
    assert not result.isError, result.content
    assert result.structuredContent is not None
    text = result.content[0]
    assert isinstance(text, types.TextContent)
    assert json.loads(text.text) == result.structuredContent  # the same JSON, as text
    return result.structuredContent


async def call_error(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments)
    assert result.isError, result.content
    text = result.content[0]
    assert isinstance(text, types.TextContent)
    error: dict[str, Any] = json.loads(text.text)["error"]
    return error


async def next_of(session: ClientSession, kind: str) -> dict[str, Any]:
    request = await call(session, "next_request", timeout_s=20)
    assert request["type"] == kind, request
    return request


CONTRACT = {
    "status": (set(), set()),
    "next_request": ({"timeout_s"}, set()),
    "pending": (set(), set()),
    "approve": ({"req_id"}, {"req_id"}),
    "reject": ({"req_id", "reason"}, {"req_id", "reason"}),
    "reassign": ({"req_id", "role", "sid", "note"}, {"req_id"}),
    "answer": ({"req_id", "value"}, {"req_id", "value"}),
    "decline": ({"req_id", "reason"}, {"req_id", "reason"}),
    "spawn_ack": ({"req_id", "value", "ok", "error"}, {"req_id"}),
    "spawn_halt": ({"req_id", "reason", "value"}, {"req_id"}),
    "worker_prompt": ({"worker_handle"}, {"worker_handle"}),
    "worker_result": ({"worker_handle", "value", "ok"}, {"worker_handle", "value"}),
    "task_create": (
        {"agent", "directive", "role", "sid", "kind", "max_attempts", "system"},
        {"agent", "directive"},
    ),
    "task_get": ({"task_id", "wait_s"}, {"task_id"}),
    "task_list": ({"status", "limit"}, set()),
    "task_cancel": ({"task_id", "reason"}, {"task_id"}),
}


async def test_the_tool_list_matches_the_contract_with_input_and_output_schemas(
    tmp_path: Path,
) -> None:
    async with running_daemon(tmp_path) as daemon, bridge(daemon, tmp_path) as mcp:
        tools = (await mcp.list_tools()).tools
        assert {
            t.name: (set(t.inputSchema["properties"]), set(t.inputSchema["required"]))
            for t in tools
        } == CONTRACT
        for tool in tools:
            assert tool.description and len(tool.description) > 40, tool.name
            assert tool.inputSchema["type"] == "object"
            assert tool.outputSchema is not None and tool.outputSchema["type"] == "object"
        by_name = {t.name: t for t in tools}
        # The contract's defaults and types, as an MCP client sees them.
        assert by_name["next_request"].inputSchema["properties"]["timeout_s"]["default"] == 30
        for name in ("spawn_ack", "worker_result"):
            ok = by_name[name].inputSchema["properties"]["ok"]
            assert ok["type"] == "boolean" and ok["default"] is True, name
        assert by_name["reject"].inputSchema["properties"]["reason"]["type"] == "string"
        # The bridge imports nothing of the engine, so it spells the statuses
        # again: they must be the server's, every one.
        statuses = by_name["task_list"].inputSchema["properties"]["status"]["enum"]
        assert sorted(statuses) == sorted(str(s) for s in TaskStatus)
        # What comes back: the fields an agent relies on are declared.
        status_out = by_name["status"].outputSchema["properties"]
        assert {"sid", "roles", "connected", "pending", "url"} <= set(status_out)
        request_out = by_name["next_request"].outputSchema["properties"]
        assert {"req_id", "type", "task_id", "attempt", "agent", "notices"} <= set(request_out)
        prompts = (await mcp.list_prompts()).prompts
        assert [p.name for p in prompts] == ["operator-guide"]
        guide = await mcp.get_prompt("operator-guide")
        text = guide.messages[0].content
        assert isinstance(text, types.TextContent)
        assert "next_request" in text.text and "spawn_ack" in text.text


async def test_a_spawn_goes_through_approve_worker_prompt_worker_result_and_spawn_ack(
    tmp_path: Path,
) -> None:
    async with (
        running_daemon(tmp_path) as daemon,
        bridge(daemon, tmp_path, "--role", "main") as mcp,
    ):
        status = await call(mcp, "status")
        assert status["roles"] == ["main"] and status["url"] == daemon.base
        task = await call(mcp, "task_create", agent="coder", directive="say hi", role="main")

        hook = await next_of(mcp, "hook_before")
        assert (hook["task_id"], hook["agent"], hook["attempt"]) == (task["id"], "coder", 1)
        assert (await call(mcp, "approve", req_id=hook["req_id"]))["delivered"] is True

        spawn = await next_of(mcp, "spawn")
        assert spawn["base_url"] == daemon.base and spawn["worker_handle"].startswith("wh-")
        assert spawn["worker_handle"] in spawn["directive"] or "/v1/worker" in spawn["directive"]
        assert "capability_token" not in spawn
        prompt = await call(mcp, "worker_prompt", worker_handle=spawn["worker_handle"])
        assert prompt["prompt"] == "say hi" and prompt["task_id"] == task["id"]
        await call(mcp, "worker_result", worker_handle=spawn["worker_handle"], value="hi")
        await call(mcp, "spawn_ack", req_id=spawn["req_id"])

        done = await call(mcp, "task_get", task_id=task["id"], wait_s=20)
        assert done["status"] == "passed" and done["result"] == {"value": "hi", "ok": True}
        after = await call(mcp, "next_request", timeout_s=10)
        assert after["type"] == "none"
        assert [n["type"] for n in after["notices"]] == ["hook_after"]
        assert after["notices"][0]["result"]["ok"] is True
        listed = await call(mcp, "task_list", status="passed")
        assert [t["id"] for t in listed["tasks"]] == [task["id"]]
        assert (await call(mcp, "pending"))["pending"] == []


async def test_an_ask_answered_through_answer_overrides_a_failing_worker(tmp_path: Path) -> None:
    async with (
        running_daemon(tmp_path) as daemon,
        bridge(daemon, tmp_path, "--role", "main") as mcp,
    ):
        task = await call(mcp, "task_create", agent="coder", directive="x", role="main")
        await call(mcp, "approve", req_id=(await next_of(mcp, "hook_before"))["req_id"])
        spawn = await next_of(mcp, "spawn")
        await call(
            mcp, "worker_result", worker_handle=spawn["worker_handle"], value="broke", ok=False
        )
        await call(mcp, "spawn_ack", req_id=spawn["req_id"])

        ask = await next_of(mcp, "ask")
        assert ask["task_id"] == task["id"]
        assert ask["question"] == {"reason": "worker reported ok=false", "value": "broke"}
        override = {"decision": "override", "note": "good enough"}
        await call(mcp, "answer", req_id=ask["req_id"], value=override)

        done = await call(mcp, "task_get", task_id=task["id"], wait_s=20)
        assert done["status"] == "passed"
        assert done["result"]["value"] == {"original": "broke", "senior_answer": override}


async def test_reject_fails_the_task_with_the_reason(tmp_path: Path) -> None:
    async with (
        running_daemon(tmp_path) as daemon,
        bridge(daemon, tmp_path, "--role", "main") as mcp,
    ):
        task = await call(mcp, "task_create", agent="coder", directive="x", role="main")
        hook = await next_of(mcp, "hook_before")
        await call(mcp, "reject", req_id=hook["req_id"], reason="too risky")
        done = await call(mcp, "task_get", task_id=task["id"], wait_s=20)
        assert done["status"] == "failed"
        assert done["error"]["code"] == "spawn_rejected"
        assert "too risky" in done["error"]["message"]


async def test_reassign_passes_a_held_request_to_another_role_and_it_leaves_the_inbox(
    tmp_path: Path,
) -> None:
    async with (
        running_daemon(tmp_path) as daemon,
        bridge(daemon, tmp_path, "--role", "main") as first,
        bridge(daemon, tmp_path, "--role", "review") as second,
    ):
        task = await call(first, "task_create", agent="coder", directive="x", role="main")
        hook = await next_of(first, "hook_before")
        bad = await call_error(first, "reassign", req_id=hook["req_id"])
        assert bad["code"] == "bad_arguments"
        moved = await call(first, "reassign", req_id=hook["req_id"], role="review", note="yours")
        assert moved == {"req_id": hook["req_id"], "to": "review"}
        assert (await call(first, "pending"))["pending"] == []
        late = await call_error(first, "approve", req_id=hook["req_id"])
        assert late["code"] == "unknown_req_id" and "reassigned" in late["message"]
        passed = await next_of(second, "hook_before")
        assert passed["req_id"] == hook["req_id"]
        await call(second, "reject", req_id=passed["req_id"], reason="not yet")
        done = await call(first, "task_get", task_id=task["id"], wait_s=20)
        assert (done["status"], done["error"]["code"]) == ("failed", "spawn_rejected")


async def test_a_request_pending_while_the_daemon_restarts_comes_back_answerable_once(
    tmp_path: Path,
) -> None:
    """A crash interrupts the attempt the request belonged to (its credentials are
    dead), so the task's work comes back as the re-dispatched attempt's request:
    the agent is told the old one is withdrawn, and answers the new one once."""
    async with (
        running_daemon(tmp_path) as daemon,
        bridge(daemon, tmp_path, "--role", "main") as mcp,
    ):
        task = await call(mcp, "task_create", agent="coder", directive="x", role="main")
        before = await next_of(mcp, "hook_before")

        daemon.proc.kill()  # a crash: the task is re-dispatched from the store
        daemon.proc.wait()
        port = int(daemon.base.rsplit(":", 1)[1])
        restarted = await start_daemon(*daemon_args(tmp_path), port=port)
        try:
            # The server re-dispatched the interrupted attempt: its hook is a new
            # request, and the one held from before is withdrawn with a notice.
            hook = await next_of(mcp, "hook_before")
            assert (hook["task_id"], hook["attempt"]) == (task["id"], 2)
            assert {"type": "cancel", "req_id": before["req_id"]}.items() <= {
                **hook["notices"][0]
            }.items()
            stale = await call_error(mcp, "approve", req_id=before["req_id"])
            assert stale["code"] == "unknown_req_id" and "withdrawn" in stale["message"]

            assert (await call(mcp, "approve", req_id=hook["req_id"]))["delivered"] is True
            again = await call_error(mcp, "approve", req_id=hook["req_id"])
            assert again["code"] == "already_answered"

            spawn = await next_of(mcp, "spawn")
            await call(mcp, "spawn_halt", req_id=spawn["req_id"], reason="enough")
            done = await call(mcp, "task_get", task_id=task["id"], wait_s=20)
            assert done["status"] == "halted"
            assert done["result"]["value"]["halted"] is True
        finally:
            restarted.proc.kill()
            restarted.proc.wait()


async def test_bad_arguments_and_wrong_replies_are_tool_errors_and_the_bridge_goes_on(
    tmp_path: Path,
) -> None:
    async with (
        running_daemon(tmp_path, "--max-frame-bytes", "1024") as daemon,
        bridge(daemon, tmp_path, "--role", "main") as mcp,
    ):
        task = await call(mcp, "task_create", agent="coder", directive="x", role="main")
        hook = await next_of(mcp, "hook_before")

        assert (await call_error(mcp, "approve"))["code"] == "bad_arguments"
        assert (await call_error(mcp, "next_request", timeout_s="soon"))["code"] == (
            "bad_arguments"
        )
        assert (await call_error(mcp, "no_such_tool"))["code"] == "unknown_tool"
        wrong = await call_error(mcp, "answer", req_id=hook["req_id"], value=1)
        assert wrong["code"] == "wrong_reply"
        unknown = await call_error(mcp, "approve", req_id="op-nope-hb-1")
        assert unknown["code"] == "unknown_req_id"
        missing = await call_error(mcp, "task_get", task_id="t-nope")
        assert missing["code"] == "task_not_found"

        # Still working: the same hook is approved and the task goes on.
        held = (await call(mcp, "pending"))["pending"]
        assert [(r["req_id"], r["handed_out"]) for r in held] == [(hook["req_id"], True)]
        await call(mcp, "approve", req_id=hook["req_id"])
        spawn = await next_of(mcp, "spawn")
        # The server refuses this reply (larger than max_frame_bytes): its error
        # frame comes back as the tool's error.
        too_big = await call_error(mcp, "spawn_ack", req_id=spawn["req_id"], value="v" * 2000)
        assert too_big["code"] == "too_large"
        await call(mcp, "task_cancel", task_id=task["id"], reason="done testing")
        done = await call(mcp, "task_get", task_id=task["id"], wait_s=20)
        assert done["status"] == "cancelled"
        assert (await call(mcp, "status"))["connected"] is True


async def test_stdout_carries_only_protocol_messages_even_at_log_level_debug(
    tmp_path: Path,
) -> None:
    async with running_daemon(tmp_path) as daemon:
        proc = await asyncio.create_subprocess_exec(
            *BRIDGE,
            "--url",
            daemon.base,
            "--role",
            "main",
            "--log-level",
            "debug",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        started(proc)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        lines: list[bytes] = []

        async def rpc(msg_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
            assert proc.stdin is not None and proc.stdout is not None
            request = {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            await proc.stdin.drain()
            while True:
                line = await asyncio.wait_for(proc.stdout.readline(), 30)
                lines.append(line)
                reply: dict[str, Any] = json.loads(line)
                if reply.get("id") == msg_id:
                    return reply

        init = {
            "protocolVersion": types.LATEST_PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"},
        }
        await rpc(1, "initialize", init)
        proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        n = 2
        while not (await rpc(n, "tools/call", {"name": "status", "arguments": {}}))["result"][
            "structuredContent"
        ]["connected"]:
            n += 1
            await asyncio.sleep(0.02)  # polling the bridge's status
        create = {"agent": "coder", "directive": "x", "role": "main"}
        await rpc(100, "tools/call", {"name": "task_create", "arguments": create})
        hook = await rpc(101, "tools/call", {"name": "next_request", "arguments": {}})
        req_id = hook["result"]["structuredContent"]["req_id"]
        await rpc(
            102, "tools/call", {"name": "reject", "arguments": {"req_id": req_id, "reason": "no"}}
        )

        proc.stdin.close()  # EOF: the bridge leaves and exits
        rest = await asyncio.wait_for(proc.stdout.read(), 30)
        err = await asyncio.wait_for(proc.stderr.read(), 30)
        assert await asyncio.wait_for(proc.wait(), 30) == 0

    for line in [*lines, *rest.splitlines(keepends=True)]:
        types.JSONRPCMessage.model_validate_json(line)
    assert b"Initializing server" in err  # a debug line: the logs went to stderr
    assert b"bridge seated" in err


async def test_stdin_eof_leaves_the_session_unless_keep_session(tmp_path: Path) -> None:
    async with running_daemon(tmp_path) as daemon:
        state = tmp_path / "state.json"
        lock = tmp_path / "state.json.lock"
        async with bridge(daemon, tmp_path, "--role", "keep", "--state-file", str(state)) as mcp:
            sid = (await call(mcp, "status"))["sid"]
            assert lock.exists()
        assert not state.exists() and not lock.exists()  # a clean exit leaves nothing
        async with bridge(
            daemon, tmp_path, "--role", "keep", "--state-file", str(state), "--keep-session"
        ) as mcp:
            kept = (await call(mcp, "status"))["sid"]
        assert kept != sid and json.loads(state.read_text())["sid"] == kept
        async with bridge(daemon, tmp_path, "--role", "keep", "--state-file", str(state)) as mcp:
            assert (await call(mcp, "status"))["sid"] == kept  # resumed, same session


async def test_a_bridge_killed_before_it_kept_its_new_session_takes_it_back(
    tmp_path: Path,
) -> None:
    async with running_daemon(tmp_path) as daemon:
        proxy = AnswersSwallowed(int(daemon.base.rsplit(":", 1)[1]))
        via_proxy = Daemon(daemon.proc, await proxy.start())
        state = tmp_path / "state.json"
        args = ["--url", via_proxy.base, "--role", "keep", "--state-file", str(state)]
        try:
            first = await asyncio.create_subprocess_exec(
                *BRIDGE, *args, stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
            )
            started(first)
            # The daemon mints the session; the bridge is killed before it
            # hears the answer, so before it could keep the new sid.
            async with aiohttp.ClientSession() as http:
                for _ in range(1500):
                    async with http.get(f"{daemon.base}/v1/operators") as resp:
                        ghosts = [o["sid"] for o in (await resp.json())["operators"]]
                    if ghosts:
                        break
                    await asyncio.sleep(0.02)  # polling the daemon's own list
            [ghost] = ghosts
            first.kill()
            await first.wait()

            proxy.swallowing = False
            async with bridge(
                via_proxy, tmp_path, "--role", "keep", "--state-file", str(state)
            ) as mcp:
                assert (await call(mcp, "status"))["sid"] == ghost
                assert json.loads(state.read_text())["sid"] == ghost
        finally:
            await proxy.close()


class CuttableProxy:
    """A TCP proxy on loopback whose connections the test can cut, as a flaky
    network would: the bridge's socket drops while the daemon stays up."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        link = (writer, up_writer)
        self.links.add(link)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            self.links.discard(link)

    def cut(self) -> int:
        """Abort every connection through the proxy; how many there were."""
        links = list(self.links)
        for client_side, daemon_side in links:
            client_side.transport.abort()
            daemon_side.transport.abort()
        return len(links)

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_dropped_socket_keeps_the_held_request_answerable_once(tmp_path: Path) -> None:
    """The daemon stays up, the bridge's connection drops: the server replays what
    is pending, and the bridge keeps holding it (no false withdrawal)."""
    async with running_daemon(tmp_path) as daemon:
        proxy = CuttableProxy(int(daemon.base.rsplit(":", 1)[1]))
        via_proxy = Daemon(daemon.proc, await proxy.start())
        try:
            async with bridge(via_proxy, tmp_path, "--role", "main") as mcp:
                task = await call(mcp, "task_create", agent="coder", directive="x", role="main")
                hook = await next_of(mcp, "hook_before")
                assert proxy.cut() >= 1
                await wait_connected(mcp)  # reconnected through the proxy by itself
                held = await call(mcp, "pending")
                assert [r["req_id"] for r in held["pending"]] == [hook["req_id"]]
                assert (await call(mcp, "approve", req_id=hook["req_id"]))["delivered"] is True
                again = await call_error(mcp, "approve", req_id=hook["req_id"])
                assert again["code"] in ("already_answered", "unknown_req_id")
                spawn = await next_of(mcp, "spawn")
                assert not [n for n in spawn["notices"] if n["type"] == "cancel"]
                await call(mcp, "spawn_halt", req_id=spawn["req_id"], reason="enough")
                done = await call(mcp, "task_get", task_id=task["id"], wait_s=20)
                assert done["status"] == "halted" and done["attempt"] == 1
        finally:
            await proxy.close()


async def operators(daemon: Daemon) -> list[dict[str, Any]]:
    """The daemon's session list (admin view; the test is on loopback)."""
    async with aiohttp.ClientSession() as http, http.get(f"{daemon.base}/v1/operators") as resp:
        listed: list[dict[str, Any]] = (await resp.json())["operators"]
        return listed


async def bridge_process(daemon: Daemon, *args: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        *BRIDGE,
        "--url",
        daemon.base,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    started(proc)
    return proc


async def exit_of(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    assert proc.stderr is not None
    err = await asyncio.wait_for(proc.stderr.read(), 30)
    return await asyncio.wait_for(proc.wait(), 30), err.decode()


def clean(err: str) -> bool:
    return "Traceback" not in err and "Unclosed" not in err and "Error:" not in err


async def test_sigterm_leaves_the_session_and_exits_cleanly(tmp_path: Path) -> None:
    async with running_daemon(tmp_path) as daemon:
        proc = await bridge_process(daemon, "--role", "main")
        for _ in range(1500):
            if any(o["connected"] for o in await operators(daemon)):
                break
            await asyncio.sleep(0.02)  # polling the daemon's own list
        else:
            raise AssertionError("the bridge did not take its seat")
        proc.send_signal(signal.SIGTERM)
        code, err = await exit_of(proc)
        assert code == 0 and clean(err), err
        assert await operators(daemon) == []


async def test_stdin_closed_during_start_up_leaves_nothing_behind(tmp_path: Path) -> None:
    async with running_daemon(tmp_path) as daemon:
        # stdin closes before the bridge has begun, then as soon as its mint lands
        # (before its socket is up), at different points of the start-up.
        for wait_for_mint in (False, True, False, True):
            proc = await bridge_process(daemon, "--role", "main")
            assert proc.stdin is not None
            for _ in range(3000 if wait_for_mint else 0):
                if await operators(daemon):
                    break
                await asyncio.sleep(0.005)  # polling the daemon's own list
            proc.stdin.close()
            code, err = await exit_of(proc)
            assert code == 0 and clean(err), err
            assert await operators(daemon) == []


async def test_a_second_bridge_on_the_same_state_file_refuses_naming_the_first(
    tmp_path: Path,
) -> None:
    async with running_daemon(tmp_path) as daemon:
        state = tmp_path / "state.json"
        async with bridge(daemon, tmp_path, "--role", "main", "--state-file", str(state)) as mcp:
            sid = (await call(mcp, "status"))["sid"]
            first = (tmp_path / "state.json.lock").read_text().strip()
            second = await bridge_process(daemon, "--role", "main", "--state-file", str(state))
            code, err = await exit_of(second)
            assert code == 1 and err.count("\n") == 1, err
            assert f"pid {first}" in err and "another --role" in err, err
            # The first keeps its seat: not resumed under it, not deleted by the second.
            assert [o["sid"] for o in await operators(daemon)] == [sid]
            assert json.loads(state.read_text())["sid"] == sid
            assert (await call(mcp, "status"))["connected"]


@asynccontextmanager
async def unseated_bridge(
    url: str, tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[ClientSession]:
    """A bridge (through a shell that writes down its exit code) that has tried
    to take its seat and could not."""
    command = " ".join([*BRIDGE, "--url", url, "--backoff-max-s", "0.3", *args])
    params = StdioServerParameters(
        command="sh",
        args=["-c", f'{command}; echo $? > "{tmp_path / "exit"}"'],
        env=dict(os.environ) if env is None else env,
    )
    with open(tmp_path / "bridge.stderr", "a") as errlog:  # noqa: ASYNC230
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            for _ in range(500):
                if (await session.call_tool("status", {})).isError:
                    break
                await asyncio.sleep(0.02)  # polling the bridge's own status
            yield session


async def every_tool_fails(session: ClientSession, *words: str) -> None:
    arguments = {"req_id": "r", "reason": "x", "value": 1, "worker_handle": "w"}
    arguments |= {"task_id": "t", "agent": "a", "directive": "d"}
    for tool in CONTRACT:
        schema = next(t for t in (await session.list_tools()).tools if t.name == tool)
        given = {k: v for k, v in arguments.items() if k in schema.inputSchema["properties"]}
        error = await call_error(session, tool, **given)
        assert error["code"] == "not_seated", (tool, error)
        for word in words:
            assert word in error["message"], (tool, error)


async def exit_code_written(tmp_path: Path) -> int:
    for _ in range(1500):
        if (tmp_path / "exit").exists() and (tmp_path / "exit").read_text().strip():
            return int((tmp_path / "exit").read_text())
        await asyncio.sleep(0.02)  # the shell writes it once the bridge exits
    raise AssertionError("the bridge did not exit")


async def test_a_bridge_refused_its_seat_fails_every_tool_and_exits_non_zero(
    tmp_path: Path,
) -> None:
    async with running_daemon(tmp_path) as daemon:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{daemon.base}/v1/operators", json={"roles": ["main"]}) as resp,
        ):
            holder = (await resp.json())["sid"]
        async with unseated_bridge(daemon.base, tmp_path, "--role", "main") as mcp:
            await every_tool_fails(mcp, "roles_conflict", "--role", "restart the bridge")
        assert await exit_code_written(tmp_path) == 1
        assert [o["sid"] for o in await operators(daemon)] == [holder]


async def test_a_bridge_that_cannot_reach_the_daemon_fails_every_tool_and_exits_non_zero(
    tmp_path: Path,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with unseated_bridge(url, tmp_path, "--role", "main") as mcp:
        await every_tool_fails(
            mcp,
            f"cannot reach {url} (connection refused: nothing listens there)",
            "is the daemon running? (`make run`",
        )
        status = await call_error(mcp, "status")
        assert "ssl:default" not in status["message"], status
    assert await exit_code_written(tmp_path) == 1
    err = (tmp_path / "bridge.stderr").read_text()
    assert clean(err) and "could not leave" not in err, err


async def test_a_refused_session_token_is_said_as_the_token_option_and_fails_every_tool(
    tmp_path: Path,
) -> None:
    async with running_daemon(tmp_path) as daemon:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{daemon.base}/v1/operators", json={"roles": ["main"]}) as resp,
        ):
            sid = (await resp.json())["sid"]
        given = ("--sid", sid, "--token", "x" * 40)
        async with unseated_bridge(daemon.base, tmp_path, *given) as mcp:
            await every_tool_fails(
                mcp, f"cannot attach to session {sid}", "as --token", "fix --sid/--token"
            )
            status = await call_error(mcp, "status")
            # A status word, not the digits of the daemon's random port.
            assert not re.search(r"\b401\b", status["message"]), status
        assert await exit_code_written(tmp_path) == 1
        # Not its session to leave: the holder keeps it.
        assert [o["sid"] for o in await operators(daemon)] == [sid]


@pytest.mark.parametrize("how", ["variable", "flag"])
async def test_a_refused_api_token_leaves_the_bridge_unseated_naming_the_option(
    tmp_path: Path, how: str
) -> None:
    async with running_daemon(tmp_path, "--api-token", "the-right-token") as daemon:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPERATOR_SERVER_API")}
        if how == "variable":
            env["OPERATOR_SERVER_API_TOKEN"] = "wrong"
        args = ("--api-key", "wrong") if how == "flag" else ()
        async with unseated_bridge(daemon.base, tmp_path, "--role", "main", *args, env=env) as mcp:
            await every_tool_fails(mcp, "cannot join", "--api-key", "restart the bridge")
        assert await exit_code_written(tmp_path) == 1
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{daemon.base}/v1/operators",
                headers={"Authorization": "Bearer the-right-token"},
            ) as resp,
        ):
            assert (await resp.json())["operators"] == []


async def test_a_key_without_the_role_s_scope_leaves_the_bridge_unseated_naming_the_fix(
    tmp_path: Path,
) -> None:
    """A 403 (the key is known; its scopes do not cover the role) names the
    scope it needs and where the bridge takes a key, in the CLI's own words."""
    async with running_daemon(tmp_path, "--api-token", "the-right-token") as daemon:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{daemon.base}/v1/keys",
                json={"name": "reader", "scopes": ["tasks:read"]},
                headers={"Authorization": "Bearer the-right-token"},
            ) as resp,
        ):
            assert resp.status == 201, await resp.text()
            key = (await resp.json())["key"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPERATOR_SERVER_API")}
        given = ("--role", "main", "--api-key", key)
        async with unseated_bridge(daemon.base, tmp_path, *given, env=env) as mcp:
            await every_tool_fails(mcp, "operate:<glob>", "--api-key KEY", "keys create")
        assert await exit_code_written(tmp_path) == 1


async def test_a_bridge_whose_session_is_taken_over_stops_serving_it_and_leaves_it(
    tmp_path: Path,
) -> None:
    async with running_daemon(tmp_path) as daemon:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{daemon.base}/v1/operators", json={"roles": ["main"]}) as resp,
        ):
            minted = await resp.json()
        sid, token = minted["sid"], minted["token"]
        command = " ".join([*BRIDGE, "--url", daemon.base, "--sid", sid, "--token", token])
        params = StdioServerParameters(
            command="sh",
            args=["-c", f'{command}; echo $? > "{tmp_path / "exit"}"'],
            env=dict(os.environ),
        )
        with open(tmp_path / "bridge.stderr", "a") as errlog:  # noqa: ASYNC230
            async with (
                stdio_client(params, errlog=errlog) as (read, write),
                ClientSession(read, write) as mcp,
            ):
                await mcp.initialize()
                await wait_connected(mcp)
                async with (
                    aiohttp.ClientSession() as http,
                    http.ws_connect(
                        f"{daemon.base}/v1/operators/{sid}/ws",
                        headers={"Authorization": f"Bearer {token}"},
                    ) as ws,
                ):
                    for _ in range(500):
                        if (await mcp.call_tool("status", {})).isError:
                            break
                        await asyncio.sleep(0.02)  # polling the bridge's own status
                    await every_tool_fails(mcp, "taken over by another connection")
                    # It did not reconnect and take the socket back.
                    assert not ws.closed
                    assert [o["connected"] for o in await operators(daemon)] == [True]
        assert await exit_code_written(tmp_path) == 1
        # The session is the other connection's: the bridge did not delete it.
        assert [o["sid"] for o in await operators(daemon)] == [sid]
