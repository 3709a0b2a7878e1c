"""``operator-server mcp``: one operator session, offered to an MCP client as tools.

The bridge is an ``OperatorClient`` whose handlers do not decide anything: each
request the server pushes (``ask``, ``hook_before``, ``spawn``) is parked in an
inbox with a future, and the handler waits on that future until the model
replies through a tool (``approve``, ``answer``, ``spawn_ack``…).  The reply is
then the handler's return value, so it goes out through the ``OperatorClient``,
which re-sends it if the server replays the request after a reconnect.
Notices that need no reply (``hook_after``, ``cancel``, unclaimed ``error``
frames) are collected and handed back by the next ``next_request``.

A reply has no acknowledgement of its own.  To tell the model whether the
server took it, the bridge follows the reply with ``OperatorClient.sync`` (a
``ping`` the server answers with ``pong`` once it has handled every frame sent
before): any ``error`` about the reply has then arrived.  The same barrier, run
after a reconnect, ends the server's replay: a request held from an earlier
connection that was not replayed is no longer held by the server (it restarted
and re-dispatched the attempt as a new request), so the bridge withdraws it.
"""

# size: one bridge: the inbox, the tool handlers and the reply bookkeeping share one
# session's state (the tools' declarations are apart, in mcp_tools.py).
from __future__ import annotations

import asyncio
import secrets
import signal
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import jsonschema  # type: ignore[import-untyped]
from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from operator_server import __version__
from operator_server.background import Background
from operator_server.client import advice
from operator_server.client.errors import RequestFailed
from operator_server.client.http import TaskClient, WorkerClient
from operator_server.client.mcp_tools import (
    GUIDE,
    GUIDE_DESCRIPTION,
    GUIDE_NAME,
    NEXT_REQUEST_MAX_S,
    TOOLS,
)
from operator_server.client.operator import (
    Ack,
    Halt,
    OperatorClient,
    SessionGone,
    SessionTakenOver,
)
from operator_server.client.state import SessionState, forget_state, load_state, save_state
from operator_server.logs import get_logger
from operator_server.wire import frames as p
from operator_server.wire.answer_schema import answer_problem

log = get_logger(__name__)
MEMORY = 4096  # req_ids remembered as answered or withdrawn, for clear tool errors
NOTICE_LIMIT = 1000  # notices kept for a model that never calls next_request
FOREVER = 10 * 365 * 86400.0
STDIN_LINE_LIMIT = 64 * 1024 * 1024  # one JSON-RPC message per line, large answers too


class ToolError(Exception):
    """A tool call that did not work: a stable code and a message for the model."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Declined(Exception):
    """Raised into the ask's handler so the server gets ``answer`` with ``error``."""


@dataclass
class Held:
    """A request the server is waiting on, parked until a tool replies."""

    frame: dict[str, Any]
    reply: asyncio.Future[Any]
    runner: asyncio.Task[Any] | None  # the client task that sends the reply
    seen_on: int  # the connection on which the server last (re)sent it
    handed_out: bool = False


@dataclass
class BridgeOptions:
    url: str
    api_token: str | None = None
    roles: list[str] = field(default_factory=list)
    desc: str = "operator-server mcp"
    state_file: Path | None = None
    sid: str | None = None
    token: str | None = None
    keep_session: bool = False
    backoff_max_s: float = 10.0
    confirm_timeout_s: float = 10.0


