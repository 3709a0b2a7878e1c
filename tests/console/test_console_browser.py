"""The console in a real headless Chromium, against the daemon as a real process.

Each test is what a person does; the ``page`` fixture also fails any test after
which the browser console holds an error.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.select import Select

from tests.console.browser import (
    Daemon,
    control,
    has_control,
    open_task,
    own_sid,
    severe_log_entries,
    shown_task,
    start_daemon,
    until,
)

ROLE = "reviewer"


def join(page: WebDriver, roles: str = ROLE, name: str = "Ada") -> None:
    control(page, "textbox", "Roles").send_keys(roles)
    control(page, "textbox", "Name").send_keys(name)
    control(page, "button", "Join").click()
    until(page, lambda: page.find_element("id", "conn").text == "connected")


def cards(page: WebDriver, task_id: str) -> list[WebElement]:
    return [
        c
        for c in page.find_elements("css selector", "#inbox li.card")
        if c.get_attribute("data-task-id") == task_id
    ]


def pending_card(page: WebDriver, task_id: str, title: str) -> WebElement:
    """The one open card for this task with this heading, once it shows."""

    def find() -> WebElement | None:
        found = [
            c for c in cards(page, task_id) if c.find_element("css selector", "h3").text == title
        ]
        assert len(found) <= 1, f"{len(found)} cards for one request"
        return found[0] if found else None

    return until(page, find)


def served_by_console(**extra: Any) -> dict[str, Any]:
    return {"agent": "coder", "operator": {"role": ROLE}, **extra}


def test_join_mints_a_session_and_connects(page: WebDriver, daemon: Daemon) -> None:
    assert not has_control(page, "textbox", "API key")  # this server needs none
    join(page)
    who = page.find_element("id", "who").text
    assert "Ada" in who and ROLE in who
    sid = own_sid(page)
    health = daemon.call("GET", "/v1/healthz")
    assert health["operators"] == {"sessions": 1, "connected": 1}
    assert sid.startswith("op-")


def test_a_person_approves_does_the_work_and_the_task_passes_with_that_result(
    page: WebDriver, daemon: Daemon
) -> None:
    join(page)
    control(page, "textbox", "Directive").send_keys('{"write": "a haiku"}')
    control(page, "button", "New task").click()
    task_id = until(page, lambda: shown_task(page))

    card = pending_card(page, task_id, "Approve spawn?")
    assert card.find_element("css selector", ".agent").text == "coder"
    until(
        page, lambda: '"write": "a haiku"' in card.find_element("css selector", ".directive").text
    )
    control(card, "button", "Approve").click()

    spawn = pending_card(page, task_id, "Do the work")
    until(page, lambda: '"write": "a haiku"' in spawn.find_element("css selector", ".prompt").text)
    control(spawn, "textbox", "Result").send_keys('{"haiku": "old pond"}')
    control(spawn, "button", "Submit result").click()
    until(page, lambda: "Result posted (ok) · ack sent" in page.find_element("id", "activity").text)

    task = daemon.finished(task_id)
    assert task["status"] == "passed"
    assert task["result"] == {"value": {"haiku": "old pond"}, "ok": True}
    # The task page follows the console's own actions.
    until(page, lambda: "passed" in page.find_element("id", "task-summary").text)


def test_reject_fails_the_task_with_the_reason(page: WebDriver, daemon: Daemon) -> None:
    join(page)
    task = daemon.create_task(directive="delete everything", **served_by_console())
    card = pending_card(page, task["id"], "Approve spawn?")
    control(card, "textbox", "Reason").send_keys("too risky")
    control(card, "button", "Reject").click()
    ended = daemon.finished(task["id"])
    assert ended["status"] == "failed"
    assert ended["error"]["code"] == "spawn_rejected"
    assert "too risky" in ended["error"]["message"]


def test_an_answer_in_the_console_overrides_a_failing_worker(
    page: WebDriver, daemon: Daemon
) -> None:
    join(page)
    task = daemon.create_task(
        directive="flaky job",
        layers=["senior_escalation", "operator_delegate"],
        **served_by_console(),
    )
    spawn = pending_card(page, task["id"], "Do the work")
    control(spawn, "textbox", "Result").send_keys("it broke")
    control(spawn, "button", "Submit as failed").click()

    ask = pending_card(page, task["id"], "Question")
    assert "worker reported ok=false" in ask.find_element("css selector", ".question").text
    # The escalation's answer form: a required choice and an optional note.
    Select(control(ask, "combobox", "Decision")).select_by_visible_text("override")
    control(ask, "textbox", "Note").send_keys("good enough")
    control(ask, "button", "Send answer").click()

    ended = daemon.finished(task["id"])
    assert ended["status"] == "passed"
    assert ended["result"]["value"] == {
        "original": "it broke",
        "senior_answer": {"decision": "override", "note": "good enough"},
    }


def test_a_worker_ask_shows_under_its_spawn_as_a_form_and_the_worker_gets_typed_values(
    page: WebDriver, daemon: Daemon
) -> None:
    join(page)
    task = daemon.create_task(directive="ship it", **served_by_console())
    control(pending_card(page, task["id"], "Approve spawn?"), "button", "Approve").click()
    spawn = pending_card(page, task["id"], "Do the work")
    schema = {
        "type": "object",
        "properties": {
            "branch": {"type": "string", "title": "Branch"},
            "level": {"type": "string", "enum": ["low", "high"], "title": "Level"},
            "merge": {"type": "boolean", "title": "Merge"},
        },
        "required": ["branch", "level"],
    }
    worker = spawn_handle(page, spawn)
    asked = daemon.call(
        "POST",
        "/v1/worker/ask",
        {"question": "where to?", "answer_schema": schema, "timeout_s": 0},
        bearer=worker,
    )
    ask = until(page, lambda: nested_ask(spawn))
    assert ask.find_element("css selector", "h3").text == "Question from the worker"
    assert "where to?" in ask.find_element("css selector", ".question").text
    branch = control(ask, "textbox", "Branch")
    level = control(ask, "combobox", "Level")
    merge = control(ask, "checkbox", "Merge")
    # Required fields are marked (for the eye and for assistive technology).
    assert branch.get_attribute("aria-required") == "true" == level.get_attribute("aria-required")
    assert merge.get_attribute("aria-required") is None
    assert len(ask.find_elements("css selector", "label .required")) == 2
    branch.send_keys("release")
    Select(level).select_by_visible_text("high")
    merge.click()
    control(ask, "button", "Send answer").click()

    answer = daemon.call("GET", f"/v1/worker/ask/{asked['ask_id']}?wait=20", bearer=worker)
    assert answer == {
        "ask_id": asked["ask_id"],
        "value": {"branch": "release", "level": "high", "merge": True},
    }


def spawn_handle(page: WebDriver, spawn: WebElement) -> str:
    """The worker handle a spawn card holds (in its operator directive)."""
    text = spawn.find_element("css selector", "details pre").get_attribute("textContent") or ""
    found = re.search(r"wh-[0-9a-f]+\.t-[0-9a-f]+", text)
    assert found is not None, text
    return found.group(0)


def nested_ask(spawn: WebElement) -> WebElement | None:
    found = spawn.find_elements("css selector", ".nested li.card-ask")
    return found[0] if found else None


def test_after_a_reload_the_pending_card_is_back_once_and_answering_completes_the_task_once(
    page: WebDriver, daemon: Daemon
) -> None:
    join(page)
    task = daemon.create_task(directive="survive a reload", **served_by_console())
    before = pending_card(page, task["id"], "Approve spawn?").get_attribute("data-req-id")

    page.refresh()
    until(page, lambda: page.find_element("id", "conn").text == "connected")
    card = pending_card(page, task["id"], "Approve spawn?")
    assert card.get_attribute("data-req-id") == before
    assert len(cards(page, task["id"])) == 1
    control(card, "button", "Approve").click()

    spawn = pending_card(page, task["id"], "Do the work")
    control(spawn, "textbox", "Result").send_keys("done")
    control(spawn, "button", "Submit result").click()
    ended = daemon.finished(task["id"])
    assert ended["status"] == "passed" and ended["result"]["value"] == "done"
    assert len(ended["attempts"]) == 1
    finals = [o for o in ended["attempts"][0]["outputs"] if o["kind"] == "final"]
    assert len(finals) == 1


def test_cancelling_the_task_removes_its_card_and_shows_the_reason(
    page: WebDriver, daemon: Daemon
) -> None:
    join(page)
    task = daemon.create_task(directive="never mind", **served_by_console())
    card = pending_card(page, task["id"], "Approve spawn?")
    req_id = card.get_attribute("data-req-id")

    open_task(page, task["id"])
    control(page, "textbox", "Cancel reason").send_keys("wrong repo")
    control(page, "button", "Cancel task").click()

    until(page, lambda: not page.find_elements("css selector", f'[data-req-id="{req_id}"]'))
    until(page, lambda: "wrong repo" in page.find_element("id", "activity").text)
    assert daemon.finished(task["id"])["status"] == "cancelled"


def test_markup_in_a_directive_shows_as_text_and_runs_nothing(
    page: WebDriver, daemon: Daemon
) -> None:
    join(page)
    evil = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
    task = daemon.create_task(directive=evil, **served_by_console())
    card = pending_card(page, task["id"], "Approve spawn?")
    until(page, lambda: card.find_element("css selector", ".directive").text == evil)
    open_task(page, task["id"])
    until(page, lambda: page.find_element("id", "task-directive-view").text == evil)
    assert page.find_elements("css selector", "main img, main script") == []
    assert page.execute_script("return window.pwned") is None
    control(card, "button", "Approve").click()  # leave nothing pending
    pending_card(page, task["id"], "Do the work")


def test_leave_deletes_the_session_and_a_reload_stays_signed_out(
    page: WebDriver, daemon: Daemon
) -> None:
    join(page)
    sid = own_sid(page)
    stored = json.loads(page.execute_script("return sessionStorage.getItem('operator-console')"))
    assert stored["sid"] == sid and page.execute_script("return localStorage.length") == 0
    assert stored["token"] not in page.current_url
    control(page, "button", "Leave").click()
    until(page, lambda: has_control(page, "button", "Join"))
    until(page, lambda: daemon.call("GET", "/v1/healthz")["operators"]["sessions"] == 0)
    page.refresh()
    until(page, lambda: has_control(page, "button", "Join"))


def test_with_an_api_token_the_field_shows_and_joining_uses_it(browser: WebDriver) -> None:
    daemon = start_daemon("--api-token", "console-admin")
    try:
        severe_log_entries(browser)
        browser.get(daemon.base + "/console/")
        until(browser, lambda: has_control(browser, "textbox", "API key"))
        control(browser, "textbox", "API key").send_keys("console-admin")
        join(browser)
        control(browser, "textbox", "Role").clear()  # served by the local echo agent
        control(browser, "textbox", "Agent").clear()
        control(browser, "textbox", "Agent").send_keys("echo")
        control(browser, "textbox", "Directive").send_keys("hi")
        control(browser, "button", "New task").click()  # creates and lists with the token
        task_id = until(browser, lambda: shown_task(browser))
        until(browser, lambda: row_status(browser, task_id))
        assert daemon.status_of("GET", f"/v1/tasks/{task_id}") == 401  # the token was needed
        # The event stream carries the token in a header, never in its URL.
        live(browser)
        other = daemon.call(
            "POST", "/v1/tasks", {"agent": "echo", "directive": "x"}, "console-admin"
        )
        until(browser, lambda: row_status(browser, other["id"]) == "passed")
        # The api token makes this console the admin.
        sid = own_sid(browser)
        until(browser, lambda: operator_row(browser, sid))
        urls = browser.execute_script(
            "return performance.getEntriesByType('resource').map((e) => e.name)"
        )
        assert not [u for u in urls if "console-admin" in u or "token" in u.lower()]
        errors = severe_log_entries(browser)
        browser.get("about:blank")
        assert errors == [], errors
    finally:
        daemon.stop()


def row_status(page: WebDriver, task_id: str) -> str | None:
    """The status a task's row shows (read in one go: the table is redrawn as events come)."""
    status: str | None = page.execute_script(
        "const row = [...document.querySelectorAll('#task-rows tr')]"
        ".find((r) => r.dataset.taskId === arguments[0]);"
        "return row ? row.querySelector('.badge').textContent : null;",
        task_id,
    )
    return status


