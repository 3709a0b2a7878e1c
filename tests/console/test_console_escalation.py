"""The console's task page tells an escalation in words (issue 24, part 3): a
request nobody at the first step answered shows up in the console's inbox at
the next one, and the timeline says where it went and why, in a real Chromium
against the daemon as a real process."""

from __future__ import annotations

from selenium.webdriver.remote.webdriver import WebDriver

from tests.console.browser import Daemon, control, open_task, until
from tests.console.test_console_browser import ROLE, join, pending_card


def test_the_timeline_says_where_an_escalated_request_went_and_why(
    page: WebDriver, daemon: Daemon
) -> None:
    join(page)
    # The first line holds the role but never connects: nobody answers there.
    daemon.call("POST", "/v1/operators", {"roles": ["first-line"]})
    chain = {"role": "first-line", "escalate": [{"after_s": 0.5, "role": ROLE}]}
    task = daemon.create_task(agent="coder", directive="escalate me", operator=chain)
    card = pending_card(page, task["id"], "Approve spawn?")
    open_task(page, task["id"])
    moved = f"approval moved from first-line to {ROLE} (no reply in 0.5 s)"
    timeline = page.find_element("id", "task-timeline")
    until(page, lambda: moved in [e.text for e in timeline.find_elements("css selector", ".what")])
    assert "escalate" in page.find_element("id", "task-summary").text  # the chain, shown
    control(card, "button", "Approve").click()
    until(page, lambda: "Ada (you) answered the approval" in timeline.text)
