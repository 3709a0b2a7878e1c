"""The console reads at a glance (issue 22, part 4): what a person sees, in a
real Chromium against the daemon as a real process.

The inbox holds only what waits; ids show short and copy whole; the timeline
and attempts name people; forms make a person choose; sign-in says which way
is which; a refused API key is said in the console's own terms.
"""

from __future__ import annotations

from typing import Any

from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from tests.console.browser import (
    Daemon,
    control,
    has_control,
    open_task,
    own_sid,
    severe_log_entries,
    start_daemon,
    until,
)
from tests.console.test_console_browser import (
    ROLE,
    join,
    nested_ask,
    pending_card,
    served_by_console,
    spawn_handle,
)


def inbox_cards(page: WebDriver) -> list[dict[str, Any]]:
    """Every card the inbox shows (nested ones included), read in one go."""
    found: list[dict[str, Any]] = page.execute_script(
        "return [...document.querySelectorAll('#inbox li.card')].map((c) => ({"
        " task: c.dataset.taskId, title: c.querySelector('h3').textContent, text: c.innerText}));"
    )
    return found


def inbox_count(page: WebDriver) -> str:
    text: str = page.find_element("id", "inbox-count").text
    return text


def test_a_decided_card_leaves_the_inbox_for_activity_and_the_count_is_the_cards_shown(
    page: WebDriver, daemon: Daemon
) -> None:
    join(page)
    first = daemon.create_task(directive="first", **served_by_console())
    second = daemon.create_task(directive="second", **served_by_console())
    pending_card(page, second["id"], "Approve spawn?")
    control(pending_card(page, first["id"], "Approve spawn?"), "button", "Approve").click()

    # What was decided is gone from the inbox; what waits stays.
    until(
        page,
        lambda: (
            [c["title"] for c in inbox_cards(page) if c["task"] == first["id"]] == ["Do the work"]
        ),
    )
    activity = page.find_element("id", "activity")
    until(page, lambda: "Approved" in activity.text)
    noted = activity.find_element("css selector", f'li[data-task-id="{first["id"]}"]')
    assert "Approved (approve spawn?)" in noted.text
    shown = inbox_cards(page)
    assert not [c for c in shown if "Approved" in c["text"]]
    assert inbox_count(page) == f"({len(shown)})" == "(2)"

    spawn = pending_card(page, first["id"], "Do the work")
    control(spawn, "textbox", "Result").send_keys("done")
    control(spawn, "button", "Submit result").click()
    until(page, lambda: len(inbox_cards(page)) == 1)
    assert inbox_count(page) == "(1)"
    control(pending_card(page, second["id"], "Approve spawn?"), "button", "Reject").click()
    until(page, lambda: inbox_cards(page) == [])
    assert inbox_count(page) == ""
    assert page.find_element("id", "inbox-empty").is_displayed()
    assert "Rejected" in activity.text and "Result posted (ok)" in activity.text


def test_ids_show_short_with_the_whole_id_on_hover_and_one_click_copies_it(
    page: WebDriver, daemon: Daemon
) -> None:
    page.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": daemon.base, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    join(page)
    sid = own_sid(page)
    assert sid.startswith("op-") and len(sid) == 39
    who = page.find_element("id", "who")
    assert sid not in who.text and sid[:11] in who.text  # short: "op-" and eight characters
    task = daemon.create_task(directive="short ids", **served_by_console())
    card = pending_card(page, task["id"], "Approve spawn?")
    chip = card.find_element("css selector", ".meta button.id")
    assert task["id"] not in card.text
    assert chip.text == f"t-…{task['id'][-8:]}"
    assert task["id"] in (chip.get_attribute("title") or "")
    chip.click()
    copied = page.execute_async_script(
        "navigator.clipboard.readText().then(arguments[0], (e) => arguments[0]('error: ' + e));"
    )
    assert copied == task["id"]
    control(card, "button", "Approve").click()
    pending_card(page, task["id"], "Do the work")
    open_task(page, task["id"])
    until(page, lambda: page.find_elements("css selector", "#task-attempts .served"))
    attempts = page.find_element("id", "task-attempts")
    # One session served all three faces: named once, by name, not by sid.
    assert attempts.find_element("css selector", ".served").text == "served by Ada (you)"
    assert sid not in page.find_element("css selector", "section.tasks").text