class OperatorBridge:
    def __init__(self, options: BridgeOptions) -> None:
        self.options = options
        self.url = options.url.rstrip("/")
        self.client: OperatorClient | None = None
        # The client being seated, from before its mint: whatever stops the bridge
        # mid-start still closes it, and leaves the session its mint may have made.
        self._seating: OperatorClient | None = None
        self._mint_sent = False  # its mint may have reached the server
        self.error: str | None = None  # why the bridge holds no session, if it does not
        self._remedy = ""  # what the user does about ``error`` while unseated
        self._background = Background()
        self._held: dict[str, Held] = {}  # insertion order = issue order
        self._answered: OrderedDict[str, str] = OrderedDict()  # req_id -> reply type
        self._gone: OrderedDict[str, str] = OrderedDict()  # req_id -> why withdrawn
        self._notices: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._watch: dict[str, list[dict[str, Any]]] = {}  # req_id -> error frames
        # worker_handle -> its spawn's trace context: the worker tools continue it.
        self._traces: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._swept_on = 1
        self._sweep_lock = asyncio.Lock()
        self.tasks = TaskClient(self.url, options.api_token)

    # -- the session --------------------------------------------------------

    def open(self) -> None:
        """Join (or resume) and connect in the background; tools work meanwhile."""
        self._background.spawn(self._seat(), name="mcp-bridge:seat")

    async def close(self) -> None:
        """Leave the session (or keep it, with ``keep_session``) and stop."""
        await self._background.close("bridge closing")
        client = self.client or self._seating
        if client is not None:
            if self.options.keep_session:
                await client.close()
            else:
                try:
                    if client.sid is None and client.token is not None and self._mint_sent:
                        # Stopped mid-mint: the server may have made the session.
                        # Minting again with the same token finds it (or makes
                        # one), so there is a sid to delete.
                        async with asyncio.timeout(self.options.confirm_timeout_s):
                            await client.join()
                    await client.leave()
                except (RequestFailed, aiohttp.ClientError, OSError, TimeoutError) as exc:
                    log.warning("could not leave the session", sid=client.sid, error=str(exc))
                    await client.close()
                if self.options.state_file is not None:
                    forget_state(self.options.state_file)
        await self.tasks.close()

    def _new_client(self, sid: str | None, token: str | None) -> OperatorClient:
        return OperatorClient(
            self.url,
            sid=sid,
            token=token,
            roles=self.options.roles,
            desc=self.options.desc,
            api_token=self.options.api_token,
            on_ask=self._park,
            on_hook_before=self._park,
            on_spawn=self._park,
            on_hook_after=self._on_hook_after,
            on_cancel=self._on_cancel,
            on_frame=self._on_frame,
            backoff_max_s=self.options.backoff_max_s,
        )

    def _resume_from(self) -> tuple[str | None, str | None]:
        if self.options.sid is not None:
            return self.options.sid, self.options.token
        path = self.options.state_file
        state = load_state(path) if path is not None else None
        if state is not None and state.url.rstrip("/") == self.url:
            # A sid of "": a mint started with this token and never kept (``_join``).
            return state.sid or None, state.token
        return None, None

    async def _seat(self) -> None:
        sid, token = self._resume_from()
        while True:
            client = self._new_client(sid, token)
            self._seating = client
            try:
                await self._join(client)
                self.client, self._swept_on = client, 1
                self.error = None
                await client.start(timeout=FOREVER)
                log.info("bridge seated", sid=client.sid, roles=client.roles)
                await client.wait_closed()
                return
            except SessionGone as exc:
                self._drop_all(f"the operator session ended: {exc}")
                await client.close()
                self._seating = None
                if sid is not None and self.options.sid is None:
                    # A kept session the server no longer knows: start afresh.
                    log.warning("kept session is gone; joining anew", sid=sid)
                    sid = token = None
                    continue
                # Unseated, like a refused mint: every tool says so and the exit is 1.
                self.client = None
                # A refused --token is the user's to fix: say which option, not "401".
                refused = getattr(exc.__cause__, "status", None) == 401
                self.error = (
                    advice.session_token_refused(self.url, client.sid)
                    if refused and client.sid
                    else str(exc)
                )
                self._remedy = (
                    "fix --sid/--token or leave both out, then restart the bridge"
                    if self.options.sid is not None
                    else "restart the bridge (the MCP client starts it again) to join anew"
                )
                log.error("operator session gone", error=self.error)
                return
            except SessionTakenOver as exc:
                # The session is another connection's now: not ours to leave or forget.
                self._drop_all(str(exc))
                await client.close()
                self.client = self._seating = None
                self.error = str(exc)
                self._remedy = (
                    "another process serves this session now; stop that one first if this "
                    "bridge is to serve it, then restart the bridge"
                )
                log.error("operator session taken over", error=self.error)
                return
            except RequestFailed as exc:
                self.error = f"cannot join: {exc}"
                self._remedy = _remedy(exc)
                log.error("cannot join", code=exc.code, error=exc.message)
                await client.close()
                self._seating = None
                return

    async def _join(self, client: OperatorClient) -> None:
        """Mint the session, waiting out a server that is not up yet.

        Its token is kept before the mint (as the terminal operator does): a
        bridge killed before it kept the answer takes that session back at its
        next start instead of finding its roles held by its own ghost."""
        path = self.options.state_file
        if client.sid is None:
            # Chosen here, not by the server: a bridge stopped before the mint's
            # answer can still find (and leave) the session it made.
            client.token = client.token or secrets.token_urlsafe(32)
            if path is not None:
                save_state(path, SessionState(self.url, "", client.token, client.roles))
        delay = 0.2
        while True:
            try:
                self._mint_sent = True
                await client.join()
                break
            except (aiohttp.ClientConnectionError, OSError) as exc:
                # Refused before anything was sent: no session can have been made.
                self._mint_sent = not isinstance(exc, aiohttp.ClientConnectorError)
                self.error = advice.not_reached(self.url, exc)
                self._remedy = (
                    f"{advice.START_HINT}; the bridge keeps trying and takes its seat once "
                    "it answers"
                )
                await asyncio.sleep(delay)  # backoff between attempts, not a settle-wait
                delay = min(self.options.backoff_max_s, delay * 2)
        if path is not None and client.sid is not None and client.token is not None:
            save_state(path, SessionState(self.url, client.sid, client.token, client.roles))

    # -- what the server pushes ----------------------------------------------

    async def _park(self, frame: dict[str, Any]) -> Any:
        req_id = frame["req_id"]
        if frame["type"] == "spawn" and "trace" in frame:
            self._traces[frame["worker_handle"]] = frame["trace"]
            if len(self._traces) > MEMORY:
                self._traces.popitem(last=False)
        connects = self.client.connects if self.client is not None else 0
        held = Held(
            frame, asyncio.get_running_loop().create_future(), asyncio.current_task(), connects
        )
        self._held[req_id] = held
        self._wake.set()
        try:
            return await held.reply
        finally:
            if self._held.get(req_id) is held:
                del self._held[req_id]

    def _on_frame(self, frame: dict[str, Any]) -> bool:
        req_id = frame.get("req_id")
        if frame["type"] == "error":
            if req_id is not None and req_id in self._watch:
                self._watch[req_id].append(frame)
                return True  # the tool call that sent the reply reports it
            if req_id is None and self._watch:
                # No req_id (e.g. too_large): it refused a frame sent while these
                # replies were in flight, and the sync has not come back yet.
                for errors in self._watch.values():
                    errors.append(frame)
                return True
            self._notice({k: v for k, v in frame.items() if k != "type"} | {"type": "error"})
            return False
        held = self._held.get(req_id) if req_id else None
        if held is not None and self.client is not None:
            held.seen_on = self.client.connects
        return False

    async def _on_hook_after(self, frame: dict[str, Any]) -> None:
        self._notice(dict(frame))

    async def _on_cancel(self, frame: dict[str, Any]) -> None:
        self._remember(self._gone, frame["req_id"], frame["reason"])
        self._notice(dict(frame))

    def _notice(self, notice: dict[str, Any]) -> None:
        self._notices.append(notice)
        del self._notices[:-NOTICE_LIMIT]
        self._wake.set()

    @staticmethod
    def _remember(memory: OrderedDict[str, str], req_id: str, what: str) -> None:
        memory[req_id] = what
        if len(memory) > MEMORY:
            memory.popitem(last=False)

    def _withdraw(self, req_id: str, held: Held, reason: str) -> None:
        del self._held[req_id]
        held.reply.cancel()  # the handler ends without a reply, as on a server cancel
        self._remember(self._gone, req_id, reason)
        self._notice({"type": "cancel", "req_id": req_id, "reason": reason})

    def _drop_all(self, reason: str) -> None:
        for req_id, held in list(self._held.items()):
            self._withdraw(req_id, held, reason)

    # -- the barrier -----------------------------------------------------------

    async def _barrier(self) -> bool:
        """True once the server has handled every frame sent before; False when
        there is no socket (or it dropped before the server answered)."""
        client = self.client
        if client is None or not client.connected.is_set():
            return False
        return await client.sync(self.options.confirm_timeout_s)

    async def _sweep(self) -> None:
        """After a reconnect, withdraw what the server did not replay."""
        client = self.client
        if client is None or client.connects == self._swept_on:
            return
        async with self._sweep_lock:
            connects = client.connects
            if connects == self._swept_on or not await self._barrier():
                return
            if client is not self.client or client.connects != connects:
                return  # dropped again meanwhile; the next call sweeps
            self._swept_on = connects
            for req_id, held in list(self._held.items()):
                if held.seen_on < connects and not held.reply.done():
                    log.info("request not replayed after reconnect; withdrawn", req_id=req_id)
                    self._withdraw(
                        req_id,
                        held,
                        "the server no longer holds this request (it restarted); a task that "
                        "goes on sends a new request",
                    )

    # -- tools -----------------------------------------------------------------

    @property
    def unseated(self) -> bool:
        """The bridge tried to take its seat and could not (so far)."""
        return self.client is None and self.error is not None

    async def call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        tool = TOOL_BY_NAME.get(name)
        if tool is None:
            raise ToolError("unknown_tool", f"no tool named {name!r}")
        if self.unseated:
            # Every tool, or a model looping on next_request waits on nothing forever.
            raise ToolError(
                "not_seated",
                f"this bridge holds no operator session ({self.error}): {self._remedy}",
            )
        try:
            jsonschema.validate(arguments, tool.inputSchema)
        except jsonschema.ValidationError as exc:
            where = "".join(f"{x}: " for x in exc.absolute_path)
            raise ToolError("bad_arguments", where + exc.message) from None
        handler = getattr(self, f"tool_{name}")
        result: dict[str, Any] = await handler(**arguments)
        return result

    async def tool_status(self) -> dict[str, Any]:
        client = self.client
        return {
            "sid": client.sid if client is not None else None,
            "roles": client.roles if client is not None else list(self.options.roles),
            "connected": client is not None and client.connected.is_set(),
            "pending": len(self._held),
            "url": self.url,
            "error": self.error,
        }

    async def tool_next_request(self, timeout_s: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + min(timeout_s, NEXT_REQUEST_MAX_S)
        while True:
            await self._sweep()
            held = next((h for h in self._held.values() if not h.handed_out), None)
            if held is not None or self._notices:
                break
            self._wake.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except TimeoutError:
                break
        notices, self._notices = self._notices, []
        if held is None:
            return {"type": "none", "notices": notices}
        held.handed_out = True
        return {**self._view(held), "notices": notices}

    async def tool_pending(self) -> dict[str, Any]:
        await self._sweep()
        return {
            "pending": [{**self._view(h), "handed_out": h.handed_out} for h in self._held.values()]
        }

    def _view(self, held: Held) -> dict[str, Any]:
        frame = held.frame
        # ``trace``: the W3C context a sub-agent the agent starts passes on
        # (as the traceparent header, or TRACEPARENT in its environment).
        keep = ["req_id", "type", "task_id", "attempt", "agent", "parent_req_id", "trace"]
        if frame["type"] == "ask":
            keep += ["question", "answer_schema"]
        elif frame["type"] == "spawn":
            keep += ["directive", "worker_handle"]
        view = {k: frame[k] for k in keep if k in frame}
        if frame["type"] == "spawn":
            view["base_url"] = self.url
        return view

    async def tool_approve(self, req_id: str) -> dict[str, Any]:
        return await self._reply(req_id, "hook_ack", (True, None))

    async def tool_reject(self, req_id: str, reason: str) -> dict[str, Any]:
        return await self._reply(req_id, "hook_ack", (False, reason))

    async def tool_answer(self, req_id: str, value: Any) -> dict[str, Any]:
        held = self._held.get(req_id)
        schema = held.frame.get("answer_schema") if held is not None else None
        if schema is not None:
            # Checked here first: the model learns what to fix without a round trip
            # (the server would refuse it the same way, with bad_answer).
            problem = answer_problem(schema, value)
            if problem is not None:
                raise ToolError(
                    "bad_answer", f"{problem}; nothing was sent, the ask is still yours to answer"
                )
        return await self._reply(req_id, "answer", value)

    async def tool_decline(self, req_id: str, reason: str) -> dict[str, Any]:
        return await self._reply(req_id, "answer", Declined(reason))

    async def tool_spawn_ack(
        self, req_id: str, value: Any = None, ok: bool = True, error: str | None = None
    ) -> dict[str, Any]:
        return await self._reply(req_id, "spawn_ack", Ack(value, ok and error is None, error))

    async def tool_spawn_halt(
        self, req_id: str, reason: str | None = None, value: Any = None
    ) -> dict[str, Any]:
        return await self._reply(req_id, "spawn_halt", Halt(reason, value))

    async def tool_reassign(
        self, req_id: str, role: str | None = None, sid: str | None = None, note: str | None = None
    ) -> dict[str, Any]:
        if (role is None) == (sid is None):
            raise ToolError("bad_arguments", "name exactly one target: role or sid")
        await self._sweep()
        held = self._held.get(req_id)
        client = self.client
        if held is None or held.reply.done() or client is None:
            raise self._not_held(req_id)
        self._watch[req_id] = []
        try:
            frame = p.reassign_frame(req_id, role=role, sid=sid, note=note)
            # The server handles the frame before the barrier's ping: its cancel
            # (or its error) has arrived when the barrier returns.
            moved = await client.send(frame) and await self._barrier()
            errors = self._watch[req_id]
        finally:
            del self._watch[req_id]
        if errors:
            raise ToolError(errors[0]["code"], errors[0]["message"])
        if not moved:
            raise ToolError(
                "not_connected", f"not connected: {req_id} was not moved; try again once connected"
            )
        return {"req_id": req_id, "to": role or sid}

    async def _reply(self, req_id: str, sent: str, result: Any) -> dict[str, Any]:
        await self._sweep()
        held = self._held.get(req_id)
        if held is None or held.reply.done():
            raise self._not_held(req_id)
        wanted = p.REPLY_TO[sent]
        if held.frame["type"] != wanted:
            raise ToolError(
                "wrong_reply",
                f"{req_id} is a {held.frame['type']} request; {sent} answers a {wanted}",
            )
        self._watch[req_id] = []
        try:
            self._remember(self._answered, req_id, sent)
            if isinstance(result, Exception):
                held.reply.set_exception(result)
            else:
                held.reply.set_result(result)
            if held.runner is not None:
                await asyncio.wait({held.runner})  # the client has sent the reply
            delivered = await self._barrier()
            errors = self._watch[req_id]
        finally:
            del self._watch[req_id]
        if errors:
            raise ToolError(errors[0]["code"], errors[0]["message"])
        return {"req_id": req_id, "sent": sent, "delivered": delivered}

    def _not_held(self, req_id: str) -> ToolError:
        if req_id in self._answered:
            return ToolError(
                "already_answered",
                f"{req_id} was already answered ({self._answered[req_id]}); the first reply "
                "won and this one changed nothing",
            )
        if req_id in self._gone:
            return ToolError("unknown_req_id", f"{req_id} was withdrawn: {self._gone[req_id]}")
        return ToolError(
            "unknown_req_id",
            f"{req_id} is not a request this bridge holds (see the pending tool)",
        )

    async def tool_worker_prompt(self, worker_handle: str) -> dict[str, Any]:
        trace = self._traces.get(worker_handle)
        async with WorkerClient(self.url, worker_handle, trace=trace) as worker:
            return await worker.prompt()

    async def tool_worker_result(
        self, worker_handle: str, value: Any, ok: bool = True
    ) -> dict[str, Any]:
        trace = self._traces.get(worker_handle)
        async with WorkerClient(self.url, worker_handle, trace=trace) as worker:
            return await worker.result(value, ok=ok)

    async def tool_task_create(
        self,
        agent: str,
        directive: Any,
        role: str | None = None,
        sid: str | None = None,
        kind: str | None = None,
        max_attempts: int | None = None,
        system: str | None = None,
    ) -> dict[str, Any]:
        if role is not None and sid is not None:
            raise ToolError("bad_arguments", "name either role or sid, not both")
        body: dict[str, Any] = {"agent": agent, "directive": directive}
        operator = {k: v for k, v in (("role", role), ("sid", sid), ("kind", kind)) if v}
        if operator:
            body["operator"] = operator
        if max_attempts is not None:
            body["max_attempts"] = max_attempts
        if system is not None:
            body["system"] = system
        return await self.tasks.create(**body)

    async def tool_task_get(self, task_id: str, wait_s: float = 0) -> dict[str, Any]:
        return await self.tasks.get(task_id, wait=wait_s)

    async def tool_task_list(self, status: str | None = None, limit: int | None = None) -> Any:
        return await self.tasks.list(status, limit)

    async def tool_task_cancel(self, task_id: str, reason: str | None = None) -> dict[str, Any]:
        return await self.tasks.cancel(task_id, reason)


TOOL_BY_NAME = {tool.name: tool for tool in TOOLS}


def _remedy(exc: RequestFailed) -> str:
    """What a user does about a mint the daemon refused, in their terms."""
    if exc.code == "roles_conflict":
        what = (
            "another operator session holds the role: stop that operator, or pick "
            "another --role, or attach to that session with --sid/--token"
        )
    elif exc.status == 403:
        what = advice.scope_refused("operate this role (operate:<glob>)")
    elif exc.status == 401:
        what = (
            f"pass {advice.CREDENTIAL_WHERE} in the bridge's configuration: "
            f"{advice.CREDENTIAL_WHAT}"
        )
    else:
        what = "fix what the error says"
    return f"{what}, then restart the bridge (the MCP client starts it again)"


def _error_result(code: str, message: str) -> types.CallToolResult:
    error = {"error": {"code": code, "message": message}}
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=p.encode(error))],
        structuredContent=error,
        isError=True,
    )


