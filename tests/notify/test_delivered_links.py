"""Action links as they are delivered, not as they are minted: read out of a
mail a real SMTP server received (both of its parts) and out of a chat
message a receiver this test runs received (it stands in for the chat
service), then opened with a real HTTP client from outside the daemon.

Opening any of them any way decides nothing; a used one replayed and forged
variants of a delivered one are refused; a batched message carries a link per
request and recipient, each deciding its own request only."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime
from email.message import EmailMessage
from typing import Any

import aiohttp
import jwt
from aiohttp.test_utils import TestClient

from operator_server.appkeys import ACTION_LINKS
from operator_server.notify.links import Claims
from tests.conftest import Server
from tests.notify.receivers import (
    Mailbox,
    Receiver,
    button_urls,
    mail_parts,
    mailed_links,
    smtp_running,
)
from tests.notify.test_delivery import req_ids as chatted_req_ids
from tests.operators.test_action_links import (
    _forged,
    asked,
    check_of,
    decisions,
    pending_ids,
    reply_events,
)
from tests.operators.test_requests_rest import (
    ADMIN,
    BOOT,
    hooked_task,
    operator,
    replies_counted,
)
from tests.wsop import eventually, expect

ANN = "ann@example.org"
BOB = "bob@example.org"
KINDS = ["hook_before", "ask"]


def email_rule(*to: str, batch_s: float = 0) -> dict[str, Any]:
    return {"channel": "email", "to": list(to), "kinds": KINDS, "batch_s": batch_s}


def smtp_at(port: int) -> dict[str, Any]:
    return {
        "smtp__host": "127.0.0.1",
        "smtp__port": port,
        "smtp__from": "server@example.com",
        "smtp__tls": "none",
    }


def mailed_req_ids(message: EmailMessage) -> list[str]:
    plain, _ = mail_parts(message)
    return re.findall(r"Request: (\S+)", plain)


def all_mailed(mailbox: Mailbox) -> set[str]:
    return {req_id for message in mailbox.messages for req_id in mailed_req_ids(message)}


def mailed_link(mailbox: Mailbox, req_id: str, to: str = ANN) -> str:
    """The link for ``req_id`` in the mail ``to`` got."""
    for message in mailbox.messages:
        if message["To"] == to and req_id in mailed_req_ids(message):
            links = dict(zip(mailed_req_ids(message), mailed_links(message), strict=True))
            return links[req_id]
    raise AssertionError(f"no mail to {to} names {req_id}")


async def claims_of(client: TestClient[Any, Any], url: str) -> Claims:
    return await client.app[ACTION_LINKS].verify(url.rsplit("/", 1)[1])


async def opened(http: aiohttp.ClientSession, url: str, status: int = 200) -> str:
    async with http.get(url, headers={"Accept": "text/html"}) as resp:
        text = await resp.text()
        assert resp.status == status, text
        return text


async def posted(
    http: aiohttp.ClientSession, url: str, form: dict[str, str], status: int, says: str = ""
) -> None:
    async with http.post(
        url, data=form, headers={"Accept": "text/html"}, allow_redirects=False
    ) as resp:
        text = await resp.text()
        assert resp.status == status and says in text, (resp.status, text)


async def test_a_scanner_opening_every_delivered_link_any_way_decides_nothing(
    server: Server, aiohttp_server: Any
) -> None:
    """The mail scanner and the chat unfurler: every URL of both parts of every
    delivered mail, and every button of every chat message, fetched with GET
    and HEAD (twice, following redirects, as JSON too); nothing is decided."""
    receiver = Receiver()
    service = await aiohttp_server(receiver.app())
    chat = {"channel": "chat", "url": f"http://127.0.0.1:{service.port}/hook", "kinds": KINDS}
    async with smtp_running() as (mailbox, port):
        client = await server(
            api_token=BOOT, notify=[email_rule(ANN), {**chat, "batch_s": 0}], **smtp_at(port)
        )
        hook_ws = await operator(client)
        hook_task, hook = await hooked_task(client, hook_ws)
        ask_ws, ask_task, ask, asking = await asked(client, role="asker")
        wanted = {hook["req_id"], ask["req_id"]}
        await eventually(
            lambda: (
                wanted <= all_mailed(mailbox)
                and wanted <= {r for body in receiver.bodies for r in chatted_req_ids(body)}
            ),
            what="the mail and the chat message of both requests",
        )
        # What is asked is in the mail: the question, in both parts.
        (ask_mail,) = [m for m in mailbox.messages if ask["req_id"] in mailed_req_ids(m)]
        assert all("Which branch?" in part for part in mail_parts(ask_mail))
        mailed = [url for message in mailbox.messages for url in mailed_links(message)]
        buttons = [url for body in receiver.bodies for url in button_urls(body)]
        for url in mailed + buttons:
            claims = await claims_of(client, url)
            assert claims.recipient == (f"email:{ANN}" if url in mailed else None)
        pending_links = [
            u for u in mailed + buttons if (await claims_of(client, u)).req_id in wanted
        ]
        assert len(pending_links) == 4  # each request, by mail and in chat

        async with aiohttp.ClientSession() as scanner:
            for url in mailed + buttons:
                for _ in range(2):
                    # 200, or 409 for the asker's own approval, answered on its socket.
                    async with scanner.get(url, allow_redirects=True) as resp:
                        assert resp.status in (200, 409), await resp.text()
                    async with scanner.head(url, allow_redirects=True) as resp:
                        assert resp.status in (200, 409)
                    async with scanner.get(url, headers={"Accept": "application/json"}) as resp:
                        assert resp.status in (200, 409), await resp.text()
            for url in pending_links:  # a pending request's page offers its forms
                assert 'method="post"' in await opened(scanner, url)

        assert await pending_ids(client, "hook_before") == [hook["req_id"]]
        assert await pending_ids(client, "ask") == [ask["req_id"]]
        assert not asking.done()
        assert await decisions(client, *wanted) == []
        assert all(via != "link" for via, _ in await replies_counted(client))
        for task_id in (hook_task, ask_task["id"]):  # ended, so their event streams end
            resp = await client.post(f"/v1/tasks/{task_id}/cancel", headers=ADMIN)
            assert resp.status == 200, await resp.text()
        assert await reply_events(client, hook_task) == []
        assert [r["via"] for r in await reply_events(client, ask_task["id"])] == ["socket"]
        asking.cancel()
        await hook_ws.close()
        await ask_ws.close()


async def test_a_used_delivered_link_replayed_and_forged_variants_of_one_are_refused(
    server: Server,
) -> None:
    async with smtp_running() as (mailbox, port):
        client = await server(api_token=BOOT, notify=[email_rule(ANN)], **smtp_at(port))
        ws = await operator(client)
        _, first = await hooked_task(client, ws)
        _, second = await hooked_task(client, ws)
        wanted = {first["req_id"], second["req_id"]}
        await eventually(lambda: wanted <= all_mailed(mailbox), what="both mails")
        used, other = mailed_link(mailbox, first["req_id"]), mailed_link(mailbox, second["req_id"])
        async with aiohttp.ClientSession() as http:
            used_check = check_of(await opened(http, used))
            other_check = check_of(await opened(http, other))
            await posted(http, used, {"check": used_check, "action": "approve"}, 303)
            assert (await expect(ws, "cancel"))["req_id"] == first["req_id"]
            assert (await expect(ws, "spawn"))["task_id"] == first["task_id"]  # approved

            # Replayed, as it was and with the other action: refused.
            for action in ("approve", "reject"):
                await posted(http, used, {"check": used_check, "action": action}, 409, "link_used")
            assert "Approved" in await opened(http, used)

            # Forged from what was delivered: each refused, GET and POST alike.
            origin, token = other.rsplit("/", 1)
            claims = jwt.decode(token, options={"verify_signature": False})
            signature = token.rsplit(".", 1)[1]
            flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
            forged = {
                "the used link, pointed at the pending request": _forged(
                    used.rsplit("/", 1)[1], req=second["req_id"]
                ),
                "another action set": _forged(token, act=["answer", "decline"]),
                "a later expiry": _forged(token, exp=claims["exp"] + 86400),
                "another recipient": _forged(token, sub="email:mallory@example.org"),
                "signed with another key": jwt.encode(claims, b"k" * 32, algorithm="HS256"),
                "its signature altered": f"{token.rsplit('.', 1)[0]}.{flipped}",
            }
            for name, variant in forged.items():
                url = f"{origin}/{variant}"
                assert "link_forged" in await opened(http, url, 403), name
                form = {"check": other_check, "action": "approve"}
                await posted(http, url, form, 403, "link_forged")

            assert await pending_ids(client, "hook_before") == [second["req_id"]]
            decided = await decisions(client, *wanted)
            assert [(e["req_id"], e["principal"]) for e in decided] == [
                (first["req_id"], f"email:{ANN}")
            ]
            # The genuine delivered link is untouched by all of that.
            await posted(http, other, {"check": other_check, "action": "reject"}, 303)
            assert (await expect(ws, "cancel"))["req_id"] == second["req_id"]
        await ws.close()


async def test_a_batched_mail_carries_a_link_per_request_and_recipient_each_deciding_its_own(
    server: Server,
) -> None:
    async with smtp_running() as (mailbox, port):
        client = await server(
            api_token=BOOT, notify=[email_rule(ANN, BOB, batch_s=1.5)], **smtp_at(port)
        )
        ws = await operator(client)
        _, first = await hooked_task(client, ws)
        await eventually(lambda: len(mailbox.messages) == 2, what="the first mail to each")
        # Two more within batch_s: each recipient's next mail lists both.
        _, second = await hooked_task(client, ws)
        _, third = await hooked_task(client, ws)
        await eventually(lambda: len(mailbox.messages) == 4, within=10, what="the batch")
        batched = [second["req_id"], third["req_id"]]
        links: dict[str, list[str]] = {}
        for message in mailbox.messages[2:]:
            assert mailed_req_ids(message) == batched
            links[message["To"]] = mailed_links(message)
        assert sorted(links) == [ANN, BOB]
        for to, urls in links.items():
            found = [await claims_of(client, url) for url in urls]
            assert [(c.req_id, c.recipient) for c in found] == [
                (req_id, f"email:{to}") for req_id in batched
            ]
        assert len({url for urls in links.values() for url in urls}) == 4

        async with aiohttp.ClientSession() as http:
            ann_second, ann_third = links[ANN]
            bob_second, bob_third = links[BOB]
            check = check_of(await opened(http, ann_second))
            await posted(http, ann_second, {"check": check, "action": "approve"}, 303)
            assert (await expect(ws, "cancel"))["req_id"] == second["req_id"]
            assert (await expect(ws, "spawn"))["task_id"] == second["task_id"]  # approved
            assert await pending_ids(client, "hook_before") == [first["req_id"], third["req_id"]]
            # Bob's link for the same request says it was answered elsewhere ...
            assert "already answered elsewhere" in await opened(http, bob_second, 409)
            # ... and the links for the other request still work, Bob's first.
            assert 'method="post"' in await opened(http, ann_third)
            check = check_of(await opened(http, bob_third))
            form = {"check": check, "action": "reject", "reason": "not this one"}
            await posted(http, bob_third, form, 303)
            assert (await expect(ws, "cancel"))["req_id"] == third["req_id"]
            assert "already answered elsewhere" in await opened(http, ann_third, 409)

        decided = await decisions(client, first["req_id"], *batched)
        assert [(e["req_id"], e["action"], e["principal"]) for e in decided] == [
            (second["req_id"], "hook.approved", f"email:{ANN}"),
            (third["req_id"], "hook.rejected", f"email:{BOB}"),
        ]
        assert await pending_ids(client, "hook_before") == [first["req_id"]]
        await ws.close()


async def test_an_escalated_requests_old_link_says_it_moved_and_the_new_holders_link_decides(
    server: Server, aiohttp_server: Any
) -> None:
    receiver = Receiver()
    service = await aiohttp_server(receiver.app())
    url = f"http://127.0.0.1:{service.port}/hook"
    client = await server(api_token=BOOT, notify=[{"channel": "chat", "url": url, "batch_s": 0}])
    first = await operator(client, ["l1"])
    second = await operator(client, ["l2"])
    resp = await client.post(
        "/v1/tasks",
        json={
            "agent": "coder",
            "directive": "x",
            "operator": {"role": "l1", "escalate": [{"after_s": 0.3, "role": "l2"}]},
        },
        headers=ADMIN,
    )
    assert resp.status == 202, await resp.text()
    hook = await expect(first, "hook_before")
    assert (await expect(first, "cancel"))["req_id"] == hook["req_id"]  # escalated
    await expect(second, "hook_before")
    await eventually(lambda: len(receiver.bodies) == 2, what="the escalation's own message")
    old, new = (button_urls(body)[0] for body in receiver.bodies)
    async with aiohttp.ClientSession() as http:
        assert "moved on to another holder" in await opened(http, old, 409)
        check = check_of(await opened(http, new))
        await posted(http, old, {"check": check, "action": "approve"}, 409, "already_moved")
        await posted(http, new, {"check": check, "action": "approve"}, 303)
    assert (await expect(second, "cancel"))["req_id"] == hook["req_id"]
    [decided] = await decisions(client, hook["req_id"])
    assert (decided["action"], decided["principal"]) == ("hook.approved", "link")
    await first.close()
    await second.close()


async def test_a_delivered_link_expires_after_link_max_age_s_while_its_request_still_waits(
    server: Server,
) -> None:
    async with smtp_running() as (mailbox, port):
        client = await server(
            api_token=BOOT, notify=[email_rule(ANN)], link_max_age_s=0.5, **smtp_at(port)
        )
        ws = await operator(client)
        _, hook = await hooked_task(client, ws)
        await eventually(lambda: mailbox.messages, what="the mail")
        url = mailed_link(mailbox, hook["req_id"])
        claims = await claims_of(client, url)
        resp = await client.get(f"/v1/requests/{hook['req_id']}", headers=ADMIN)
        deadline = datetime.fromisoformat((await resp.json())["deadline_at"]).timestamp()
        assert claims.expires_at < deadline  # the configured maximum comes first
        async with aiohttp.ClientSession() as http:
            check = check_of(await opened(http, url))
            # Until the instant the link names (a hair past it: the loop's timer
            # may wake a clock tick early).
            await asyncio.sleep(max(0.0, claims.expires_at - time.time()) + 0.02)
            assert "this link expired at" in await opened(http, url, 410)
            await posted(http, url, {"check": check, "action": "approve"}, 410, "link_expired")
        assert await pending_ids(client, "hook_before") == [hook["req_id"]]
        assert await decisions(client, hook["req_id"]) == []
        await ws.close()