def test_the_timeline_says_who_was_asked_what_in_words(page: WebDriver, daemon: Daemon) -> None:
    join(page)
    task = daemon.create_task(
        directive="words", layers=["main_ai", "operator_delegate"], **served_by_console()
    )
    pending_card(page, task["id"], "Approve spawn?")
    open_task(page, task["id"])
    control(pending_card(page, task["id"], "Approve spawn?"), "button", "Approve").click()
    spawn = pending_card(page, task["id"], "Do the work")
    control(spawn, "textbox", "Result").send_keys("fine")
    control(spawn, "button", "Submit result").click()
    until(page, lambda: page.find_element("id", "timeline-live").text == "ended")
    said = [e.text for e in page.find_elements("css selector", "#task-timeline .what")]
    assert "approval asked of Ada (you)" in said
    assert "Ada (you) answered the approval" in said
    assert "work handed to Ada (you)" in said
    assert "Ada (you) handed the work back" in said
    assert "result posted by the worker" in said
    assert not [s for s in said if "op-" in s or "spawn_hook" in s or "output output" in s]


def test_a_worker_ask_nested_under_its_spawn_does_not_repeat_the_directive(
    page: WebDriver, daemon: Daemon
) -> None:
    join(page)
    task = daemon.create_task(directive="a very particular directive", **served_by_console())
    control(pending_card(page, task["id"], "Approve spawn?"), "button", "Approve").click()
    spawn = pending_card(page, task["id"], "Do the work")
    daemon.call(
        "POST",
        "/v1/worker/ask",
        {"question": "which branch?", "timeout_s": 0},
        bearer=spawn_handle(page, spawn),
    )
    ask = until(page, lambda: nested_ask(spawn))
    until(page, lambda: ask.find_element("css selector", ".agent").text == "coder")
    # The spawn card shows the work once, as its prompt.
    until(page, lambda: "particular" in spawn.find_element("css selector", ".prompt").text)
    assert spawn.text.count("a very particular directive") == 1
    assert "which branch?" in ask.text
    assert ask.find_elements("css selector", ".directive") == []
    assert "a very particular directive" not in ask.text
    control(ask, "button", "Decline").click()  # leave nothing pending


def ask_with_schema(
    page: WebDriver, daemon: Daemon, schema: dict[str, Any]
) -> tuple[WebElement, str, str]:
    """A worker's ask with this form, nested under its spawn: the card, the
    worker handle and the ask's id."""
    join(page)
    task = daemon.create_task(directive="form", **served_by_console())
    control(pending_card(page, task["id"], "Approve spawn?"), "button", "Approve").click()
    spawn = pending_card(page, task["id"], "Do the work")
    worker = spawn_handle(page, spawn)
    asked = daemon.call(
        "POST",
        "/v1/worker/ask",
        {"question": "settings?", "answer_schema": schema, "timeout_s": 0},
        bearer=worker,
    )
    return until(page, lambda: nested_ask(spawn)), worker, asked["ask_id"]


def test_a_required_yes_no_makes_the_person_choose_and_sends_what_they_chose(
    page: WebDriver, daemon: Daemon
) -> None:
    schema = {
        "type": "object",
        "properties": {"deploy": {"type": "boolean", "title": "Deploy now"}},
        "required": ["deploy"],
    }
    ask, worker, ask_id = ask_with_schema(page, daemon, schema)
    group = ask.find_element("css selector", "fieldset.choice")
    assert group.aria_role == "radiogroup" and group.accessible_name.startswith("Deploy now")
    yes = control(ask, "radio", "Yes")
    no = control(ask, "radio", "No")
    assert not yes.is_selected() and not no.is_selected()
    control(ask, "button", "Send answer").click()
    # Not sent: the person is told to choose, and the ask still waits.
    until(
        page,
        lambda: "Deploy now: choose Yes or No" in ask.find_element("css selector", ".outcome").text,
    )
    assert daemon.call("GET", f"/v1/worker/ask/{ask_id}", bearer=worker).get("value") is None
    no.click()
    control(ask, "button", "Send answer").click()
    answer = daemon.call("GET", f"/v1/worker/ask/{ask_id}?wait=20", bearer=worker)
    assert answer == {"ask_id": ask_id, "value": {"deploy": False}}