def build_server(bridge: OperatorBridge) -> Server[Any, Any]:
    """The MCP face of the bridge: tools, and the ``operator-guide`` prompt."""
    server: Server[Any, Any] = Server(
        "operator-server",
        version=__version__,
        instructions="Serve as an operator: loop on next_request, decide, reply. "
        f"The '{GUIDE_NAME}' prompt explains each step.",
    )

    @server.list_tools()
    async def list_tools() -> list[types.Tool]:
        return TOOLS

    # Arguments are validated by the bridge, so a bad one gets a coded error too.
    @server.call_tool(validate_input=False)
    async def call_tool(name: str, arguments: dict[str, Any]) -> Any:
        try:
            return await bridge.call(name, arguments)
        except ToolError as exc:
            return _error_result(exc.code, exc.message)
        except RequestFailed as exc:
            return _error_result(exc.code, exc.message)
        except (aiohttp.ClientError, OSError) as exc:
            return _error_result("unreachable", advice.unreachable(bridge.url, exc))

    @server.list_prompts()
    async def list_prompts() -> list[types.Prompt]:
        return [types.Prompt(name=GUIDE_NAME, description=GUIDE_DESCRIPTION)]

    @server.get_prompt()
    async def get_prompt(name: str, arguments: dict[str, str] | None) -> types.GetPromptResult:
        if name != GUIDE_NAME:
            raise ValueError(f"no prompt named {name!r}")
        return types.GetPromptResult(
            description=GUIDE_DESCRIPTION,
            messages=[
                types.PromptMessage(role="user", content=types.TextContent(type="text", text=GUIDE))
            ],
        )

    return server


