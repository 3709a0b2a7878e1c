"""The console reaches a person whose tab is hidden (issue 25, part 4): new
requests count in the page title and raise a browser notification, which is
asked for only by a click on "Notify me", in a real Chromium against the
daemon as a real process.

Headless Chromium shows no permission prompt (it denies one at once), so a
test stands in for the person who would click "Allow" by granting the
permission through the DevTools protocol.  What the page does with the
Notification API is observed by a recorder the test installs before any of
the page's scripts run (``Page.addScriptToEvaluateOnNewDocument``): it counts
``Notification.requestPermission`` calls and lists each notification made
(and whether it was closed), then hands on to the real API.  A minimised
window is a hidden document (``document.visibilityState``), checked as such.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from tests.console.browser import Daemon, control, severe_log_entries, until
from tests.console.test_console_browser import ROLE, join, pending_card, served_by_console

TITLE = "operator-server console"

RECORDER = """
if (window.Notification) {
  const Real = window.Notification;
  const request = Real.requestPermission.bind(Real);
  window.__asked = 0;
  window.__notes = [];
  window.__made = [];
  class Recorded extends Real {
    constructor(title, options = {}) {
      super(title, options);
      this.__entry = { title, body: options.body, tag: options.tag, closed: false };
      window.__notes.push(this.__entry);
      window.__made.push(this);
    }
    close() {
      this.__entry.closed = true;
      super.close();
    }
  }
  Recorded.requestPermission = (...args) => {
    window.__asked += 1;
    return request(...args);
  };
  window.Notification = Recorded;
}
"""


@pytest.fixture
def watched(browser: WebDriver, daemon: Daemon) -> Iterator[WebDriver]:
    """The console with the recorder in place from its first script on; no
    browser error afterwards."""
    added = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORDER})
    try:
        severe_log_entries(browser)
        browser.get(daemon.base + "/console/")
        yield browser
        errors = severe_log_entries(browser)
        browser.get("about:blank")
        assert errors == [], f"the browser console logged errors: {errors}"
    finally:
        browser.execute_cdp_cmd(
            "Page.removeScriptToEvaluateOnNewDocument", {"identifier": added["identifier"]}
        )
        browser.execute_cdp_cmd("Browser.resetPermissions", {})
        browser.set_window_rect(width=1440, height=1000)


def asked(page: WebDriver) -> int:
    """How often this document called Notification.requestPermission."""
    count: int = page.execute_script("return window.__asked")
    return count


def notes(page: WebDriver) -> list[dict[str, Any]]:
    made: list[dict[str, Any]] = page.execute_script("return window.__notes")
    return made


def permission(page: WebDriver) -> str:
    state: str = page.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "navigator.permissions.query({name: 'notifications'}).then((s) => done(s.state));"
    )
    return state


def notify_state(page: WebDriver) -> tuple[str, str | None]:
    """What the bar says of notifications, and whether "Notify me" is pressed."""
    return (
        page.find_element("id", "notify-state").text,
        control(page, "button", "Notify me").get_attribute("aria-pressed"),
    )


def allow_notifications(page: WebDriver, daemon: Daemon) -> None:
    """The person's "Allow" on the prompt headless Chromium does not show."""
    page.execute_cdp_cmd(
        "Browser.grantPermissions", {"origin": daemon.base, "permissions": ["notifications"]}
    )


def visibility(page: WebDriver) -> str:
    state: str = page.execute_script("return document.visibilityState")
    return state


def test_notifications_are_asked_for_on_a_click_never_on_load_and_the_choice_survives_a_reload(
    watched: WebDriver, daemon: Daemon
) -> None:
    page = watched
    join(page)
    task = daemon.create_task(directive="nothing asks yet", **served_by_console())
    pending_card(page, task["id"], "Approve spawn?")
    # Loaded, signed in, a request shown: the browser was never asked (headless
    # Chromium denies a prompt at once, so an ask would also leave "denied").
    assert asked(page) == 0
    assert permission(page) == "prompt"
    assert notify_state(page) == ("notifications off", "false")

    allow_notifications(page, daemon)
    control(page, "button", "Notify me").click()
    until(page, lambda: notify_state(page) == ("notifications on", "true"))
    assert asked(page) == 1

    page.refresh()
    until(page, lambda: page.find_element("id", "conn").text == "connected")
    assert notify_state(page) == ("notifications on", "true")  # remembered, not asked again
    assert asked(page) == 0

    control(page, "button", "Notify me").click()  # off again: nothing to ask
    until(page, lambda: notify_state(page) == ("notifications off", "false"))
    page.refresh()
    until(page, lambda: page.find_element("id", "conn").text == "connected")
    assert notify_state(page) == ("notifications off", "false")
    assert asked(page) == 0


