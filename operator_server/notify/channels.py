"""Sending one message over one channel: a try, and what went wrong, or None.

Email goes through ``[smtp]`` (``tls``: none, STARTTLS, or TLS from the
first byte; user and password read from the environment variables
``[smtp]`` names, at each try, so a rotated secret needs no restart).  Chat
and webhook messages are JSON POSTs, never following a redirect (the
allow-list must not be side-stepped), the way task-end webhooks go
(``outbound.py``: host names that resolve to private addresses are refused
unless ``webhook_allow_private``).  A webhook body is signed as task-end
webhooks are, and its URL must still be in ``webhook_allow_hosts`` at each try.
"""

from __future__ import annotations

import os
from email.message import EmailMessage

import aiosmtplib

from operator_server.config import SmtpSettings


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