class _StdinLines:
    """stdin as lines, read on the event loop rather than in a worker thread (the
    SDK's default), so SIGTERM can stop the server while stdin is still open."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> _StdinLines:
        return self

    async def __anext__(self) -> str:
        line = await self._reader.readline()
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


async def _stdin_lines() -> Any:
    """``_StdinLines`` on fd 0, or None (the SDK's own reader) when stdin is not a
    pipe, socket or terminal the loop can watch (a regular file, say)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STDIN_LINE_LIMIT)
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (OSError, ValueError):
        return None
    return _StdinLines(reader)


async def serve_stdio(options: BridgeOptions, protocol_out: Any = None) -> int:
    """Serve MCP on stdin and ``protocol_out`` (default stdout) until stdin ends
    or SIGTERM / SIGINT; then leave the session (unless ``keep_session``).
    Returns the exit code: 1 when the bridge never took its seat."""
    bridge = OperatorBridge(options)
    bridge.open()
    server = build_server(bridge)
    stdout = anyio.wrap_file(protocol_out) if protocol_out is not None else None
    stdin = await _stdin_lines()

    async def run() -> None:
        async with stdio_server(stdin=stdin, stdout=stdout) as (read, write):
            await server.run(read, write, server.create_initialization_options())

    loop = asyncio.get_running_loop()
    runner = asyncio.create_task(run(), name="mcp-bridge:stdio")
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, runner.cancel)
    try:
        await asyncio.gather(runner, return_exceptions=True)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        why = "stopped" if runner.cancelled() else "stdin closed"
        log.info(f"{why}; leaving" if not options.keep_session else why)
        unseated = bridge.unseated
        await bridge.close()
    if unseated:
        log.error("the bridge never took its seat", error=bridge.error)
        return 1
    return 0
