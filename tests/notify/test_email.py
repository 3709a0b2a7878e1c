"""Email notifications, received by a real SMTP server in the test process."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from operator_server.appkeys import ACTION_LINKS
from tests.conftest import Server, create_task, wait_task
from tests.notify.receivers import Mailbox, mail_parts, mailed_links, smtp_server
from tests.wsop import connect, eventually, expect, mint

DIRECTIVE = "<b>deploy</b> & check"


parts = mail_parts


async def start(server: Server, port: int, **overrides: Any) -> Any:
    rule = {"channel": "email", "to": ["alice@example.com"], "roles": ["rev*"], "batch_s": 0}
    rule.update(overrides.pop("rule", {}))
    settings = {"smtp__tls": "none", **overrides}
    client = await server(
        notify=[rule],
        smtp__host="127.0.0.1",
        smtp__port=port,
        smtp__from="server@example.com",
        **settings,
    )
    return client


async def test_a_pending_approval_is_mailed_with_both_parts_its_facts_and_its_link(
    server: Server,
) -> None:
    mailbox = Mailbox()
    smtp, port = await smtp_server(mailbox)
    try:
        client = await start(server, port)
        sid, token = await mint(client, ["reviewer"])
        ws = await connect(client, sid, token)
        task = await create_task(
            client, agent="coder", directive=DIRECTIVE, operator={"role": "reviewer"}
        )
        hb = await expect(ws, "hook_before")
        await eventually(lambda: mailbox.messages, what="the mail")
        (message,) = mailbox.messages
        assert mailbox.envelopes == [("server@example.com", ["alice@example.com"])]
        assert message["To"] == "alice@example.com"
        assert message["Subject"] == (
            f"[operator-server] Approval needed: spawn agent coder (attempt 1) (task {task['id']})"
        )
        key = message["X-Operator-Server-Delivery"]
        assert key and message["Message-ID"] == f"<{key}@operator-server>"
        plain, html = parts(message)
        # One link, the same in both parts: this daemon's, for this request and
        # this recipient, offering what a hook_before offers.
        (url,) = mailed_links(message)
        origin = str(client.make_url("")).rstrip("/")
        assert url.startswith(f"{origin}/v1/links/")
        app: web.Application = client.app
        claims = await app[ACTION_LINKS].verify(url.rsplit("/", 1)[1])
        assert (claims.req_id, claims.recipient, claims.actions) == (
            hb["req_id"],
            "email:alice@example.com",
            ("approve", "reject"),
        )
        for text in (plain, html):
            assert task["id"] in text and hb["req_id"] in text and "coder" in text
            assert "reviewer" in text and "Deadline: " in plain
        # It opens the request's page (and opening it decides nothing).
        resp = await client.get(url.removeprefix(origin))
        shown = await resp.text()
        assert resp.status == 200 and hb["req_id"] in shown and task["id"] in shown
        assert DIRECTIVE in plain
        # Everything in the HTML part is escaped: the directive's markup too.
        assert "&lt;b&gt;deploy&lt;/b&gt; &amp; check" in html and "<b>deploy" not in html

        # Approved with a reason; the spawn that follows carries credentials.
        reason = "reviewed-by-bob-secretly"
        await ws.send_json(
            {"type": "hook_ack", "req_id": hb["req_id"], "ok": True, "reason": reason}
        )
        spawn = await expect(ws, "spawn")
        await eventually(lambda: len(mailbox.messages) == 2, what="the spawn's mail")
        spawn_plain, spawn_html = parts(mailbox.messages[1])
        assert "Work to do by hand: agent coder" in spawn_plain
        for text in (spawn_plain, spawn_html, str(mailbox.messages[1])):
            assert spawn["capability_token"] not in text
            assert spawn["worker_handle"] not in text
            assert reason not in text
        await ws.send_json(
            {"type": "spawn_ack", "req_id": spawn["req_id"], "value": "the-result-42"}
        )
        assert (await wait_task(client, task["id"]))["status"] == "passed"
        assert all("the-result-42" not in str(m) for m in mailbox.messages)
        await ws.close()
    finally:
        smtp.close()
        await smtp.wait_closed()


async def test_a_rule_can_leave_the_directive_out_and_names_only_the_roles_it_covers(
    server: Server,
) -> None:
    mailbox = Mailbox()
    smtp, port = await smtp_server(mailbox)
    try:
        client = await start(server, port, rule={"include_text": False, "kinds": ["hook_before"]})
        other_sid, other_token = await mint(client, ["ops"])
        other = await connect(client, other_sid, other_token)
        await create_task(client, agent="coder", directive=DIRECTIVE, operator={"role": "ops"})
        await expect(other, "hook_before")
        sid, token = await mint(client, ["reviewer"])
        ws = await connect(client, sid, token)
        task = await create_task(
            client, agent="coder", directive=DIRECTIVE, operator={"role": "reviewer"}
        )
        await expect(ws, "hook_before")
        await eventually(lambda: mailbox.messages, what="the mail")
        # The "ops" request came first, yet only the covered role's is mailed.
        plain, html = parts(mailbox.messages[0])
        assert task["id"] in plain and "deploy" not in plain and "deploy" not in html
        assert len(mailbox.messages) == 1
        await ws.close()
        await other.close()
    finally:
        smtp.close()
        await smtp.wait_closed()


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made here (no network, no openssl)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_mail_goes_over_starttls_with_the_login_read_from_the_environment(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    logins: list[tuple[bytes, bytes]] = []

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> Any:
        logins.append((auth.login, auth.password))
        return AuthResult(success=True)

    mailbox = Mailbox()
    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(
        lambda: SMTP(mailbox, tls_context=tls, require_starttls=True, authenticator=authenticate),
        "127.0.0.1",
        0,
    )
    monkeypatch.setenv("TEST_SMTP_USER", "mailer")
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "pw-from-env")
    try:
        client = await start(
            server,
            smtp.sockets[0].getsockname()[1],
            smtp__tls="starttls",
            smtp__ca_file=str(cert),
            smtp__user_env="TEST_SMTP_USER",
            smtp__password_env="TEST_SMTP_PASSWORD",
        )
        sid, token = await mint(client, ["reviewer"])
        ws = await connect(client, sid, token)
        await create_task(client, agent="coder", operator={"role": "reviewer"})
        await expect(ws, "hook_before")
        await eventually(lambda: mailbox.messages, what="the mail, over STARTTLS")
        assert logins == [(b"mailer", b"pw-from-env")]
        await ws.close()
    finally:
        smtp.close()
        await smtp.wait_closed()


async def test_mail_goes_over_tls_from_the_first_byte(server: Server, tmp_path: Path) -> None:
    """``tls = "tls"`` (usually port 465): the connection is TLS before SMTP
    says anything, checked against ``ca_file``."""
    cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    mailbox = Mailbox()
    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(lambda: SMTP(mailbox), "127.0.0.1", 0, ssl=tls)
    try:
        client = await start(
            server, smtp.sockets[0].getsockname()[1], smtp__tls="tls", smtp__ca_file=str(cert)
        )
        sid, token = await mint(client, ["reviewer"])
        ws = await connect(client, sid, token)
        await create_task(client, agent="coder", operator={"role": "reviewer"})
        hb = await expect(ws, "hook_before")
        await eventually(lambda: mailbox.messages, what="the mail, over TLS")
        (message,) = mailbox.messages
        assert hb["req_id"] in parts(message)[0]
        await ws.close()
    finally:
        smtp.close()
        await smtp.wait_closed()
