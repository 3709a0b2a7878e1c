"""One socket's plumbing: the read loop, a bounded outbound queue, one writer task.

The request handler owns the read loop (``read_loop``); the writer task is the only
code that writes to the socket.  ``send`` never blocks: when the queue is full the
peer is not reading, and it is disconnected (its session keeps every pending
request for the next connection) instead of letting server memory grow.  After
``close`` sending is a no-op; frames queued before it are still written, then the
close frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from operator_server.background import Background
from operator_server.errors import Code
from operator_server.operators.protocol import encode, error_frame

_CLOSE = object()


class SocketPump:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.BaseTransport | None,
        *,
        queue_max: int,
        max_frame_bytes: int,
        background: Background,
        name: str,
        log: Any,
    ) -> None:
        self.ws = ws
        self._transport = transport
        self._queue: asyncio.Queue[Any] = asyncio.Queue(queue_max)
        self._max_frame = max_frame_bytes
        self._log = log
        self._closing = False
        self._close_code = 1000
        self._close_reason = ""
        self._writer = background.spawn(self._write_loop(), name=f"ws-writer:{name}")

    @property
    def closing(self) -> bool:
        return self._closing

    def send(self, frame: dict[str, Any]) -> bool:
        """Queue a frame; False when it will not be written."""
        if self._closing:
            return False
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self._log.warning(
                "peer is not reading: outbound queue is full, disconnecting",
                queued=self._queue.qsize(),
            )
            self._closing = True
            self._writer.cancel("peer not reading")
            return False
        return True

    def close(self, code: int, reason: str) -> None:
        """Write what is queued, then close with ``code``."""
        if self._closing:
            return
        self._closing = True
        self._close_code, self._close_reason = code, reason
        try:
            self._queue.put_nowait(_CLOSE)
        except asyncio.QueueFull:
            self._writer.cancel(reason)

    async def wait_closed(self, timeout: float) -> None:
        await asyncio.wait({self._writer}, timeout=timeout)

    async def _write_loop(self) -> None:
        try:
            while True:
                frame = await self._queue.get()
                if frame is _CLOSE:
                    break
                await self.ws.send_str(encode(frame))
        except asyncio.CancelledError:
            # Stuck behind a peer that does not read, or shutting down: drop the
            # connection without waiting on it.
            self._abort()
            raise
        except (ConnectionError, RuntimeError) as exc:
            self._log.info("socket write failed", error=str(exc))
            self._abort()
            return
        if not self.ws.closed:
            await self.ws.close(code=self._close_code, message=self._close_reason.encode()[:120])

    def _abort(self) -> None:
        self._closing = True
        if self._transport is not None and isinstance(self._transport, asyncio.Transport):
            self._transport.abort()

    async def read_loop(self, on_text: Callable[[str], None]) -> None:
        """Feed each text frame to ``on_text`` until the socket closes."""
        async for msg in self.ws:
            if msg.type is WSMsgType.TEXT:
                data: str = msg.data
                # len(str) <= len(utf-8 bytes) <= 4 * len(str): encode only when it matters.
                if len(data) * 4 > self._max_frame and len(data.encode()) > self._max_frame:
                    self.send(
                        error_frame(Code.TOO_LARGE, f"frame is larger than {self._max_frame} bytes")
                    )
                    continue
                on_text(data)
            elif msg.type is WSMsgType.BINARY:
                self.send(
                    error_frame(Code.BAD_MESSAGE, "binary frames are not accepted; send JSON text")
                )
            elif msg.type is WSMsgType.ERROR:
                self._log.info("socket error", error=str(self.ws.exception()))
                break