def test_notify_me_says_when_the_browser_blocks_notifications_and_follows_the_site_settings(
    watched: WebDriver, daemon: Daemon
) -> None:
    page = watched
    control(page, "button", "Notify me").click()  # headless Chromium denies the prompt
    blocked = "notifications: blocked by the browser (allow them in the site settings)"
    until(page, lambda: page.find_element("id", "notify-state").text == blocked)
    assert asked(page) == 1
    assert permission(page) == "denied"
    assert not control(page, "button", "Notify me").is_enabled()
    # Allowed later in the site settings: the page follows without a reload.
    allow_notifications(page, daemon)
    until(page, lambda: notify_state(page) == ("notifications off", "false"))
    assert control(page, "button", "Notify me").is_enabled()


def test_a_hidden_tab_counts_new_requests_in_its_title_and_notifies_each_until_shown_again(
    watched: WebDriver, daemon: Daemon
) -> None:
    page = watched
    join(page)
    allow_notifications(page, daemon)
    control(page, "button", "Notify me").click()
    until(page, lambda: notify_state(page) == ("notifications on", "true"))
    # A request that arrives while the person looks is neither counted nor announced.
    seen = daemon.create_task(directive="arrived in view", **served_by_console())
    pending_card(page, seen["id"], "Approve spawn?")
    assert page.title == TITLE

    page.minimize_window()
    assert visibility(page) == "hidden"
    first = daemon.create_task(directive="deploy the docs", **served_by_console())
    until(page, lambda: page.title == f"(1) {TITLE}")
    second = daemon.create_task(directive={"write": "a haiku"}, **served_by_console())
    until(page, lambda: page.title == f"(2) {TITLE}")
    until(page, lambda: len(notes(page)) == 2)
    first_req, second_req = (
        pending_card(page, t["id"], "Approve spawn?").get_attribute("data-req-id")
        for t in (first, second)
    )
    tail = lambda t: t["id"][-8:]  # noqa: E731 - the task id as the console shortens it
    assert notes(page) == [
        {
            "title": f"Approve spawn? · {ROLE}",
            "body": f"coder on t-…{tail(first)}: deploy the docs",
            "tag": first_req,
            "closed": False,
        },
        {
            "title": f"Approve spawn? · {ROLE}",
            "body": f'coder on t-…{tail(second)}: {{"write":"a haiku"}}',
            "tag": second_req,
            "closed": False,
        },
    ]

    # Withdrawn while hidden: it waits no longer, so it leaves the count and
    # its notification closes.
    daemon.call("POST", f"/v1/tasks/{second['id']}/cancel", {"reason": "not needed"})
    until(page, lambda: page.title == f"(1) {TITLE}")
    assert [n["closed"] for n in notes(page)] == [False, True]

    page.set_window_rect(width=1440, height=1000)
    until(page, lambda: visibility(page) == "visible")
    until(page, lambda: page.title == TITLE)
    assert [n["closed"] for n in notes(page)] == [True, True]
    assert asked(page) == 1


def test_requests_replayed_to_a_hidden_tab_are_not_announced_again(
    watched: WebDriver, daemon: Daemon
) -> None:
    page = watched
    join(page)
    allow_notifications(page, daemon)
    control(page, "button", "Notify me").click()
    until(page, lambda: notify_state(page) == ("notifications on", "true"))
    old = daemon.create_task(directive="shown before", **served_by_console())
    pending_card(page, old["id"], "Approve spawn?")

    page.minimize_window()
    page.refresh()  # the server replays what is pending to the reloaded page
    assert visibility(page) == "hidden"
    until(page, lambda: page.find_element("id", "conn").text == "connected")
    pending_card(page, old["id"], "Approve spawn?")
    new = daemon.create_task(directive="new while away", **served_by_console())
    until(page, lambda: len(notes(page)) == 1)
    assert page.title == f"(1) {TITLE}"
    assert [n["body"] for n in notes(page)] == [f"coder on t-…{new['id'][-8:]}: new while away"]

    # A click on it is answered (headless Chromium shows no window to bring
    # forward, so what is seen here is that the notification goes).
    page.execute_script("window.__made[0].dispatchEvent(new Event('click'))")
    assert [n["closed"] for n in notes(page)] == [True]
