"""End to end from the mailbox: a real SMTP server in this test's process
receives the notifications of a pending approval and of an ask with an
answer_schema; the test parses each mail, takes the link from its text and
its HTML part (they agree), follows it with a real HTTP client, and a person
decides in a real Chromium through the confirmation page.  The operator's
task goes on with the approval, the asking worker gets the answer, and the
audit trail and the task's events say who decided (the mail's recipient) and
how (``via: "link"``)."""

from __future__ import annotations

import asyncio

import aiohttp
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.conftest import Server
from tests.console.browser import control, severe_log_entries, until
from tests.console.test_console_links import answer_in_the_browser
from tests.notify.receivers import smtp_running
from tests.notify.test_delivered_links import (
    ANN,
    all_mailed,
    email_rule,
    mailed_link,
    opened,
    smtp_at,
)
from tests.operators.test_action_links import asked, decisions, reply_events
from tests.operators.test_requests_rest import ADMIN, BOOT, hooked_task, operator, wait_task
from tests.wsop import eventually, expect

REASON = "checked the diff"


def approve_in_the_browser(browser: WebDriver, url: str) -> str:
    """Open ``url``, give a reason, press Approve; the text of the page that follows."""
    severe_log_entries(browser)  # what an earlier test left
    browser.get(url)
    until(browser, lambda: "Approve this spawn?" in browser.find_element(By.TAG_NAME, "body").text)
    browser.find_element(By.NAME, "reason").send_keys(REASON)
    control(browser, "button", "Approve").click()

    def decided() -> str | None:
        body: str = browser.find_element(By.TAG_NAME, "body").text
        return body if "This link was used" in body else None

    text = until(browser, decided)
    assert severe_log_entries(browser) == []
    return text


async def test_a_mailed_approval_and_a_mailed_question_are_decided_in_chromium_by_their_links(
    server: Server, browser: WebDriver
) -> None:
    async with smtp_running() as (mailbox, port):
        client = await server(api_token=BOOT, notify=[email_rule(ANN)], **smtp_at(port))
        hook_ws = await operator(client)
        hook_task, hook = await hooked_task(client, hook_ws)
        ask_ws, ask_task, ask, asking = await asked(client, role="asker")
        assert ask["answer_schema"]
        wanted = {hook["req_id"], ask["req_id"]}
        await eventually(lambda: wanted <= all_mailed(mailbox), what="both mails")
        # Each link as the mail carries it, the same in its text and HTML parts.
        hook_url = mailed_link(mailbox, hook["req_id"])
        ask_url = mailed_link(mailbox, ask["req_id"])
        async with aiohttp.ClientSession() as http:  # what a mail client's click fetches
            assert hook_task in await opened(http, hook_url)
            assert "Which branch?" in await opened(http, ask_url)

        shown = await asyncio.to_thread(approve_in_the_browser, browser, hook_url)
        assert f"approved by email:{ANN}" in shown
        # The operator's task sees the approval: its request is withdrawn from
        # the socket, and the attempt goes on to its spawn.
        assert (await expect(hook_ws, "cancel"))["reason"] == "answered_elsewhere"
        spawn = await expect(hook_ws, "spawn")
        await hook_ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "ok"})
        assert (await wait_task(client, hook_task))["status"] == "passed"

        shown = await asyncio.to_thread(answer_in_the_browser, browser, ask_url)
        assert f"answered by email:{ANN}" in shown
        # The asking worker gets the answer, filled in from the page's form.
        answer = await asking
        assert answer["value"] == {"name": "release", "level": "high", "merge": True, "retries": 2}
        assert (await expect(ask_ws, "cancel"))["req_id"] == ask["req_id"]
        await asyncio.to_thread(browser.get, "about:blank")

        decided = await decisions(client, *wanted)
        assert [(e["req_id"], e["action"], e["principal"], e["reason"]) for e in decided] == [
            (hook["req_id"], "hook.approved", f"email:{ANN}", REASON),
            (ask["req_id"], "ask.answered", f"email:{ANN}", None),
        ]
        resp = await client.post(f"/v1/tasks/{ask_task['id']}/cancel", headers=ADMIN)
        assert resp.status == 200, await resp.text()  # its event stream ends
        assert [(r["req_id"], r["via"]) for r in await reply_events(client, hook_task)] == [
            (hook["req_id"], "link"),
            (spawn["req_id"], "socket"),
        ]
        assert [r["via"] for r in await reply_events(client, ask_task["id"])] == [
            "socket",  # the asker's own approval of its spawn
            "link",
        ]
        await hook_ws.close()
        await ask_ws.close()
