"""What the notification tests run on the other end: a real SMTP server, an
HTTP receiver (standing in for a chat service or a webhook endpoint), and a
stand-in for the action links."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass(frozen=True)
class Link:
    url: str
    actions: tuple[str, ...]
    expires_at: float


class StandInLinks:
    """Stands in for ``ActionLinks`` (``notify/links.py``, built on another
    branch) until the merge: the same ``mint`` signature, a recognisable URL
    per request and recipient, and every call kept."""

    def __init__(self, base: str = "http://links.test") -> None:
        self.base = base
        self.minted: list[dict[str, Any]] = []

    async def mint(
        self, *, req_id: str, kind: str, recipient: str | None, due_at: float | None
    ) -> Link:
        self.minted.append({"req_id": req_id, "kind": kind, "recipient": recipient})
        actions = ("approve", "reject") if kind == "hook_before" else ("answer", "decline")
        return Link(
            f"{self.base}/v1/links/t-{req_id}-{recipient}", actions, due_at or time.time() + 60
        )


class Mailbox:
    """aiosmtpd's handler: every message it is given, parsed."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 OK"


async def smtp_server(mailbox: Mailbox) -> tuple[asyncio.Server, int]:
    """A real SMTP server on a free port of this test's event loop."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(mailbox), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@dataclass
class Receiver:
    """An HTTP endpoint that keeps what it is sent; ``fail`` answers that
    many requests 500 first (a chat service or webhook receiver that is down)."""

    fail: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    tries: int = 0
    keys: list[str] = field(default_factory=list)  # each try's idempotency key

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.tries += 1
        self.keys.append(request.headers.get("X-Operator-Server-Delivery", ""))
        if self.fail > 0:
            self.fail -= 1
            return web.Response(status=500)
        self.raw.append(body)
        self.bodies.append(json.loads(body))
        self.headers.append(dict(request.headers))
        self.arrived.append(time.monotonic())
        return web.Response(text="ok")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        return app
