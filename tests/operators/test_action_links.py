"""Action links against a real daemon: a real operator socket holds the
requests, real HTTP opens and posts the links.  Opening decides nothing, a
link decides once, and every forged, expired, stale or malformed use is
refused with a page saying why, leaving the request as it was."""

from __future__ import annotations

import asyncio
import base64
import html
import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import ClientResponse, ClientWebSocketResponse
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from operator_server.appkeys import ACTION_LINKS
from operator_server.config import load_settings
from operator_server.notify.links import ActionLinks, Link
from operator_server.operators.link_pages import Shown, decided_page, refused_page, request_page
from operator_server.store import SQLiteStore
from tests.conftest import Server
from tests.http.sse import read_all
from tests.http.test_worker_ask import FORM, post_ask
from tests.operators.test_requests_rest import (
    ADMIN,
    BOOT,
    audit,
    hooked_task,
    mint,
    operator,
    post_reply,
    replies_counted,
    wait_task,
)
from tests.wsop import connect, expect

ANN = "email:ann@example.org"


async def link_for(
    client: TestClient[Any, Any],
    frame: dict[str, Any],
    recipient: str | None = ANN,
    due_at: float | None = None,
) -> Link:
    links: ActionLinks = client.server.app[ACTION_LINKS]
    return await links.mint(
        req_id=frame["req_id"], kind=frame["type"], recipient=recipient, due_at=due_at
    )


def path_of(link: Link) -> str:
    return link.url[link.url.index("/v1/links/") :]


async def page(client: TestClient[Any, Any], path: str, status: int = 200) -> str:
    """The page at ``path``, its text unescaped."""
    resp = await client.get(path, headers={"Accept": "text/html"})
    text = await said(resp)
    assert resp.status == status, text
    assert resp.content_type == "text/html"
    return text


async def said(resp: ClientResponse) -> str:
    return html.unescape(await resp.text())


def check_of(html: str) -> str:
    found = re.search(r'name="check" value="([0-9a-f]+)"', html)
    assert found is not None, html
    return found.group(1)


async def post_form(
    client: TestClient[Any, Any], path: str, form: dict[str, str] | list[tuple[str, str]]
) -> ClientResponse:
    return await client.post(
        path, data=form, headers={"Accept": "text/html"}, allow_redirects=False
    )


async def pending_ids(client: TestClient[Any, Any], kind: str | None = None) -> list[str]:
    """The pending requests (of ``kind``), oldest first."""
    resp = await client.get("/v1/requests", headers=ADMIN)
    assert resp.status == 200, await resp.text()
    return [r["req_id"] for r in (await resp.json())["requests"] if kind in (None, r["type"])]


async def decisions(client: TestClient[Any, Any], *req_ids: str) -> list[dict[str, Any]]:
    """Every audit row that settles one of ``req_ids``."""
    return [
        e
        for e in await audit(client)
        if e["req_id"] in req_ids
        and "." in e["action"]
        and e["action"].split(".")[0] in ("hook", "ask", "spawn", "escalation")
    ]


async def reply_events(client: TestClient[Any, Any], task_id: str) -> list[dict[str, Any]]:
    events = await read_all(await client.get(f"/v1/tasks/{task_id}/events", headers=ADMIN))
    return [e.data for e in events if e.type == "reply"]


async def asked(
    client: TestClient[Any, Any], schema: dict[str, Any] | None = FORM, role: str = "main"
) -> tuple[ClientWebSocketResponse, dict[str, Any], dict[str, Any], asyncio.Task[Any]]:
    """A worker's ask pending on a seated operator: (socket, task, ask frame, the asking call)."""
    ws = await operator(client, [role])
    task_id, hook = await hooked_task(client, ws, role)
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    spawn = await expect(ws, "spawn")
    task = {"id": task_id}
    extra = {} if schema is None else {"answer_schema": schema}
    asking = asyncio.create_task(
        post_ask(client, spawn, 200, question="Which branch?", timeout_s=10, **extra)
    )
    return ws, task, await expect(ws, "ask"), asking


