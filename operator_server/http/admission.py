"""What every request must satisfy before a handler runs.

**Its Host, when no api_token is set.**  An open daemon binds loopback only,
so every caller looks local — including a web page whose owner points its host
name at 127.0.0.1 (DNS rebinding): the browser then treats the daemon as that
page's own origin and lets its script read every answer, mint sessions and
create tasks.  Such a request still names the page's host in ``Host``, so it
is answered 403 ``host_not_allowed``.  Allowed: a loopback address, ``localhost``
and ``*.localhost``, and the host of ``public_url`` (a proxy on the same
machine).  A request with no ``Host`` at all (HTTP/1.0) comes from no browser
and passes.  With ``api_token`` set there is nothing to guard: a page cannot
know the token.

**Its body, within ``request_read_timeout_s`` of its headers.**  Without it a
client that sends headers and then a body slowly, or never, holds a handler and
a connection forever (slowloris).  The headers themselves are bounded by the
same setting through aiohttp's keep-alive timer (see ``app.runner_options``).
The deadline is set on the body stream itself, so whoever reads the body gets a
408 ``request_timeout`` at the point of reading, and nothing else changes: a
handler that never reads its body is not cut short.  The connection is closed
after that answer, since the rest of the body may still be on its way.

Both in one middleware, inside only ``observe`` (which counts and logs its
refusals too): one coroutine layer per request, not two.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from operator_server.config import Settings, is_loopback
from operator_server.errors import ApiError, Code
from operator_server.http.errors import error_response

_SEEN_MAX = 256


class HostCheck:
    """Whether a ``Host`` header names this daemon (see the module docstring)."""

    def __init__(self, public_url: str) -> None:
        public = urlsplit(public_url).hostname if public_url else None
        self._also = frozenset({public.lower()} if public else ())
        self._seen: dict[str, bool] = {}  # a header's answer: a few distinct ones

    def allows(self, header: str | None) -> bool:
        if header is None:
            return True
        known = self._seen.get(header)
        if known is None:
            known = self._decide(header)
            if len(self._seen) >= _SEEN_MAX:
                self._seen.clear()
            self._seen[header] = known
        return known

    def _decide(self, header: str) -> bool:
        host = header.strip().lower()
        if host.startswith("["):  # [v6 literal]:port
            host = host[1 : host.find("]")] if "]" in host else ""
        elif host.count(":") == 1:
            host = host.partition(":")[0]
        host = host.rstrip(".")
        # ``is_loopback`` takes the addresses and ``localhost`` itself.
        return host in self._also or host.endswith(".localhost") or is_loopback(host)


def admission_middleware(settings: Settings) -> Middleware:
    hosts = None if settings.api_token else HostCheck(settings.public_url)
    timeout = settings.request_read_timeout_s

    @web.middleware
    async def admission(request: web.Request, handler: Any) -> web.StreamResponse:
        if hosts is not None and not hosts.allows(request.headers.get("Host")):
            return error_response(
                Code.HOST_NOT_ALLOWED,
                "with no api_token set, a request must name this daemon by a loopback "
                "host (127.0.0.1, [::1], localhost) or public_url's host in Host",
            )
        if not request.body_exists or request.content.is_eof():
            # No body, or all of it came with the headers (most do): nothing to wait for.
            response: web.StreamResponse = await handler(request)
            return response
        body = request.content
        expired = False

        def expire() -> None:
            nonlocal expired
            if not body.is_eof():
                expired = True
                body.set_exception(
                    ApiError(
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

    return admission
