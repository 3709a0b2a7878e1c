"""One Chromium per module; a fresh daemon process (a fresh origin) per test,
started while the test before it runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from tests.console.browser import (
    BOOT,
    Daemon,
    Spares,
    browser_missing,
    chromium,
    has_control,
    severe_log_entries,
    until,
)
from tests.needs import unavailable


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    missing = browser_missing()
    if missing:
        unavailable(missing)
    with chromium() as driver:
        yield driver


@pytest.fixture(scope="session")
def spares() -> Iterator[Spares]:
    """Each test's daemon, started while the test before it ran."""
    waiting = Spares()
    yield waiting
    waiting.close()


@pytest.fixture
def daemon(spares: Spares) -> Iterator[Daemon]:
    d = spares.take()
    yield d
    d.stop()


@pytest.fixture
def page(browser: WebDriver, daemon: Daemon) -> Iterator[WebDriver]:
    """The console, opened at the daemon's root; afterwards the browser log must hold no error."""
    severe_log_entries(browser)  # drop what an earlier test left (read once, then gone)
    browser.get(daemon.base + "/")
    yield browser
    errors = severe_log_entries(browser)
    browser.get("about:blank")  # close this origin's socket before its daemon stops
    assert errors == [], f"the browser console logged errors: {errors}"


@pytest.fixture
def guarded(browser: WebDriver, spares: Spares) -> Iterator[tuple[WebDriver, Daemon]]:
    """The console of a daemon with an api_token; no browser error afterwards."""
    daemon = spares.take("--api-token", BOOT)
    try:
        severe_log_entries(browser)
        browser.get(daemon.base + "/console/")
        until(browser, lambda: has_control(browser, "textbox", "API key"))
        yield browser, daemon
        errors = severe_log_entries(browser)
        browser.get("about:blank")
        assert errors == [], f"the browser console logged errors: {errors}"
    finally:
        daemon.stop()