async def test_opening_every_link_any_way_decides_nothing(server: Server) -> None:
    """The mail scanner: it GETs every link, HEADs it, follows redirects, asks
    for JSON; the requests stay pending, with no reply, no audit row, no count."""
    client = await server(api_token=BOOT)
    hook_ws = await operator(client)
    hook_task, hook = await hooked_task(client, hook_ws)
    ask_ws, ask_task, ask, asking = await asked(client, role="asker")
    links = [await link_for(client, hook), await link_for(client, ask, recipient=None)]
    assert [link.actions for link in links] == [("approve", "reject"), ("answer", "decline")]

    for link in links:
        for _ in range(2):
            resp = await client.get(path_of(link), allow_redirects=True)
            assert resp.status == 200 and resp.content_type == "text/html"
            assert "Content-Security-Policy" in resp.headers
            assert resp.headers["Referrer-Policy"] == "no-referrer"
            head = await client.head(path_of(link), allow_redirects=True)
            assert head.status == 200
        json_page = await client.get(path_of(link), headers={"Accept": "application/json"})
        assert json_page.status == 200
    hook_page = await page(client, path_of(links[0]))
    assert "Approve" in hook_page and "Reject" in hook_page and hook_task in hook_page
    ask_page = await page(client, path_of(links[1]))
    assert "Which branch?" in ask_page and 'name="answer.name"' in ask_page
    assert '<option value="high">' in ask_page and 'name="answer.merge"' in ask_page

    assert await pending_ids(client, "hook_before") == [hook["req_id"]]
    assert await pending_ids(client, "ask") == [ask["req_id"]]
    assert await decisions(client, hook["req_id"], ask["req_id"]) == []
    assert await replies_counted(client) == {("socket", "hook_ack"): 1.0}  # the spawn's own
    for task_id in (hook_task, ask_task["id"]):  # ended, so their event streams end
        resp = await client.post(f"/v1/tasks/{task_id}/cancel", headers=ADMIN)
        assert resp.status == 200, await resp.text()
    assert await reply_events(client, hook_task) == []
    assert [r["via"] for r in await reply_events(client, ask_task["id"])] == ["socket"]
    asking.cancel()
    await hook_ws.close()
    await ask_ws.close()


