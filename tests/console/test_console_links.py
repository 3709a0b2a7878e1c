"""An action link decided in a real Chromium: the person opens the link from
their mail, fills the ask's form drawn from its answer_schema, submits; the
asking worker gets the answer, and the link's page then says what was decided,
by whom.  The daemon runs in this test's loop on a real socket, so the test can
mint the link as the notifier would; the browser runs in a thread meanwhile."""

from __future__ import annotations

import asyncio

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.select import Select

from tests.conftest import Server
from tests.console.browser import control, severe_log_entries, until
from tests.operators.test_action_links import ANN, asked, link_for
from tests.operators.test_requests_rest import BOOT


def answer_in_the_browser(browser: WebDriver, url: str) -> str:
    """Open ``url``, answer its form, submit; the text of the page that follows."""
    severe_log_entries(browser)  # what an earlier test left
    browser.get(url)
    until(browser, lambda: "Which branch?" in browser.find_element(By.TAG_NAME, "body").text)
    control(browser, "textbox", "Branch name *").send_keys("release")
    Select(browser.find_element(By.NAME, "answer.level")).select_by_visible_text("high")
    browser.find_element(By.NAME, "answer.merge").click()
    browser.find_element(By.NAME, "answer.retries").send_keys("2")
    control(browser, "button", "Answer").click()

    def decided() -> str | None:
        body: str = browser.find_element(By.TAG_NAME, "body").text
        return body if "Answered" in body else None

    text = until(browser, decided)
    # The page's own stylesheet is allowed by the CSP; nothing was refused.
    assert severe_log_entries(browser) == []
    return text


async def test_a_person_answers_an_ask_through_the_links_page(
    server: Server, browser: WebDriver
) -> None:
    client = await server(api_token=BOOT)
    ws, _, ask, asking = await asked(client)
    link = await link_for(client, ask)

    shown = await asyncio.to_thread(answer_in_the_browser, browser, link.url)
    answer = await asking
    assert answer["value"] == {"name": "release", "level": "high", "merge": True, "retries": 2}
    assert f"answered by {ANN}" in shown
    await asyncio.to_thread(browser.get, "about:blank")
    await ws.close()
