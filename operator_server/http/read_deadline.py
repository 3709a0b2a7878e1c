"""A request body must arrive within ``request_read_timeout_s`` of its headers.

Without it a client that sends headers and then a body slowly, or never, holds
a handler and a connection forever (slowloris).  The headers themselves are
bounded by the same setting through aiohttp's keep-alive timer (see
``app.runner_options``).

The deadline is set on the body stream itself, so whoever reads the body gets a
408 ``request_timeout`` at the point of reading, and nothing else changes: a
handler that never reads its body is not cut short.  The connection is closed
after that answer, since the rest of the body may still be on its way.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from operator_server.appkeys import SETTINGS
from operator_server.errors import ApiError, Code


@web.middleware
async def read_deadline_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    if not request.body_exists or request.content.is_eof():
        # No body, or all of it came with the headers (most do): nothing to wait for.
        response: web.StreamResponse = await handler(request)
        return response
    timeout = request.app[SETTINGS].request_read_timeout_s
    body = request.content
    expired = False

    def expire() -> None:
        nonlocal expired
        if not body.is_eof():
            expired = True
            body.set_exception(
                ApiError(
                    408,
                    Code.REQUEST_TIMEOUT,
                    f"the request body did not arrive within request_read_timeout_s "
                    f"({timeout:g} s)",
                )
            )

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        response = await handler(request)
    finally:
        timer.cancel()
    if expired:
        response.force_close()
    return response