def test_a_form_shows_number_limits_readable_labels_and_a_checkbox_beside_its_label(
    page: WebDriver, daemon: Daemon
) -> None:
    schema = {
        "type": "object",
        "properties": {
            "max_retries": {"type": "integer", "minimum": 1, "maximum": 5},
            "dryRun": {"type": "boolean"},
        },
        "required": ["max_retries"],
    }
    ask, worker, ask_id = ask_with_schema(page, daemon, schema)
    retries = ask.find_element("css selector", "input[type=number]")
    assert retries.accessible_name == "Max retries"  # from the key "max_retries"
    hint_id = retries.get_attribute("aria-describedby")
    assert hint_id and page.find_element("id", hint_id).text == "a whole number from 1 to 5"
    dry = control(ask, "checkbox", "Dry run")
    label = dry.find_element("xpath", "..")
    assert label.tag_name == "label" and label.text == "Dry run"
    # The box sits right before its words, not a column away.
    gap = label.rect["x"] + label.rect["width"] - (dry.rect["x"] + dry.rect["width"])
    assert dry.rect["width"] < 40 and 0 < gap < 200, (dry.rect, label.rect)
    retries.send_keys("9")
    control(ask, "button", "Send answer").click()
    until(
        page,
        lambda: (
            "Max retries: a whole number from 1 to 5"
            in ask.find_element("css selector", ".outcome").text
        ),
    )
    retries.clear()
    retries.send_keys("3")
    label.click()
    control(ask, "button", "Send answer").click()
    answer = daemon.call("GET", f"/v1/worker/ask/{ask_id}?wait=20", bearer=worker)
    assert answer == {"ask_id": ask_id, "value": {"max_retries": 3, "dryRun": True}}


def test_sign_in_offers_two_distinct_ways_with_an_or_and_a_line_of_help_each(
    page: WebDriver, daemon: Daemon
) -> None:
    badge = page.find_element("id", "conn")
    until(page, lambda: has_control(page, "button", "Join"))
    # Never connected: nothing is "gone", and nothing is red.
    assert badge.text == "not signed in" and "conn-gone" not in (badge.get_attribute("class") or "")
    join_form = page.find_element("id", "join-form")
    resume_form = page.find_element("id", "resume-form")
    assert join_form.accessible_name == "Join as a new operator"
    assert resume_form.accessible_name == "Resume a session"
    order = page.execute_script(
        "return [...document.querySelectorAll('#join-form, #signin .or, #resume-form')]"
        ".map((n) => n.id || n.textContent.trim().toLowerCase());"
    )
    assert order == ["join-form", "or", "resume-form"]
    assert page.find_element("css selector", "#signin .or").is_displayed()
    roles_help = page.find_element(
        "id", control(page, "textbox", "Roles").get_attribute("aria-describedby")
    )
    assert "tasks reach you by" in roles_help.text
    sid_help = page.find_element(
        "id", control(page, "textbox", "Session id").get_attribute("aria-describedby")
    )
    assert "earlier Join" in sid_help.text and "POST /v1/operators" in sid_help.text


def test_join_with_no_roles_is_refused_in_the_form(page: WebDriver, daemon: Daemon) -> None:
    control(page, "textbox", "Name").send_keys("Ada")
    control(page, "button", "Join").click()
    error = page.find_element("id", "signin-error")
    until(page, lambda: "Name at least one role" in error.text)
    assert control(page, "textbox", "Roles").get_attribute("aria-invalid") == "true"
    assert daemon.call("GET", "/v1/healthz")["operators"]["sessions"] == 0
    assert has_control(page, "button", "Join")


def test_leave_shows_signed_out_not_a_red_session_ended(page: WebDriver, daemon: Daemon) -> None:
    join(page)
    control(page, "button", "Leave").click()
    badge = page.find_element("id", "conn")
    until(page, lambda: badge.text == "signed out")
    assert "conn-gone" not in (badge.get_attribute("class") or "")


def test_a_missing_api_key_is_said_in_terms_of_the_api_key_field(browser: WebDriver) -> None:
    daemon = start_daemon("--api-token", "console-admin")
    try:
        severe_log_entries(browser)
        browser.get(daemon.base + "/console/")
        until(browser, lambda: has_control(browser, "textbox", "API key"))
        control(browser, "textbox", "Roles").send_keys(ROLE)
        control(browser, "button", "Join").click()
        error = browser.find_element("id", "signin-error")
        until(browser, lambda: error.text)
        assert error.text == (
            "Could not join: this server needs an API key: "
            'enter it in the "API key" field of Sign in'
        )
        assert "Bearer" not in error.text
        control(browser, "textbox", "API key").send_keys("wrong")
        control(browser, "button", "Join").click()
        until(browser, lambda: "did not accept this API key" in error.text)
        browser.get("about:blank")
    finally:
        daemon.stop()
