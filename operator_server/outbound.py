"""Outbound HTTP to receivers the configuration names: task-end webhooks
(``webhooks.py``) and notifications (``notify/``) go out the same way.

* **Where a try may go.**  A URL must still match ``webhook_allow_hosts`` at
  each try (``refusal``: the settings may have changed since it was queued).
  A host *name* must resolve to global addresses: loopback, link-local,
  private and other non-global ones are dropped by the connector's own
  resolver (``GlobalOnlyResolver``), so the check is made on the very
  addresses the connection is then made to — no window between a check and
  a second lookup.  ``webhook_allow_private`` lifts that; an allow-listed IP
  literal is itself the explicit permission.
* **One try** (``post_json``) is one POST of a JSON body with its idempotency
  key (and its signature, where the receiver checks one), never following a
  redirect (the allow-list must not be side-stepped); its result is what
  went wrong, in a line, or None when the receiver took it (2xx).
* **Between tries** (``backoff``): ``webhook_backoff_s`` doubled per try,
  capped at ``webhook_backoff_max_s``, with jitter.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from operator_server.config import Settings, webhook_host_allowed
from operator_server.wire import json
from operator_server.wire.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, sign


def is_public(address: str) -> bool:
    """Whether a resolved address is a global one (not loopback, link-local,
    private, shared, reserved, multicast or unspecified)."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])  # fe80::1%eth0
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class RefusedAddress(OSError):
    """A receiver's host resolved only to addresses it may not go to."""


class GlobalOnlyResolver(AbstractResolver):
    """The connector's resolver: the usual lookup, minus non-global addresses.
    The connector connects only to what this returns, so what is checked is
    what is connected to.  (IP literals never reach a resolver: they are
    allow-listed by name, see ``refusal``.)"""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        kept = [r for r in found if is_public(r["host"])]
        if not kept:
            refused = ", ".join(sorted({r["host"] for r in found}))
            raise RefusedAddress(
                f"{host} resolves only to non-public addresses ({refused}); "
                "set webhook_allow_private = true, or allow-list the address itself"
            )
        return kept

    async def close(self) -> None:
        await self._inner.close()


def connector(settings: Settings, **options: Any) -> aiohttp.TCPConnector:
    """A connector that goes only where ``settings`` let outbound tries go."""
    resolver = None if settings.webhook_allow_private else GlobalOnlyResolver()
    return aiohttp.TCPConnector(resolver=resolver, **options)


def refusal(settings: Settings, url: URL, what: str) -> str | None:
    """Why a try may not go to ``url`` (``what`` names it: "callback_url") now, or None."""
    host = (url.host or "").lower()
    if url.scheme not in ("http", "https") or not host:
        return f"{what} is not an http(s) URL"
    if not webhook_host_allowed(settings, host, url.port or 0):
        return f"{host}:{url.port} is no longer in webhook_allow_hosts"
    return None


def backoff(settings: Settings, tries: int) -> float:
    """Wait after ``tries`` failed tries: exponential, capped, with jitter."""
    ceiling = min(settings.webhook_backoff_max_s, settings.webhook_backoff_s * 2 ** (tries - 1))
    return ceiling * random.uniform(0.5, 1.0)


async def post_json(
    http: aiohttp.ClientSession,
    url: str | URL,
    body: Any,
    key: str,
    *,
    secret: str | None = None,
    timeout: float,
) -> str | None:
    """POST ``body`` with its idempotency ``key`` (and its signature with
    ``secret``); what went wrong, or None when the receiver took it (2xx)."""
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", DELIVERY_HEADER: key}
    if secret is not None:
        headers[SIGNATURE_HEADER] = sign(secret, data)
    try:
        async with http.post(url, data=data, headers=headers, allow_redirects=False) as resp:
            if not 200 <= resp.status < 300:
                return f"HTTP {resp.status}"
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except aiohttp.ClientConnectorDNSError as exc:
        if isinstance(exc.os_error, RefusedAddress):
            return f"refused: {exc.os_error}"
        return f"{type(exc).__name__}: {exc}"
    except aiohttp.ClientError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