async def test_a_rejection_through_the_page_is_attributed_audited_and_the_link_is_spent(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    ws = await operator(client)
    task_id, hook = await hooked_task(client, ws)
    link = await link_for(client, hook)
    check = check_of(await page(client, path_of(link)))

    form = {"check": check, "action": "reject", "reason": "not on a Friday"}
    resp = await post_form(client, path_of(link), form)
    assert resp.status == 303 and resp.headers["Location"] == path_of(link)
    assert await expect(ws, "cancel") == {
        "type": "cancel",
        "req_id": hook["req_id"],
        "reason": "answered_elsewhere",
    }
    task = await wait_task(client, task_id)
    assert task["status"] == "failed" and "not on a Friday" in task["error"]["message"]
    shown = await page(client, path_of(link))
    assert "Rejected" in shown and ANN in shown

    # Replayed: refused, and nothing more is decided.
    again = await post_form(client, path_of(link), {**form, "action": "approve"})
    assert again.status == 409 and "link_used" in await said(again)
    assert [
        (e["action"], e["principal"], e["reason"]) for e in await decisions(client, hook["req_id"])
    ] == [("hook.rejected", ANN, "not on a Friday")]
    assert await replies_counted(client) == {("link", "hook_ack"): 1.0}
    assert [(r["req_id"], r["via"]) for r in await reply_events(client, task_id)] == [
        (hook["req_id"], "link")
    ]
    await ws.close()


async def test_an_answer_through_the_form_reaches_the_asking_worker(server: Server) -> None:
    client = await server(api_token=BOOT)
    ws, _, ask, asking = await asked(client)
    link = await link_for(client, ask, recipient=None)
    check = check_of(await page(client, path_of(link)))
    form = {
        "check": check,
        "action": "answer",
        "answer.name": "release",
        "answer.level": "high",
        "answer.merge": "true",
        "answer.retries": "3",
    }
    assert (await post_form(client, path_of(link), form)).status == 303
    answer = {"name": "release", "level": "high", "merge": True, "retries": 3}
    assert (await asking)["value"] == answer
    assert await expect(ws, "cancel") == {
        "type": "cancel",
        "req_id": ask["req_id"],
        "reason": "answered_elsewhere",
    }
    [decided] = await decisions(client, ask["req_id"])
    assert (decided["action"], decided["principal"]) == ("ask.answered", "link")
    assert "by <strong>link</strong>" in await page(client, path_of(link))
    await ws.close()


def _forged(token: str, **claims: Any) -> str:
    """``token`` with its claims changed and its signature kept."""
    head, body, signature = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload.update(claims)
    encoded = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"{head}.{encoded}.{signature}"


async def test_forged_and_expired_links_are_refused_and_decide_nothing(server: Server) -> None:
    client = await server(api_token=BOOT)
    ws = await operator(client)
    _, hook = await hooked_task(client, ws)
    _, other = await hooked_task(client, ws)
    link = await link_for(client, hook)
    token = path_of(link).rsplit("/", 1)[1]
    check = check_of(await page(client, path_of(link)))
    claims = jwt.decode(token, options={"verify_signature": False})
    expired = await link_for(client, hook, due_at=time.time() - 1)

    refused = {
        "changed request": (_forged(token, req=other["req_id"]), 403, "link_forged"),
        "changed actions": (_forged(token, act=["answer", "decline"]), 403, "link_forged"),
        "changed expiry": (_forged(token, exp=claims["exp"] + 86400), 403, "link_forged"),
        "wrong key": (jwt.encode(claims, b"k" * 32, algorithm="HS256"), 403, "link_forged"),
        "no signature": (jwt.encode(claims, None, algorithm="none"), 403, "link_forged"),
        "expired": (path_of(expired).rsplit("/", 1)[1], 410, "link_expired"),
        "garbage": ("not-a-link", 404, "link_not_found"),
        "signature cut off": (token.rsplit(".", 1)[0], 404, "link_not_found"),
    }
    for name, (forged, status, code) in refused.items():
        resp = await client.get(f"/v1/links/{forged}", headers={"Accept": "text/html"})
        assert (resp.status, code in await said(resp)) == (status, True), name
        resp = await post_form(client, f"/v1/links/{forged}", {"check": check, "action": "approve"})
        assert (resp.status, code in await said(resp)) == (status, True), name
        as_json = await client.get(f"/v1/links/{forged}", headers={"Accept": "application/json"})
        assert (as_json.status, (await as_json.json())["error"]["code"]) == (status, code), name

    assert await pending_ids(client) == [hook["req_id"], other["req_id"]]
    assert await decisions(client, hook["req_id"], other["req_id"]) == []
    # The genuine link still works after all that.
    resp = await post_form(client, path_of(link), {"check": check, "action": "approve"})
    assert resp.status == 303
    await expect(ws, "cancel")
    assert [e["action"] for e in await decisions(client, hook["req_id"])] == ["hook.approved"]
    await ws.close()


async def test_a_link_whose_request_was_answered_elsewhere_or_moved_says_so(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    ws = await operator(client)
    _, answered = await hooked_task(client, ws)
    _, moved = await hooked_task(client, ws)
    answered_link, moved_link = await link_for(client, answered), await link_for(client, moved)
    answered_check = check_of(await page(client, path_of(answered_link)))
    moved_check = check_of(await page(client, path_of(moved_link)))

    status, _ = await post_reply(client, answered["req_id"], {"type": "hook_ack", "ok": True})
    assert status == 200
    other_sid, other_token = await mint(client, ["backup"])
    other_ws = await connect(client, other_sid, other_token)
    resp = await client.post(
        f"/v1/requests/{moved['req_id']}/reassign", json={"role": "backup"}, headers=ADMIN
    )
    assert resp.status == 200, await resp.text()
    await expect(other_ws, "hook_before")

    shown = await page(client, path_of(answered_link), 409)
    assert "already answered elsewhere" in shown and "by bootstrap" in shown
    assert "moved on to another holder" in await page(client, path_of(moved_link), 409)
    for link, check in ((answered_link, answered_check), (moved_link, moved_check)):
        resp = await post_form(client, path_of(link), {"check": check, "action": "reject"})
        assert resp.status == 409
    # Nothing but the REST reply decided anything; the moved request still waits.
    decided = await decisions(client, answered["req_id"], moved["req_id"])
    assert [(e["action"], e["principal"]) for e in decided] == [("hook.approved", "bootstrap")]
    assert await pending_ids(client, "hook_before") == [moved["req_id"]]
    await ws.close()
    await other_ws.close()


async def test_a_link_expires_with_its_requests_deadline(server: Server) -> None:
    client = await server(api_token=BOOT, hook_timeout_s=1)
    ws = await operator(client)
    task_id, hook = await hooked_task(client, ws)
    resp = await client.get(f"/v1/requests/{hook['req_id']}", headers=ADMIN)
    deadline = datetime.fromisoformat((await resp.json())["deadline_at"]).timestamp()
    link = await link_for(client, hook, due_at=deadline)
    assert link.expires_at == deadline
    check = check_of(await page(client, path_of(link)))
    # The deadline fails the task (fail closed); by then the link is spent too.
    assert (await wait_task(client, task_id))["error"]["code"] == "operator_timeout"
    assert "this link expired at" in await page(client, path_of(link), 410)
    late = await post_form(client, path_of(link), {"check": check, "action": "approve"})
    assert late.status == 410
    assert await decisions(client, hook["req_id"]) == []
    await ws.close()


@pytest.mark.parametrize(
    ("form", "code", "named"),
    [
        ({"action": "approve"}, "bad_request", "check: missing"),
        ({"check": "0" * 64, "action": "approve"}, "forbidden", "check does not match"),
        ({"action": "halt"}, "bad_request", "'halt' is not one this link offers"),
        ({"action": "approve", "mood": "x"}, "bad_request", "mood: not a field"),
        ([("action", "approve"), ("action", "reject")], "bad_request", "action: given 2 times"),
        ({"action": "reject", "reason": "x" * 2001}, "bad_request", "reason: at most 2000"),
    ],
)
async def test_a_malformed_hook_form_is_refused_naming_the_field_and_the_link_still_works(
    server: Server, form: dict[str, str] | list[tuple[str, str]], code: str, named: str
) -> None:
    client = await server(api_token=BOOT)
    ws = await operator(client)
    _, hook = await hooked_task(client, ws)
    link = await link_for(client, hook)
    check = check_of(await page(client, path_of(link)))
    fields = list(form.items()) if isinstance(form, dict) else form
    if code != "forbidden" and "check: missing" not in named:
        fields.append(("check", check))
    resp = await post_form(client, path_of(link), fields)
    text = await said(resp)
    assert resp.status == (403 if code == "forbidden" else 400) and named in text, text
    assert code in text
    assert await decisions(client, hook["req_id"]) == []
    assert await pending_ids(client) == [hook["req_id"]]
    ok = await post_form(client, path_of(link), {"check": check, "action": "approve"})
    assert ok.status == 303
    await ws.close()


async def test_a_malformed_answer_is_refused_naming_the_field_and_the_ask_stays_pending(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    ws, _, ask, asking = await asked(client)
    link = await link_for(client, ask)
    check = check_of(await page(client, path_of(link)))
    base = {"check": check, "action": "answer", "answer.name": "x", "answer.merge": "true"}
    refused = [
        ({**base, "answer.retries": "three"}, "answer.retries: 'three' is not a number"),
        ({**base, "answer.retries": "1.5"}, "answer.retries: '1.5' is not a whole number"),
        ({**base, "answer.retries": "-1"}, "answer.retries"),
        ({**base, "answer.level": "medium"}, "answer.level"),
        ({**base, "answer.merge": "yes"}, "answer.merge: a checkbox"),
        ({k: v for k, v in base.items() if k != "answer.name"}, "'name' is required"),
        ({**base, "reason": "x"}, "reason: not a field of the answer form"),
    ]
    for form, named in refused:
        resp = await post_form(client, path_of(link), form)
        text = await said(resp)
        assert resp.status == 400 and named in text, (form, text)
    as_json = await client.post(path_of(link), json={"action": "answer"})
    assert as_json.status == 400
    assert await decisions(client, ask["req_id"]) == []
    assert await pending_ids(client, "ask") == [ask["req_id"]]
    assert not asking.done()
    assert (await post_form(client, path_of(link), base)).status == 303
    assert (await asking)["value"] == {"name": "x", "merge": True}
    await ws.close()


async def test_an_ask_without_a_form_takes_its_answer_as_json(server: Server) -> None:
    client = await server(api_token=BOOT)
    ws, _, ask, asking = await asked(client, schema=None)
    link = await link_for(client, ask)
    check = check_of(await page(client, path_of(link)))
    bad = await post_form(
        client, path_of(link), {"check": check, "action": "answer", "answer": "{"}
    )
    assert bad.status == 400 and "answer: not JSON" in await said(bad)
    form = {"check": check, "action": "answer", "answer": '"main"'}
    assert (await post_form(client, path_of(link), form)).status == 303
    assert (await asking)["value"] == "main"
    await ws.close()


async def test_the_signing_key_outlives_the_process_without_a_secret(tmp_path: Path) -> None:
    """One daemon with no secret: the key is kept in its store, so a link sent
    before a restart still verifies after it; one from another daemon does not."""
    settings = load_settings(env={}, overrides={"store.path": str(tmp_path / "a.sqlite")})
    assert settings.secret == ""

    async def nowhere(req_id: str) -> None:
        return None

    async def minted_then_verified(paths: list[str]) -> list[str]:
        tokens: list[str] = []
        for path in paths:
            store = SQLiteStore(path)
            await store.open()
            try:
                links = ActionLinks(settings, store, nowhere, lambda: "http://x")
                if not tokens:
                    link = await links.mint(req_id="r", kind="ask", recipient=None, due_at=None)
                    tokens.append(link.url.rsplit("/", 1)[1])
                else:
                    tokens.append((await links.verify(tokens[0])).req_id)
            finally:
                await store.close()
        return tokens

    first = str(tmp_path / "a.sqlite")
    assert (await minted_then_verified([first, first]))[1] == "r"
    with pytest.raises(Exception, match="not signed by this server"):
        await minted_then_verified([first, str(tmp_path / "b.sqlite")])


async def test_the_access_log_never_holds_a_links_token(server: Server) -> None:
    client = await server(api_token=BOOT, access_log=True)
    ws = await operator(client)
    _, hook = await hooked_task(client, ws)
    link = await link_for(client, hook)
    token = path_of(link).rsplit("/", 1)[1]
    with capture_logs() as logs:
        check = check_of(await page(client, path_of(link)))
        await post_form(client, path_of(link), {"check": check, "action": "approve"})
    lines = [e for e in logs if e["event"] == "http request"]
    assert [(e["method"], e["path"]) for e in lines] == [
        ("GET", "/v1/links/{token}"),
        ("POST", "/v1/links/{token}"),
    ]
    assert token not in repr(logs)
    await ws.close()


async def test_a_form_in_a_charset_nobody_knows_is_refused_and_its_token_never_logged(
    server: Server,
) -> None:
    """aiohttp reads an unknown charset as a LookupError: a 400 naming it, not
    a 500 whose log line would carry the path, and so the link's token."""
    client = await server(api_token=BOOT)
    ws = await operator(client)
    _, hook = await hooked_task(client, ws)
    link = await link_for(client, hook)
    token = path_of(link).rsplit("/", 1)[1]
    check = check_of(await page(client, path_of(link)))
    with capture_logs() as logs:
        resp = await client.post(
            path_of(link),
            data=f"check={check}&action=approve".encode(),
            headers={
                "Content-Type": "application/x-www-form-urlencoded; charset=nosuch",
                "Accept": "text/html",
            },
            allow_redirects=False,
        )
    text = await said(resp)
    assert resp.status == 400 and "the form could not be read" in text, text
    assert token not in repr(logs)
    assert await pending_ids(client) == [hook["req_id"]]
    await ws.close()


async def test_a_spawns_link_only_halts_and_never_shows_its_credentials(server: Server) -> None:
    client = await server(api_token=BOOT)
    ws = await operator(client)
    task_id, hook = await hooked_task(client, ws)
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    spawn = await expect(ws, "spawn")
    link = await link_for(client, spawn)
    assert link.actions == ("halt",)
    shown = await page(client, path_of(link))
    assert "Halt the attempt" in shown and "Approve" not in shown
    assert spawn["capability_token"] not in shown and spawn["worker_handle"] not in shown
    form = {"check": check_of(shown), "action": "halt", "reason": "wrong repository"}
    assert (await post_form(client, path_of(link), form)).status == 303
    await wait_task(client, task_id)
    [decided] = await decisions(client, spawn["req_id"])
    assert (decided["action"], decided["principal"], decided["reason"]) == (
        "spawn.halted",
        ANN,
        "wrong repository",
    )
    await ws.close()


def test_every_value_a_page_shows_is_escaped() -> None:
    """Questions, directives, ids, names and answer forms come from agents and
    operators: none of them can put markup on the page."""
    evil = '<script>alert(1)</script>"'
    schema = {
        "type": "object",
        "description": evil,
        "properties": {
            evil: {"type": "string", "title": evil, "description": evil, "enum": [evil]},
            "n": {"type": "number", "default": 1, "title": evil},
        },
    }
    shown = Shown("ask", evil, evil, evil, None, {"q": evil}, evil, schema, None, 1e9)
    pages = [
        request_page(shown, ("answer", "decline"), evil),
        decided_page(evil, evil, 1e9, evil),
        refused_page(400, evil, evil),
    ]
    for text in pages:
        assert "<script>" not in text and "&lt;script&gt;" in text