def list_reads(page: WebDriver) -> int:
    """How many GET /v1/tasks (the list) this page has made, from its resource timing."""
    count: int = page.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter((e) => new URL(e.name).pathname === '/v1/tasks').length"
    )
    return count


def live(page: WebDriver) -> None:
    until(page, lambda: page.find_element("id", "tasks-live").text == "live")


def test_the_task_list_follows_tasks_changed_elsewhere_from_the_event_stream_not_by_rereading(
    page: WebDriver, daemon: Daemon
) -> None:
    page.execute_script("performance.setResourceTimingBufferSize(100000)")
    join(page)
    live(page)
    assert list_reads(page) == 1
    held = daemon.create_task(directive="wait for me", **served_by_console())
    until(page, lambda: row_status(page, held["id"]) == "running")
    daemon.call("POST", f"/v1/tasks/{held['id']}/cancel", {"reason": "changed my mind"})
    until(page, lambda: row_status(page, held["id"]) == "cancelled")
    echo = daemon.create_task(agent="echo", directive="hi")
    until(page, lambda: row_status(page, echo["id"]) == "passed")
    orphan = daemon.create_task(directive="nobody", agent="coder", operator={"role": "absent"})
    until(page, lambda: row_status(page, orphan["id"]) == "failed")
    assert list_reads(page) == 1  # every change came from the stream

    # The filter reads the list once more, then the stream keeps it to that status.
    Select(control(page, "combobox", "Status")).select_by_visible_text("cancelled")
    until(page, lambda: row_status(page, echo["id"]) is None)
    assert row_status(page, held["id"]) == "cancelled"
    later = daemon.create_task(directive="again", **served_by_console())
    passed = daemon.create_task(agent="echo", directive="not shown")
    daemon.finished(passed["id"])
    daemon.call("POST", f"/v1/tasks/{later['id']}/cancel", {})
    until(page, lambda: row_status(page, later["id"]) == "cancelled")
    assert row_status(page, passed["id"]) is None
    assert list_reads(page) == 2


