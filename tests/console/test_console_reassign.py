"""The console's inbox cards carry a Reassign control (issue 24, part 4): a
person passes a request to another role with a note, the card leaves the
inbox, and the request waits at its new holder, in a real Chromium against
the daemon as a real process."""

from __future__ import annotations

from selenium.webdriver.remote.webdriver import WebDriver

from tests.console.browser import Daemon, control, until
from tests.console.test_console_browser import cards, join, pending_card, served_by_console


def test_reassign_on_a_card_passes_the_request_to_another_role_with_a_note(
    page: WebDriver, daemon: Daemon
) -> None:
    join(page)
    second = daemon.call("POST", "/v1/operators", {"roles": ["second-line"]})
    task = daemon.create_task(directive="not mine", **served_by_console())
    card = pending_card(page, task["id"], "Approve spawn?")
    req_id = card.get_attribute("data-req-id")

    control(card, "textbox", "Reassign to role").send_keys("second-line")
    control(card, "textbox", "Note for the next holder").send_keys("yours, Bo")
    control(card, "button", "Reassign").click()

    until(page, lambda: not cards(page, task["id"]))
    feed = page.find_element("id", "activity")
    until(page, lambda: "Withdrawn: reassigned to second-line" in feed.text)

    # The request waits at the second line's session, which is not connected yet
    # (it is issued there right after the cancel the console saw).
    def pending_there() -> list[str]:
        path = f"/v1/operators/{second['sid']}/pending"
        return [p["req_id"] for p in daemon.call("GET", path, bearer=second["token"])["pending"]]

    until(page, lambda: pending_there() == [req_id])

    def reassigned() -> list[tuple[str, str, str]]:
        entries = daemon.call("GET", "/v1/audit?action=request.reassigned")["entries"]
        return [(e["req_id"], e["outcome"].split(" -> ")[1], e["reason"]) for e in entries]

    until(page, lambda: reassigned() == [(req_id, "second-line", "yours, Bo")])


def test_a_refused_reassign_gives_the_card_its_controls_back_with_the_reason(
    page: WebDriver, daemon: Daemon
) -> None:
    join(page)
    task = daemon.create_task(directive="mine after all", **served_by_console())
    card = pending_card(page, task["id"], "Approve spawn?")
    # The console's own role already holds it: the server refuses, naming it.
    control(card, "textbox", "Reassign to role").send_keys("reviewer")
    control(card, "button", "Reassign").click()
    outcome = card.find_element("css selector", ".outcome")
    until(page, lambda: "Not reassigned" in outcome.text)
    assert "'reviewer' already holds" in outcome.text
    control(card, "button", "Approve").click()  # still the console's: its reply counts
    pending_card(page, task["id"], "Do the work")
