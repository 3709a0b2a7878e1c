"""One socket's plumbing: the read loop, a bounded outbound queue, one writer task.

The request handler owns the read loop (``read_loop``); the writer task is the only
code that writes to the socket.  ``send`` never blocks.  A peer that stops reading
shows up as a write that stays blocked (its TCP window is full): past
``write_timeout_s`` it is disconnected, and so is a peer whose queue reaches the
hard cap ``outbound_queue_max`` — its session keeps every pending request for the
next connection, and server memory stays bounded.  Bursts below the cap are fine.
After ``close`` sending is a no-op; frames queued before it are still written,
then the close frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from operator_server.background import Background
from operator_server.errors import Code
from operator_server.metrics import Metrics
from operator_server.wire.frames import INVALID_FRAME, encode, error_frame

_CLOSE = object()
_TCP_CORK: int | None = getattr(socket, "TCP_CORK", None)
_INET = (socket.AF_INET, socket.AF_INET6)


class SocketPump:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.BaseTransport | None,
        *,
        queue_max: int,
        write_timeout_s: float,
        max_frame_bytes: int,
        background: Background,
        name: str,
        log: Any,
        metrics: Metrics,
        remote: str | None = None,
    ) -> None:
        self.ws = ws
        self.remote = remote
        self._transport = transport
        # A deque rather than asyncio.Queue so a replay can go past the cap (see send).
        self._frames: deque[Any] = deque()
        self._ready = asyncio.Event()
        self._cap = queue_max
        self._max_frame = max_frame_bytes
        self._write_timeout = write_timeout_s
        # Stall watchdog: one timer per period rather than a timeout per frame
        # (a per-frame timeout was a large share of an ask's cost).
        self._writing = False
        self._writes_done = 0
        self._watchdog: asyncio.TimerHandle | None = None
        self._log = log
        self._metrics = metrics
        sock = transport.get_extra_info("socket") if transport is not None else None
        # Only a TCP socket can be corked (not a Unix socket, not a test double).
        self._sock = sock if getattr(sock, "family", None) in _INET else None
        self._corked = False
        self._closing = False
        self._close_code = 1000
        self._close_reason = ""
        self._writer = background.spawn(self._write_loop(), name=f"ws-writer:{name}")

    def send(self, frame: dict[str, Any], *, replay: bool = False) -> bool:
        """Queue a frame; False when it will not be written.

        A replay is not held to the cap: those frames already sit in the
        session's memory, and capping them would disconnect every reconnect of a
        session with many requests pending.
        """
        if self._closing:
            return False
        if len(self._frames) >= self._cap and not replay:
            self._log.warning(
                "peer is not reading: outbound queue reached outbound_queue_max, disconnecting",
                queued=len(self._frames),
            )
            self._metrics.slow_peer_disconnected()
            self._closing = True
            self._writer.cancel("peer not reading")
            return False
        self._frames.append(frame)
        self._ready.set()
        return True

    def close(self, code: int, reason: str) -> None:
        """Write what is queued, then close with ``code``."""
        if self._closing:
            return
        self._closing = True
        self._close_code, self._close_reason = code, reason
        self._frames.append(_CLOSE)
        self._ready.set()

    async def wait_closed(self, timeout: float) -> None:
        await asyncio.wait({self._writer}, timeout=timeout)

    async def _write_loop(self) -> None:
        try:
            while True:
                if not self._frames:
                    self._uncork()
                    self._ready.clear()
                    await self._ready.wait()
                elif len(self._frames) > 1:
                    self._cork()
                frame = self._frames.popleft()
                if frame is _CLOSE:
                    break
                self._writing = True
                if self._watchdog is None and self._write_timeout:
                    self._arm_watchdog()
                await self.ws.send_str(encode(frame))
                self._writing = False
                self._writes_done += 1
                self._metrics.frame_sent(frame)
        except asyncio.CancelledError:
            # Stuck behind a peer that does not read, or shutting down: drop the
            # connection without waiting on it.
            self._abort()
            raise
        except (ConnectionError, RuntimeError) as exc:
            self._log.info("socket write failed", error=str(exc))
            self._abort()
            return
        finally:
            self._uncork()
            self._writing = False
            if self._watchdog is not None:
                self._watchdog.cancel()
        if not self.ws.closed:
            await self.ws.close(code=self._close_code, message=self._close_reason.encode()[:120])

    def _cork(self) -> None:
        """Several frames queued: have the kernel hold what they write until
        the queue is drained (``_uncork``), so a burst leaves in full packets
        rather than one send each — at window 100 the per-frame send was a
        fifth of an ask's cost.  Linux TCP only; elsewhere a no-op."""
        if self._corked or _TCP_CORK is None or self._sock is None:
            return
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1)
            self._corked = True

    def _uncork(self) -> None:
        if not self._corked or self._sock is None:
            return
        self._corked = False
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 0)

    def _arm_watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self._write_timeout, self._check_stall, self._writes_done)

    def _check_stall(self, writes_then: int) -> None:
        """A write in progress and none finished for a whole period: the peer is not reading.

        A stall is therefore caught between one and two ``write_timeout_s`` after it starts.
        """
        self._watchdog = None
        if self._writing and self._writes_done == writes_then:
            self._log.warning(
                "peer is not reading: a write stayed blocked past write_timeout_s, disconnecting",
                queued=len(self._frames),
            )
            self._metrics.slow_peer_disconnected()
            self._closing = True
            self._writer.cancel("peer not reading")
        elif self._writing or self._frames:
            self._arm_watchdog()

    def _abort(self) -> None:
        self._closing = True
        if self._transport is not None and isinstance(self._transport, asyncio.Transport):
            self._transport.abort()

    async def read_loop(self, on_text: Callable[[str], Awaitable[None] | None]) -> None:
        """Feed each text frame to ``on_text`` until the socket closes; what it
        returns to await is awaited before the next frame is read."""
        async for msg in self.ws:
            if msg.type is WSMsgType.TEXT:
                data: str = msg.data
                # len(str) <= len(utf-8 bytes) <= 4 * len(str): encode only when it matters.
                if len(data) * 4 > self._max_frame and len(data.encode()) > self._max_frame:
                    self._metrics.frame_received(INVALID_FRAME)
                    self.send(
                        error_frame(Code.TOO_LARGE, f"frame is larger than {self._max_frame} bytes")
                    )
                    continue
                if (later := on_text(data)) is not None:
                    await later
            elif msg.type is WSMsgType.BINARY:
                self._metrics.frame_received(INVALID_FRAME)
                self.send(
                    error_frame(Code.BAD_MESSAGE, "binary frames are not accepted; send JSON text")
                )
            elif msg.type is WSMsgType.ERROR:
                self._log.info("socket error", error=str(self.ws.exception()))
                break
