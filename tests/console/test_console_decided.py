"""The task page names who decided each request, in a real Chromium against
the daemon as a real process: a task created with the key `ci` reads "created
by key:ci", and the hook and spawn that a session minted with the key
`reviewer` settled over its real WebSocket read "approved by key:reviewer" and
"halted by key:reviewer", read from the task's audit trail.  Without admin
the trail is not the principal's to read: the page never asks for it, shows
no names and says why."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from tests.console.browser import (
    BOOT,
    Daemon,
    open_task,
    until,
)
from tests.console.test_console_principal import joined, make_key, requested, sign_in
from tests.wsop import expect


def nothing(task_id: str) -> None:
    pass


async def reviewed(daemon: Daemon, meanwhile: Callable[[str], None] = nothing) -> str:
    """A task created with the key `ci` for role review-1, whose hook a
    session minted with the key `reviewer` approves and whose spawn it halts,
    over the session's WebSocket; the task's id, once it ended.  Before the
    hook is approved, ``meanwhile(task_id)`` drives the browser (in a thread
    of its own, so this loop keeps the socket served)."""
    ci = make_key(daemon, "ci", "tasks:create")
    reviewer = make_key(daemon, "reviewer", "operate:review-*")
    async with aiohttp.ClientSession(daemon.base) as http:
        minted = await http.post(
            "/v1/operators",
            json={"roles": ["review-1"], "desc": "Rita"},
            headers={"Authorization": f"Bearer {reviewer}"},
        )
        assert minted.status == 201, await minted.text()
        session = await minted.json()
        async with http.ws_connect(
            f"/v1/operators/{session['sid']}/ws",
            headers={"Authorization": f"Bearer {session['token']}"},
        ) as ws:
            created = await http.post(
                "/v1/tasks",
                json={"agent": "coder", "directive": "d", "operator": {"role": "review-1"}},
                headers={"Authorization": f"Bearer {ci}"},
            )
            assert created.status == 202, await created.text()
            task_id: str = (await created.json())["id"]
            hook = await expect(ws, "hook_before", timeout=15)
            await asyncio.to_thread(meanwhile, task_id)
            await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
            spawn = await expect(ws, "spawn", timeout=15)
            await ws.send_json({"type": "spawn_halt", "req_id": spawn["req_id"], "reason": "no"})
    task = daemon.call("GET", f"/v1/tasks/{task_id}?wait=20", bearer=BOOT)
    assert task["status"] == "halted", task
    return task_id


def lines(page: WebDriver) -> list[WebElement]:
    found: list[WebElement] = page.find_elements("css selector", "#task-timeline li.event")
    return found


def line_texts(page: WebDriver) -> dict[str, str]:
    """Each timeline line's text by its kind (a reply by its request's id)."""
    return {
        (e.get_attribute("data-request-id") or e.get_attribute("data-type") or ""): "".join(
            s.get_attribute("textContent") or "" for s in e.find_elements("css selector", "span")
        )
        for e in lines(page)
        if e.get_attribute("data-type") in ("created", "reply")
    }


def test_an_admin_sees_who_created_the_task_and_who_decides_each_request_as_it_is_decided(
    guarded: tuple[WebDriver, Daemon],
) -> None:
    page, daemon = guarded
    sign_in(page, make_key(daemon, "auditor", "admin"), "main")
    joined(page)

    def watch(task_id: str) -> None:
        """The task page open while its hook waits: it is named live after."""
        open_task(page, task_id)
        until(page, lambda: line_texts(page).get("created") == "created by key:ci")
        until(page, lambda: [e for e in lines(page) if e.get_attribute("data-type") == "request"])

    task_id = asyncio.run(reviewed(daemon, watch))
    trail = daemon.call("GET", f"/v1/audit?task_id={task_id}", bearer=BOOT)["entries"]
    decided = {e["action"]: e["req_id"] for e in trail if e["action"].startswith(("hook", "spawn"))}
    hook, spawn = decided["hook.approved"], decided["spawn.halted"]

    # No click since: the page re-read the trail as the replies arrived.
    until(page, lambda: "halted by" in line_texts(page).get(spawn, ""))
    until(page, lambda: page.find_element("id", "timeline-live").text == "ended")
    shown = line_texts(page)
    assert shown["created"] == "created by key:ci"
    assert shown[hook].endswith("answered the approval — approved by key:reviewer"), shown
    assert shown[spawn].endswith(" — halted by key:reviewer"), shown
    assert page.find_element("id", "timeline-decided").text == ""
    # Requests asked are not decisions: those lines name nobody.
    asked = [e for e in lines(page) if e.get_attribute("data-type") == "request"]
    assert len(asked) == 2 and all(" by " not in e.text for e in asked)
    # The trail is read a page after another, to its end.
    paged = page.execute_async_script(
        """
        const [taskId, done] = arguments;
        import("/console/api.js").then(({ api }) => api.audit(taskId, { pageSize: 2 }))
          .then(done, (err) => done(String(err)));
        """,
        task_id,
    )
    assert len(trail) > 4 and paged == trail


def test_a_principal_without_admin_sees_the_timeline_without_names_and_why(
    guarded: tuple[WebDriver, Daemon],
) -> None:
    page, daemon = guarded
    task_id = asyncio.run(reviewed(daemon))
    watcher = make_key(daemon, "watcher", "operate:watch-*", "tasks:read", "events:read")
    sign_in(page, watcher, "watch-1")
    joined(page)
    open_task(page, task_id)
    until(page, lambda: page.find_element("id", "timeline-live").text == "ended")
    shown = line_texts(page)
    assert shown["created"] == "created"
    replies = [text for key, text in shown.items() if key != "created"]
    assert len(replies) == 2 and all(" by " not in text for text in replies), shown
    assert page.find_element("id", "timeline-decided").text == (
        "who decided each request: shown to a principal holding admin"
    )
    # Never asked for (so no 403 is logged; the fixture checks the log).
    assert not [p for p in requested(page) if p.startswith("v1/audit")]
    # The rest of the page is as ever: the task's summary reads it halted.
    assert "halted" in page.find_element("id", "task-summary").text


def test_a_cancelled_task_names_who_cancelled_it(guarded: tuple[WebDriver, Daemon]) -> None:
    page, daemon = guarded
    sign_in(page, make_key(daemon, "auditor", "admin"), "main")
    joined(page)
    ci = make_key(daemon, "ci", "tasks:create")
    # Served by the console's own session, which leaves its hook unanswered.
    task = daemon.call(
        "POST", "/v1/tasks", {"agent": "coder", "directive": "d", "operator": {"role": "main"}}, ci
    )
    open_task(page, task["id"])
    until(page, lambda: [e for e in lines(page) if e.get_attribute("data-type") == "request"])
    ops = make_key(daemon, "ops", "tasks:cancel")
    daemon.call("POST", f"/v1/tasks/{task['id']}/cancel", {"reason": "not today"}, ops)
    cancelled = 'li.event[data-type="status"][data-status="cancelled"]'
    until(page, lambda: page.find_elements("css selector", cancelled))
    until(
        page,
        lambda: page.find_element("css selector", cancelled).text.endswith(
            "status → cancelled by key:ops"
        ),
    )
    assert line_texts(page)["created"] == "created by key:ci"
