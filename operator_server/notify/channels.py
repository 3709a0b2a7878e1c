"""Sending one message over one channel: a try, and what went wrong, or None.

Email goes through ``[smtp]`` (``tls``: none, STARTTLS, or TLS from the
first byte; user and password read from the environment variables
``[smtp]`` names, at each try, so a rotated secret needs no restart).  Chat
and webhook messages are JSON POSTs, never following a redirect (the
allow-list must not be side-stepped), through the same connector rules as
task-end webhooks (``webhooks.py``: host names that resolve to private
addresses are refused unless ``webhook_allow_private``).  A webhook body is
signed as task-end webhooks are (``wire/webhooks.py``), and its URL must
still be in ``webhook_allow_hosts`` at each try.
"""

from __future__ import annotations

import os
from email.message import EmailMessage
from typing import Any

import aiohttp
import aiosmtplib
from yarl import URL

from operator_server.config import Settings, SmtpSettings, webhook_host_allowed
from operator_server.webhooks import RefusedAddress
from operator_server.wire import json
from operator_server.wire.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, sign


async def send_email(smtp: SmtpSettings, message: EmailMessage, timeout: float) -> str | None:
    user = os.environ.get(smtp.user_env) if smtp.user_env else None
    password = os.environ.get(smtp.password_env) if smtp.password_env else None
    try:
        await aiosmtplib.send(
            message,
            hostname=smtp.host,
            port=smtp.port,
            username=user,
            password=password,
            use_tls=smtp.tls == "tls",
            start_tls=smtp.tls == "starttls",
            cert_bundle=smtp.ca_file or None,
            timeout=timeout,
        )
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def webhook_refusal(settings: Settings, url: str) -> str | None:
    """Why a webhook rule's message may not go to ``url`` now, or None."""
    parsed = URL(url)
    host = (parsed.host or "").lower()
    if parsed.scheme not in ("http", "https") or not host:
        return "not an http(s) URL"
    if not webhook_host_allowed(settings, host, parsed.port or 0):
        return f"{host}:{parsed.port} is no longer in webhook_allow_hosts"
    return None


async def post_json(
    http: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
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