def badge_colour(page: WebDriver, classes: str) -> str:
    """The background a badge with these classes is drawn with (a throwaway one)."""
    colour: str = page.execute_script(
        "const b = document.createElement('span'); b.className = arguments[0];"
        "document.body.append(b); const c = getComputedStyle(b).backgroundColor;"
        "b.remove(); return c;",
        classes,
    )
    return colour


def shown_badge(page: WebDriver, scope: str) -> tuple[str, str, str]:
    """The text, classes and background of the first badge under ``scope`` (one read)."""
    found: list[str] = page.execute_script(
        "const b = document.querySelector(arguments[0] + ' .badge');"
        "return b ? [b.textContent, b.className, getComputedStyle(b).backgroundColor] : null;",
        scope,
    )
    assert found is not None, f"no badge under {scope}"
    return found[0], found[1], found[2]


def test_a_spawn_halted_from_its_card_reads_halted_in_its_own_colour_and_the_filter_finds_it(
    page: WebDriver, daemon: Daemon
) -> None:
    join(page)
    live(page)
    done = daemon.create_task(agent="echo", directive="a passing neighbour")
    until(page, lambda: row_status(page, done["id"]) == "passed")
    control(page, "textbox", "Directive").send_keys('{"write": "an epic"}')
    control(page, "button", "New task").click()
    task_id = until(page, lambda: shown_task(page))
    control(pending_card(page, task_id, "Approve spawn?"), "button", "Approve").click()
    spawn = pending_card(page, task_id, "Do the work")
    control(spawn, "textbox", "Halt reason").send_keys("enough for today")
    control(spawn, "button", "Halt").click()

    ended = daemon.finished(task_id)
    assert ended["status"] == "halted"
    assert ended["result"]["value"]["reason"] == "enough for today"
    # The list row and the task page both say halted, in a colour of its own:
    # neither the passed green nor the plain grey of a status without one.
    until(page, lambda: row_status(page, task_id) == "halted")
    row = f'#task-rows tr[data-task-id="{task_id}"]'
    text, classes, colour = shown_badge(page, row)
    assert text == "halted"
    assert "status-halted" in classes.split()
    assert colour not in (badge_colour(page, "badge status-passed"), badge_colour(page, "badge"))
    until(page, lambda: shown_badge(page, "#task-summary")[0] == "halted")
    assert shown_badge(page, "#task-summary")[1:] == (classes, colour)

    # The status filter has halted: it lists this task and not the passed one.
    Select(control(page, "combobox", "Status")).select_by_visible_text("halted")
    until(page, lambda: row_status(page, done["id"]) is None)
    assert row_status(page, task_id) == "halted"


