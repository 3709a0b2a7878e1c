"""``OperatorClient``: one operator session, kept connected, answering by handler.

Handlers are coroutines taking the request frame (a dict) and returning the
reply's content:

* ``on_ask(frame) -> value``  (``frame["answer_schema"]``, when present, is the form
  the value must fill; ``parent_req_id`` names the spawn whose worker asks)
* ``on_hook_before(frame) -> bool | (bool, reason)``  (no handler: approve)
* ``on_hook_after(frame) -> None``                    (no reply is sent)
* ``on_spawn(frame) -> value | Ack(value, ok) | Halt(reason, value)``
* ``on_cancel(frame) -> None``                        (the request's handler is cancelled first)

A handler that raises never leaves the server waiting: the reply becomes a
failure (``spawn_ack`` with ``error``, ``hook_ack`` with ``ok=false``, ``answer``
with ``error``).  Raising ``Decline(reason)`` does the same without logging a
traceback: it is an answer ("I will not"), not a bug.

After a drop the client reconnects with the same sid and token (never a
re-mint), with exponential backoff and jitter; but a socket the server closed
because a newer connection for the session replaced it ends the client with
``SessionTakenOver`` (from ``wait_closed``), the session left to that
connection.  The server replays what is unanswered; the client runs each
``req_id``'s handler once and re-sends a reply it already made, so a replay is
answered exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from operator_server.client.errors import RequestFailed
from operator_server.client.http import _Http, credential_from_env
from operator_server.client.tracecontext import continued
from operator_server.errors import ProtocolError, status_of
from operator_server.logs import get_logger
from operator_server.wire import frames as p

log = get_logger(__name__)
Handler = Callable[[dict[str, Any]], Awaitable[Any]]
REPLY_MEMORY = 4096


@dataclass(frozen=True)
class Ack:
    """An explicit ``spawn_ack``: ``value`` (default ``{}``), ``ok``, and an
    ``error`` that fails the attempt."""

    value: Any = None
    ok: bool = True
    error: str | None = None


@dataclass(frozen=True)
class Halt:
    """A deliberate stop: ``spawn_halt``."""

    reason: str | None = None
    value: Any = None


class SessionGone(Exception):
    """The server no longer knows this session (deleted or expired)."""


class SessionTakenOver(Exception):
    """Another connection with this session's token replaced this client's socket
    (close code ``REPLACED_CLOSE_CODE``): the session is still there, but it is
    the other connection's to serve now.  Reconnecting would replace that one
    back, and the two would take turns without end."""


class Decline(Exception):
    """Raised by a handler to refuse a request on purpose; ``str(exc)`` is the reason."""


class OperatorClient:
    def __init__(
        self,
        base_url: str,
        *,
        sid: str | None = None,
        token: str | None = None,
        roles: list[str] | tuple[str, ...] = (),
        desc: str = "",
        api_token: str | None = None,
        on_ask: Handler | None = None,
        on_hook_before: Handler | None = None,
        on_hook_after: Handler | None = None,
        on_spawn: Handler | None = None,
        on_cancel: Handler | None = None,
        on_frame: Callable[[dict[str, Any]], bool] | None = None,
        backoff_min_s: float = 0.2,
        backoff_max_s: float = 10.0,
        heartbeat_s: float | None = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        # A principal's credential for the mint: given, else from the
        # environment (``client.http.CREDENTIAL_ENV``: the API key wins).
        self._api = _Http(base_url, api_token or credential_from_env(), session)
        self.base_url = self._api.base_url
        self.sid, self.token = sid, token
        self.roles, self.desc = list(roles), desc
        # ``join`` took back this client's own earlier mint (see there).
        self.reclaimed = False
        self.handlers: dict[str, Handler | None] = {
            "ask": on_ask,
            "hook_before": on_hook_before,
            "hook_after": on_hook_after,
            "spawn": on_spawn,
            "cancel": on_cancel,
        }
        # Sees every server frame (replays and ``error`` frames included) before it
        # is dispatched, and returns True to consume it; for a client that tracks
        # requests itself (the MCP bridge).
        self.on_frame = on_frame
        self._backoff = (backoff_min_s, backoff_max_s)
        self._heartbeat = heartbeat_s
        self.connected = asyncio.Event()
        self.connects = 0
        self.errors: list[dict[str, Any]] = []  # error frames the server sent us
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._runner: asyncio.Task[None] | None = None
        self._handling: dict[str, asyncio.Task[None]] = {}  # req_id -> its handler run
        self._tasks: set[asyncio.Task[None]] = set()  # every task this client started
        self._replies: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._pings: dict[str, asyncio.Future[None]] = {}
        self._stopping = False

    # -- session ----------------------------------------------------------

    async def join(self) -> None:
        """Mint a session unless this client was given one.

        A client given a ``token`` but no sid mints with that token: the caller
        kept it before minting, so a mint whose answer was lost (the process
        killed, the connection cut) is not lost with it.  If the roles turn out
        held by a session that token opens, that session is this client's own
        earlier mint, and it is taken back instead of a ``roles_conflict``.
        """
        if self.sid is not None:
            return
        mint: dict[str, Any] = {"roles": self.roles, "desc": self.desc}
        if self.token is not None:
            mint["token"] = self.token
        try:
            body = await self._api.request("POST", "/v1/operators", json=mint)
        except RequestFailed as exc:
            if self.token is None or exc.code != "roles_conflict":
                raise
            self.sid = await self._own_holder(exc)
            if self.sid is None:
                raise
            self.reclaimed = True
            return
        self.sid, self.token, self.roles = body["sid"], body["token"], body["roles"]

    async def _own_holder(self, conflict: RequestFailed) -> str | None:
        """The session holding the conflicting roles that this client's token opens."""
        body = conflict.body if isinstance(conflict.body, dict) else {}
        holders = {
            str(c.get("sid"))
            for c in body.get("error", {}).get("conflicts", [])
            if isinstance(c, dict)
        }
        for sid in sorted(holders):
            try:
                view = await self._api.request(
                    "GET", f"/v1/operators/{sid}", headers={"Authorization": f"Bearer {self.token}"}
                )
            except RequestFailed:
                continue  # not this client's (401) or gone meanwhile (404)
            self.roles = list(view["roles"])
            return sid
        return None

    async def view(self) -> dict[str, Any]:
        """The server's view of this session (``GET /v1/operators/{sid}``): it
        checks the sid and token before anything connects."""
        body: dict[str, Any] = await self._api.request(
            "GET",
            f"/v1/operators/{self.sid}",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        return body

    async def start(self, timeout: float = 10) -> None:
        """Join, connect, and return once the first socket is up.

        If it cannot (a 409 on the mint, the session gone, no server), the client
        is closed before the error propagates: nothing is left open behind it.
        """
        try:
            await self.join()
            self._runner = asyncio.create_task(self._run(), name=f"operator-client:{self.sid}")
            connected = asyncio.create_task(self.connected.wait())
            done, _ = await asyncio.wait(
                {self._runner, connected}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if connected not in done:
                connected.cancel()
                if self._runner in done:
                    self._runner.result()  # raises why it stopped
                raise TimeoutError(f"could not connect to {self.base_url} within {timeout}s")
        except BaseException:
            await self.close()
            raise

    async def wait_closed(self) -> None:
        """Until the client stops (``close``/``leave``, or the session is gone)."""
        if self._runner is not None:
            await self._runner

    async def leave(self) -> None:
        """Delete the session on the server, then close."""
        if self.sid is not None and self.token is not None:
            try:
                await self._api.request(
                    "DELETE",
                    f"/v1/operators/{self.sid}",
                    headers={"Authorization": f"Bearer {self.token}"},
                )
            except RequestFailed as exc:
                if exc.status != 404:
                    raise
        await self.close()

    async def close(self) -> None:
        """Stop reconnecting and close the socket; the session stays on the server."""
        self._stopping = True
        handlers = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        # Wait for them: a handler's cleanup (say, killing a sub-agent) must run
        # before the caller moves on or the event loop goes away.
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        await self._api.close()

    # -- connection loop -------------------------------------------------

    def _delay(self, failures: int) -> float:
        low, high = self._backoff
        return min(high, low * 2**failures) * random.uniform(0.5, 1.0)

    async def _run(self) -> None:
        failures = 0
        http = await self._api._http()
        url = f"{self.base_url}/v1/operators/{self.sid}/ws"
        while not self._stopping:
            try:
                ws = await http.ws_connect(
                    url,
                    headers={"Authorization": f"Bearer {self.token}"},
                    heartbeat=self._heartbeat,
                    max_msg_size=0,
                )
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status in (401, 404):
                    raise SessionGone(f"session {self.sid}: {exc.status} {exc.message}") from exc
                failures += 1
            except (aiohttp.ClientConnectionError, OSError):
                failures += 1
            else:
                failures = 0
                await self._serve_socket(ws)
                if self._stopping:
                    break
                if ws.close_code == p.REPLACED_CLOSE_CODE:
                    raise SessionTakenOver(
                        f"session {self.sid} was taken over by another connection"
                    )
            await asyncio.sleep(self._delay(failures))

    async def _serve_socket(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self.connects += 1
        self.connected.set()
        log.info("operator connected", sid=self.sid, connects=self.connects)
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    self._on_text(msg.data)
        finally:
            self._ws = None
            self.connected.clear()
            log.info("operator disconnected", sid=self.sid, code=ws.close_code)

    # -- frames ------------------------------------------------------------

    def _on_text(self, text: str) -> None:
        try:
            kind, frame = p.parse_server_frame(text)
        except ProtocolError as exc:
            log.warning("unreadable frame from server", code=exc.code, error=exc.message)
            return
        frame["type"] = kind
        if self.on_frame is not None and self.on_frame(frame):
            return
        if kind == "pong":
            waiter = self._pings.pop(frame["id"], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        if kind == "error":
            self.errors.append(frame)
            log.warning("server refused a frame", code=frame["code"], error=frame["message"])
            return
        req_id = frame["req_id"]
        if kind == "cancel":
            running = self._handling.pop(req_id, None)
            if running is not None:
                running.cancel()
            self._spawn(self._notify("cancel", frame), f"cancel:{req_id}")
            return
        if kind == "hook_after":
            with continued(frame.get("trace")):
                self._spawn(self._notify("hook_after", frame), f"hook_after:{req_id}")
            return
        if req_id in self._replies:  # a replay of something already answered
            self._spawn(self._send(self._replies[req_id]), f"resend:{req_id}")
        elif req_id not in self._handling:  # else: a replay of one still being handled
            # The handler runs in the request's trace context (its task copies
            # it): what it calls over HTTP continues the task's trace.
            with continued(frame.get("trace")):
                self._handling[req_id] = self._spawn(self._answer(kind, frame), f"{kind}:{req_id}")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _notify(self, kind: str, frame: dict[str, Any]) -> None:
        handler = self.handlers[kind]
        if handler is None:
            return
        try:
            await handler(frame)
        except Exception:
            log.exception("operator handler failed", kind=kind, req_id=frame.get("req_id"))

    async def _answer(self, kind: str, frame: dict[str, Any]) -> None:
        req_id = frame["req_id"]
        try:
            reply = await self._reply_for(kind, frame)
        except asyncio.CancelledError:
            return  # withdrawn by the server: no reply is owed
        finally:
            self._handling.pop(req_id, None)
        self._replies[req_id] = reply
        if len(self._replies) > REPLY_MEMORY:
            self._replies.popitem(last=False)
        await self._send(reply)

    async def _reply_for(self, kind: str, frame: dict[str, Any]) -> dict[str, Any]:
        req_id = frame["req_id"]
        handler = self.handlers[kind]
        try:
            if handler is None:
                return _default_reply(kind, req_id)
            result = await handler(frame)
        except asyncio.CancelledError:
            raise
        except Decline as exc:
            log.info("operator declined", kind=kind, req_id=req_id, reason=str(exc))
            return _failure_reply(kind, req_id, str(exc))
        except Exception as exc:
            log.exception("operator handler failed", kind=kind, req_id=req_id)
            return _failure_reply(kind, req_id, f"{type(exc).__name__}: {exc}")
        return _success_reply(kind, req_id, result)

    async def send(self, frame: dict[str, Any]) -> bool:
        """Write one client frame on the current socket; False when there is none
        (nothing is queued: a reply is re-sent when the server replays its request)."""
        return await self._send(frame)

    async def reassign(
        self,
        req_id: str,
        *,
        role: str | None = None,
        sid: str | None = None,
        note: str | None = None,
        timeout: float = 10,
    ) -> bool:
        """Move a request this session holds to another ``role`` or session
        (``sid``), with an optional ``note`` for the next holder.  True once
        the server has moved it (its ``cancel``, reason ``reassigned``, has then
        arrived and the request's handler is cancelled); ``RequestFailed`` with
        the server's code when it refused (``forbidden``, ``already_answered``,
        ``already_moved``, ``bad_request`` naming the target); False when there
        is no socket, or no answer within ``timeout`` (it may have moved)."""
        if (role is None) == (sid is None):
            raise ValueError("name exactly one target: role or sid")
        seen = len(self.errors)
        if not await self._send(p.reassign_frame(req_id, role=role, sid=sid, note=note)):
            return False
        if not await self.sync(timeout):
            return False
        for error in self.errors[seen:]:
            if error.get("req_id") == req_id:
                raise RequestFailed(status_of(error["code"]), error["code"], error["message"])
        return True

    async def sync(self, timeout: float = 10) -> bool:
        """True once the server has handled every frame this client sent before
        (a ``ping`` answered by ``pong``): any ``error`` frame about them has
        then arrived, and after a reconnect so has the whole replay.  False when
        there is no socket, or it dropped before the answer."""
        ping_id = uuid.uuid4().hex
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings[ping_id] = answered
        try:
            if not await self._send(p.ping_frame(ping_id)):
                return False
            async with asyncio.timeout(timeout):
                await answered
            return True
        except TimeoutError:
            return False
        finally:
            self._pings.pop(ping_id, None)

    async def _send(self, frame: dict[str, Any]) -> bool:
        ws = self._ws
        if ws is None or ws.closed:
            return False  # kept in _replies; re-sent when the server replays the request
        # A send lost to a dropping socket is the same case: the replay asks again.
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(p.encode(frame))
            return True
        return False


def _default_reply(kind: str, req_id: str) -> dict[str, Any]:
    if kind == "hook_before":
        return p.hook_ack_frame(req_id, True)
    return _failure_reply(kind, req_id, f"this operator has no handler for {kind}")


def _failure_reply(kind: str, req_id: str, error: str) -> dict[str, Any]:
    if kind == "ask":
        return p.answer_frame(req_id, None, error=error)
    if kind == "hook_before":
        return p.hook_ack_frame(req_id, False, error)
    return p.spawn_ack_frame(req_id, ok=False, error=error)


def _success_reply(kind: str, req_id: str, result: Any) -> dict[str, Any]:
    if kind == "ask":
        return p.answer_frame(req_id, result)
    if kind == "hook_before":
        ok, reason = result if isinstance(result, tuple) else (bool(result), None)
        return p.hook_ack_frame(req_id, ok, reason)
    if isinstance(result, Halt):
        return p.spawn_halt_frame(req_id, result.reason, result.value)
    if isinstance(result, Ack):
        return p.spawn_ack_frame(req_id, result.value, result.ok, result.error)
    return p.spawn_ack_frame(req_id, result)
