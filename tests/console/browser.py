"""Drive the console in Debian's Chromium through chromedriver, against a real daemon.

Nothing is downloaded: the browser and driver are the system packages, and the
driver path is passed explicitly so Selenium Manager never runs.  Controls are
found the way assistive technology finds them, by role and accessible name.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from tests.processes import started

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1440,1000",
)
T = TypeVar("T")


def browser_missing() -> str | None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        return f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver)"
    return None


@contextmanager
def chromium() -> Iterator[WebDriver]:
    with tempfile.TemporaryDirectory(prefix="console-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        try:
            yield driver
        finally:
            driver.quit()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Daemon:
    """The daemon as a real process on a real port, and plain HTTP against it."""

    proc: subprocess.Popen[bytes]
    base: str

    def call(self, method: str, path: str, body: Any = None, bearer: str = "") -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if bearer:
            req.add_header("Authorization", f"Bearer {bearer}")
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read()
        return json.loads(text) if text else None

    def status_of(self, method: str, path: str, bearer: str = "") -> int:
        try:
            self.call(method, path, bearer=bearer)
        except urllib.error.HTTPError as exc:
            return exc.code
        return 200

    def create_task(self, **body: Any) -> dict[str, Any]:
        task: dict[str, Any] = self.call("POST", "/v1/tasks", body)
        return task

    def task(self, task_id: str, wait: float = 0) -> dict[str, Any]:
        task: dict[str, Any] = self.call("GET", f"/v1/tasks/{task_id}?wait={wait}")
        return task

    def finished(self, task_id: str) -> dict[str, Any]:
        task = self.task(task_id, wait=20)
        assert task["status"] not in ("pending", "running"), task
        return task

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_daemon(*args: str, port: int | None = None) -> Daemon:
    daemon = _spawn(args, port or free_port())
    started(daemon.proc)
    return _until_up(daemon)


def _spawn(args: tuple[str, ...], port: int) -> Daemon:
    """The daemon's process, started; not yet listening."""
    command = [sys.executable, "-m", "operator_server", "serve", "--port", str(port)]
    command += ["--secret", "console-test", "--store-path", ":memory:", "--log-format", "json"]
    proc = subprocess.Popen(
        [*command, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return Daemon(proc, f"http://127.0.0.1:{port}")


class Spares:
    """A fresh daemon per test, started while the test before it runs.

    Starting one (a Python process importing the daemon) is most of a console
    test's set-up: 1-2 s on a busy 2-core machine. Each ``take`` hands out the
    daemon started at the previous ``take`` with the same arguments, and once
    that one answers starts the next. A daemon nobody took yet belongs to no
    test (``tests/processes.py`` would stop it when the current one ends);
    ``close`` stops those."""

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, ...], Daemon] = {}

    def take(self, *args: str) -> Daemon:
        daemon = self._waiting.pop(args, None)
        if daemon is None or daemon.proc.poll() is not None:  # the first, or one that died
            daemon = _spawn(args, free_port())
        started(daemon.proc)
        _until_up(daemon)
        self._waiting[args] = _spawn(args, free_port())
        return daemon

    def close(self) -> None:
        for daemon in self._waiting.values():
            daemon.proc.kill()
            daemon.proc.wait()
        self._waiting.clear()


def _until_up(daemon: Daemon) -> Daemon:
    proc = daemon.proc
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited with {proc.returncode}")
        try:
            daemon.call("GET", "/v1/healthz")
            return daemon
        except OSError:
            time.sleep(0.05)  # polling for the port to open: nothing to wait on
    daemon.stop()
    raise AssertionError("daemon did not come up")


# Roles as the accessibility tree names them, and the elements that can have them here.
_ROLE_TAGS = {
    "button": "button",
    "textbox": "input, textarea",
    "combobox": "select",
    "checkbox": "input",
    "radio": "input",
    "radiogroup": "fieldset",
}


def control(scope: WebDriver | WebElement, role: str, name: str) -> WebElement:
    """The one visible control with this role and accessible name inside ``scope``."""
    # Live parts of the page (the task list) are redrawn as events arrive: an
    # element can go stale between finding and asking; then look again.
    for _ in range(20):
        try:
            found = [
                el
                for el in scope.find_elements("css selector", _ROLE_TAGS[role])
                if el.is_displayed() and el.aria_role == role and el.accessible_name == name
            ]
        except StaleElementReferenceException:
            continue
        assert len(found) == 1, f"expected one {role} named {name!r}, found {len(found)}"
        return found[0]
    raise AssertionError(f"{role} {name!r}: the page kept changing under the search")


def has_control(scope: WebDriver | WebElement, role: str, name: str) -> bool:
    for _ in range(20):
        try:
            return any(
                el.is_displayed() and el.aria_role == role and el.accessible_name == name
                for el in scope.find_elements("css selector", _ROLE_TAGS[role])
            )
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{role} {name!r}: the page kept changing under the search")


def until(driver: WebDriver, condition: Callable[[], T], timeout: float = 15) -> T:
    """Wait for ``condition()`` to be truthy and return it (WebDriverWait, no sleeps).

    An element redrawn while the condition reads it (stale) is a page still
    changing: the condition is asked again, as for a falsy answer.  So is an
    element of a document that navigation just replaced, which chromedriver
    reports not as stale but as an inspector error (seen once in CI, reading
    the body of a page whose form had just been posted)."""

    def asked() -> T | None:
        try:
            return condition()
        except WebDriverException as exc:
            if "does not belong to the document" not in str(exc):
                raise
            return None

    result: T = WebDriverWait(
        driver, timeout, ignored_exceptions=(AssertionError, StaleElementReferenceException)
    ).until(lambda _: asked())
    return result


def severe_log_entries(driver: WebDriver) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = driver.get_log("browser")
    return [e for e in entries if e.get("level") == "SEVERE"]


def own_sid(page: WebDriver) -> str:
    """The signed-in session's whole id (the bar shows it short; the chip holds it)."""
    sid: str = page.find_element("css selector", "#who button.id").get_attribute("data-id") or ""
    return sid


def open_task(page: WebDriver, task_id: str) -> None:
    """Click the task's row in the list (its button shows the id short)."""
    until(
        page, lambda: page.find_elements("css selector", f'#task-rows tr[data-task-id="{task_id}"]')
    )
    button = page.find_element("css selector", f'#task-rows tr[data-task-id="{task_id}"] button')
    assert task_id.endswith(button.text.removeprefix("t-…")), button.text
    button.click()
    until(page, lambda: shown_task(page) == task_id)


def shown_task(page: WebDriver) -> str | None:
    """The id of the task whose page is open."""
    found: str | None = page.execute_script(
        "const p = document.getElementById('task-page');"
        "return p.hidden ? null : p.dataset.taskId || null;"
    )
    return found


# The api_token of the daemons the sign-in tests start (``guarded``).
BOOT = "console-bootstrap"
