"""What the notification tests run on the other end: a real SMTP server and an
HTTP receiver (standing in for a chat service or a webhook endpoint), and how
they read the action links out of what they were delivered."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import html
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from html.parser import HTMLParser
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session


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


@contextlib.asynccontextmanager
async def smtp_running() -> AsyncIterator[tuple[Mailbox, int]]:
    """A real SMTP server for the length of a ``with``: its mailbox and port."""
    mailbox = Mailbox()
    server, port = await smtp_server(mailbox)
    try:
        yield mailbox, port
    finally:
        server.close()
        await server.wait_closed()


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


def mail_parts(message: EmailMessage) -> tuple[str, str]:
    """The text/plain and text/html parts of a ``multipart/alternative`` mail."""
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(("plain",))
    rich = message.get_body(("html",))
    assert plain is not None and rich is not None
    return plain.get_content(), rich.get_content()


class _Hrefs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.hrefs += [value for name, value in attrs if name in ("href", "src") and value]


def urls_in_text(text: str) -> list[str]:
    """Every URL a mail client would make clickable in a plain-text part."""
    return re.findall(r"https?://[^\s<>\"')]+", text)


def urls_in_html(text: str) -> list[str]:
    """Every href (and src) of an HTML part, unescaped as a browser reads them,
    and any URL written out in its text."""
    parser = _Hrefs()
    parser.feed(text)
    parser.close()
    words = html.unescape(re.sub(r"<[^>]*>", " ", text))
    return parser.hrefs + [u for u in urls_in_text(words) if u not in parser.hrefs]


def mailed_links(message: EmailMessage) -> list[str]:
    """The action links of a delivered mail, in order; its text part and its
    HTML part must offer the very same ones."""
    plain, rich = mail_parts(message)
    in_text, in_html = urls_in_text(plain), urls_in_html(rich)
    assert in_text == in_html, (in_text, in_html)
    return in_text


def button_urls(payload: dict[str, Any]) -> list[str]:
    """Every button URL of a Block Kit chat message."""
    return [
        element["url"]
        for block in payload["blocks"]
        if block["type"] == "actions"
        for element in block["elements"]
        if "url" in element
    ]