def test_the_task_page_shows_its_event_timeline_from_creation_to_the_end_in_order(
    page: WebDriver, daemon: Daemon
) -> None:
    join(page)
    task = daemon.create_task(directive="review this", **served_by_console())
    until(page, lambda: row_status(page, task["id"]) is not None)
    open_task(page, task["id"])
    timeline = page.find_element("id", "task-timeline")
    until(page, lambda: "request" in [e.get_attribute("data-type") for e in events(timeline)])
    control(pending_card(page, task["id"], "Approve spawn?"), "button", "Approve").click()
    spawn = pending_card(page, task["id"], "Do the work")
    control(spawn, "textbox", "Result").send_keys("looks fine")
    control(spawn, "button", "Submit result").click()
    until(page, lambda: page.find_element("id", "timeline-live").text == "ended")

    shown = [
        (e.get_attribute("data-type"), e.get_attribute("data-status")) for e in events(timeline)
    ]
    assert shown[0] == ("created", "pending")
    assert shown[-1] == ("status", "passed")
    types = [t for t, _ in shown]
    assert types.index("attempt_started") < types.index("request") < types.index("attempt_ended")
    ids = [int(e.get_attribute("data-event-id") or 0) for e in events(timeline)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert "status → passed" in timeline.text
    until(page, lambda: "passed" in page.find_element("id", "task-summary").text)


def events(timeline: WebElement) -> list[WebElement]:
    return timeline.find_elements("css selector", "li.event")


def operator_row(page: WebDriver, sid: str) -> WebElement | None:
    rows = page.find_elements("css selector", f'#operator-rows tr[data-sid="{sid}"]')
    return rows[0] if rows else None


def click_in_row(page: WebDriver, sid: str, name: str) -> None:
    """Click a session's button. Its row is redrawn whenever the session reads
    differently (its pending requests change): on a busy machine that can land
    between finding the row and clicking, so each try finds the row afresh."""

    def click() -> bool:
        row = operator_row(page, sid)
        assert row is not None, f"no row for {sid}"
        control(row, "button", name).click()
        return True

    until(page, click)


def operator_view(page: WebDriver, sid: str) -> dict[str, Any] | None:
    """A session's row as the Operators panel shows it, read in one go (the panel
    is live: rows are redrawn as events arrive): its cells' text and the whole
    ids of the tasks its pending requests belong to."""
    view: dict[str, Any] | None = page.execute_script(
        "const row = [...document.querySelectorAll('#operator-rows tr')]"
        ".find((r) => r.dataset.sid === arguments[0]);"
        "return row ? {cells: [...row.cells].map((c) => c.innerText),"
        " pending: [...row.querySelectorAll('.pending button.id')].map((b) => b.dataset.id),"
        " buttons: [...row.querySelectorAll('button:not(.id)')].map((b) => b.textContent)} : null;",
        sid,
    )
    return view


def test_the_operators_view_lists_another_session_and_force_leave_frees_its_roles(
    page: WebDriver, daemon: Daemon
) -> None:
    join(page)
    other = daemon.call("POST", "/v1/operators", {"roles": ["night-shift"], "desc": "Grace"})
    task = daemon.create_task(
        directive="for the night", agent="coder", operator={"role": "night-shift"}
    )
    control(page, "button", "Refresh").click()
    view = until(page, lambda: operator_view(page, other["sid"]))
    assert view["cells"][1:3] == ["Grace minted by local", "night-shift"]
    assert view["cells"][3].startswith("disconnected")
    until(page, lambda: task["id"] in (operator_view(page, other["sid"]) or {})["pending"])
    own = operator_view(page, own_sid(page))
    assert own is not None and "connected" in own["cells"][3] and "(you)" in own["cells"][0]
    assert "Force leave" not in own["buttons"]

    click_in_row(page, other["sid"], "Force leave")
    until(page, lambda: "Confirm force leave" in operator_view(page, other["sid"])["buttons"])
    click_in_row(page, other["sid"], "Confirm force leave")
    until(page, lambda: operator_row(page, other["sid"]) is None)
    assert daemon.status_of("GET", f"/v1/operators/{other['sid']}", bearer=other["token"]) == 404
    again = daemon.call("POST", "/v1/operators", {"roles": ["night-shift"]})  # the role is free
    assert again["roles"] == ["night-shift"]
    daemon.call("DELETE", f"/v1/operators/{again['sid']}", bearer=again["token"])


def test_force_leave_asks_first_and_keep_session_leaves_it_alone(
    page: WebDriver, daemon: Daemon
) -> None:
    join(page)
    other = daemon.call("POST", "/v1/operators", {"roles": ["night-shift"], "desc": "Grace"})
    control(page, "button", "Refresh").click()
    until(page, lambda: operator_row(page, other["sid"]))
    click_in_row(page, other["sid"], "Force leave")
    asking = until(page, lambda: operator_view(page, other["sid"]))
    assert "Confirm force leave" in asking["buttons"] and "Keep session" in asking["buttons"]
    assert "End Grace's session?" in asking["cells"][5]
    # The first click ended nothing.
    assert daemon.status_of("GET", f"/v1/operators/{other['sid']}", bearer=other["token"]) == 200
    click_in_row(page, other["sid"], "Keep session")
    until(page, lambda: operator_view(page, other["sid"])["buttons"] == ["Force leave"])
    assert daemon.status_of("GET", f"/v1/operators/{other['sid']}", bearer=other["token"]) == 200


def test_the_operators_view_follows_pending_requests_live_without_refresh(
    page: WebDriver, daemon: Daemon
) -> None:
    join(page)
    other = daemon.call("POST", "/v1/operators", {"roles": ["night-shift"], "desc": "Grace"})
    control(page, "button", "Refresh").click()  # reads now, not at the next timed read
    until(
        page, lambda: (operator_view(page, other["sid"]) or {}).get("cells", [""] * 5)[4] == "none"
    )
    live(page)
    night = {"agent": "coder", "operator": {"role": "night-shift"}}
    held = [daemon.create_task(directive=f"job {i}", **night)["id"] for i in range(4)]
    # No click: the panel follows the event stream.
    until(page, lambda: sorted(operator_view(page, other["sid"])["pending"]) == sorted(held))
    daemon.call("POST", f"/v1/tasks/{held[0]}/cancel", {"reason": "not tonight"})
    until(page, lambda: sorted(operator_view(page, other["sid"])["pending"]) == sorted(held[1:]))
    for task_id in held[1:]:
        daemon.call("POST", f"/v1/tasks/{task_id}/cancel", {})
    until(page, lambda: operator_view(page, other["sid"])["cells"][4] == "none")


@contextmanager
def operator_socket(daemon: Daemon, sid: str, token: str) -> Iterator[None]:
    """A session's real WebSocket, held open (and read, so pings are answered)
    on an event loop of its own while the browser is driven from this thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="operator-socket", daemon=True)
    thread.start()

    async def connect() -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(
            f"{daemon.base}/v1/operators/{sid}/ws", headers={"Authorization": f"Bearer {token}"}
        )
        return http, ws

    async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
        async for _ in ws:
            pass

    async def close(http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.close()
        await http.close()

    http, ws = asyncio.run_coroutine_threadsafe(connect(), loop).result(20)
    reader = asyncio.run_coroutine_threadsafe(drain(ws), loop)
    try:
        yield
    finally:
        asyncio.run_coroutine_threadsafe(close(http, ws), loop).result(20)
        reader.result(20)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def connection_shown(page: WebDriver, sid: str) -> str | None:
    """What the Operators panel says of a session's connection (None: no row)."""
    view = operator_view(page, sid)
    return None if view is None else view["cells"][3].split()[0]


def test_the_operators_view_follows_sessions_joining_connecting_dropping_and_leaving_unclicked(
    page: WebDriver, daemon: Daemon
) -> None:
    join(page)
    until(page, lambda: operator_view(page, own_sid(page)))
    # None of these is a task event, and nothing here is clicked: the panel
    # re-reads itself while it is visible (within SESSIONS_EVERY_MS).
    other = daemon.call("POST", "/v1/operators", {"roles": ["night-shift"], "desc": "Grace"})
    until(page, lambda: connection_shown(page, other["sid"]) == "disconnected", timeout=30)
    assert operator_view(page, other["sid"])["cells"][1:3] == [
        "Grace minted by local",
        "night-shift",
    ]
    with operator_socket(daemon, other["sid"], other["token"]):
        until(page, lambda: connection_shown(page, other["sid"]) == "connected", timeout=30)
    until(page, lambda: connection_shown(page, other["sid"]) == "disconnected", timeout=30)
    daemon.call("DELETE", f"/v1/operators/{other['sid']}", bearer=other["token"])
    until(page, lambda: connection_shown(page, other["sid"]) is None, timeout=30)
    assert connection_shown(page, own_sid(page)) == "connected"


def test_approve_selected_and_reject_selected_decide_several_approvals_with_one_reason(
    page: WebDriver, daemon: Daemon
) -> None:
    join(page)
    batch = page.find_element("id", "inbox-batch")
    tasks = [daemon.create_task(directive=f"job {i}", **served_by_console()) for i in range(4)]
    approvals = [pending_card(page, t["id"], "Approve spawn?") for t in tasks]
    until(page, batch.is_displayed)
    assert not control(page, "button", "Reject selected").is_enabled()  # nothing selected yet

    for card in approvals[:2]:
        control(card, "checkbox", "Select").click()
    control(page, "textbox", "Reason for the selected").send_keys("not this week")
    control(page, "button", "Reject selected").click()
    for task in tasks[:2]:
        ended = daemon.finished(task["id"])
        assert ended["status"] == "failed" and "not this week" in ended["error"]["message"]

    for card in approvals[2:]:
        control(card, "checkbox", "Select").click()
    control(page, "button", "Approve selected").click()
    for task in tasks[2:]:
        pending_card(page, task["id"], "Do the work")  # approved: the spawn follows
    until(page, lambda: not batch.is_displayed())  # no approvals left to choose from
    activity = page.find_element("id", "activity").text
    assert activity.count("Rejected (selected): not this week") == 2
    assert activity.count("Approved (selected)") == 2
    # Decided through the batch route, not the socket: counted and told as batch.
    assert replies_counted(daemon) == {("batch", "hook_ack"): 4.0}
    for task in tasks[:2]:
        replies = [data for kind, data in task_events(daemon, task["id"]) if kind == "reply"]
        assert [(r["face"], r["via"]) for r in replies] == [("spawn_hook", "batch")]
    assert not severe_log_entries(page)


def replies_counted(daemon: Daemon) -> dict[tuple[str, str], float]:
    """``operator_server_replies_total`` by (via, kind)."""
    with urllib.request.urlopen(daemon.base + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    counted = {}
    for labels, value in re.findall(r"^operator_server_replies_total\{(.*)\} (\S+)$", text, re.M):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        counted[(pairs["via"], pairs["kind"])] = float(value)
    return counted


def task_events(daemon: Daemon, task_id: str) -> list[tuple[str, dict[str, Any]]]:
    """An ended task's whole event stream (it closes after the task's end): (type, data)."""
    with urllib.request.urlopen(f"{daemon.base}/v1/tasks/{task_id}/events", timeout=30) as resp:
        text = resp.read().decode()
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields and "data" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events
