"""``make screenshots``: PNGs of the console for the README.

Not a test (pytest does not collect it): it starts the daemon, shows the
sign-in, joins as a person, and makes something of everything to see — a
decided approval (in Activity), a spawn with a worker's question as a form, an
approval waiting, another operator holding requests — then saves
``docs/console-signin.png``, ``docs/console-inbox.png`` (the whole page:
inbox, tasks, operators) and ``docs/console-task.png`` (a task Ada served,
with its timeline).
"""

from __future__ import annotations

import sys
from pathlib import Path

from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from operator_server.demo import port_option
from tests.console.browser import (
    browser_missing,
    chromium,
    control,
    open_task,
    start_daemon,
    until,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
FORM = {
    "type": "object",
    "title": "How to ship",
    "properties": {
        "branch": {"type": "string", "title": "Branch", "default": "main"},
        "merge": {"type": "boolean", "title": "Merge when green"},
        "max_retries": {"type": "integer", "minimum": 0, "maximum": 5},
        "notify": {"type": "boolean"},
    },
    "required": ["branch", "merge"],
}


def card(page: WebDriver, task_id: str, title: str) -> WebElement:
    def find() -> WebElement | None:
        for c in page.find_elements("css selector", "#inbox li.card"):
            if (
                c.get_attribute("data-task-id") == task_id
                and c.find_element("css selector", "h3").text == title
            ):
                return c
        return None

    return until(page, find)


def full_height(page: WebDriver) -> None:
    height = page.execute_script("return document.documentElement.scrollHeight")
    page.set_window_size(1440, int(height) + 200)


def main(argv: list[str] | None = None) -> int:
    port = port_option("make screenshots: the console's pictures for the README", argv)
    missing = browser_missing()
    if missing:
        print(f"screenshots: {missing}", file=sys.stderr)
        return 1
    DOCS.mkdir(exist_ok=True)
    daemon = start_daemon(port=port or None)
    try:
        with chromium() as page:
            # Another operator, away, with work waiting for it.
            daemon.call("POST", "/v1/operators", {"roles": ["night-shift"], "desc": "Grace"})
            page.get(daemon.base + "/")
            until(page, lambda: control(page, "button", "Join"))
            page.find_element("id", "signin").screenshot(str(DOCS / "console-signin.png"))
            control(page, "textbox", "Roles").send_keys("reviewer")
            control(page, "textbox", "Name").send_keys("Ada")
            control(page, "button", "Join").click()
            until(page, lambda: page.find_element("id", "conn").text == "connected")
            op = {"role": "reviewer"}
            echo = daemon.create_task(agent="echo", directive={"summarise": "CHANGELOG.md"})
            daemon.finished(echo["id"])
            served = daemon.create_task(
                agent="coder",
                directive={"fix": "flaky test in tests/http", "budget_min": 20},
                operator=op,
            )
            control(card(page, served["id"], "Approve spawn?"), "button", "Approve").click()
            spawn = card(page, served["id"], "Do the work")
            control(spawn, "textbox", "Result").send_keys('{"patch": "retry the read once"}')
            control(spawn, "button", "Submit result").click()
            daemon.finished(served["id"])
            asking = daemon.create_task(agent="coder", directive="Ship release 0.4", operator=op)
            control(card(page, asking["id"], "Approve spawn?"), "button", "Approve").click()
            spawn = card(page, asking["id"], "Do the work")
            handle = page.execute_script(
                "return arguments[0].querySelector('details pre').textContent"
                ".match(/wh-[0-9a-f]+\\.t-[0-9a-f]+/)[0];",
                spawn,
            )
            daemon.call(
                "POST",
                "/v1/worker/ask",
                {"question": "Ready to ship?", "answer_schema": FORM, "timeout_s": 0},
                bearer=handle,
            )
            daemon.create_task(agent="writer", directive="Draft release notes for 0.4", operator=op)
            daemon.create_task(
                agent="coder", directive="Nightly dependency bump", operator={"role": "night-shift"}
            )
            until(page, lambda: len(page.find_elements("css selector", "#inbox li.card")) == 3)
            until(page, lambda: "fetching" not in page.find_element("id", "inbox").text)
            until(page, lambda: page.find_element("id", "tasks-live").text == "live")
            until(
                page,
                lambda: len(page.find_elements("css selector", "#operator-rows .pending li")) == 4,
            )
            full_height(page)
            page.save_screenshot(str(DOCS / "console-inbox.png"))
            open_task(page, served["id"])
            until(page, lambda: "passed" in page.find_element("id", "task-summary").text)
            until(page, lambda: page.find_element("id", "timeline-live").text == "ended")
            # The whole task page, timeline included, not the first screenful.
            full_height(page)
            page.find_element("css selector", "section.tasks").screenshot(
                str(DOCS / "console-task.png")
            )
    finally:
        daemon.stop()
    print(f"saved console-signin.png, console-inbox.png and console-task.png in {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
