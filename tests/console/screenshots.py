"""``make screenshots``: PNGs of the console's inbox and task page for the README.

Not a test (pytest does not collect it): it starts the daemon, joins as a person,
creates a few tasks so there is something to see, and saves
``docs/console-inbox.png`` and ``docs/console-task.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from operator_server.demo import port_option
from tests.console.browser import browser_missing, chromium, control, start_daemon, until

DOCS = Path(__file__).resolve().parents[2] / "docs"


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
            page.get(daemon.base + "/")
            control(page, "textbox", "Roles").send_keys("reviewer")
            control(page, "textbox", "Name").send_keys("Ada")
            control(page, "button", "Join").click()
            until(page, lambda: page.find_element("id", "conn").text == "connected")
            op = {"role": "reviewer"}
            done = daemon.create_task(agent="echo", directive={"summarise": "CHANGELOG.md"})
            daemon.finished(done["id"])
            daemon.create_task(
                agent="coder",
                directive={"fix": "flaky test in tests/http", "budget_min": 20},
                operator=op,
            )
            daemon.create_task(
                agent="writer",
                directive="Draft release notes for 0.4",
                operator=op,
                layers=["operator_delegate"],
            )
            until(page, lambda: len(page.find_elements("css selector", "#inbox li.card")) == 2)
            until(page, lambda: "fetching" not in page.find_element("id", "inbox").text)
            until(page, lambda: page.find_element("id", "tasks-live").text == "live")
            until(page, lambda: page.find_elements("css selector", "#operator-rows tr"))
            page.save_screenshot(str(DOCS / "console-inbox.png"))
            control(page, "button", done["id"]).click()
            until(page, lambda: "passed" in page.find_element("id", "task-summary").text)
            until(page, lambda: page.find_element("id", "timeline-live").text == "ended")
            # The whole task page, timeline included, not the first screenful.
            height = page.execute_script("return document.documentElement.scrollHeight")
            page.set_window_size(1440, int(height) + 200)
            page.find_element("css selector", "section.tasks").screenshot(
                str(DOCS / "console-task.png")
            )
    finally:
        daemon.stop()
    print(f"saved {DOCS / 'console-inbox.png'} and {DOCS / 'console-task.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
