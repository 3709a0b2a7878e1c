"""Signing the console in as a principal, in a real Chromium against the daemon
as a real process: the "API key" field takes an API key, the bootstrap token
or a pasted JWT; the bar names the principal; what it may not do is hidden
(the Operators view without admin) or refused in the form before anything is
sent (Join with a role its operate:<glob> scopes do not match)."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from selenium.webdriver.remote.webdriver import WebDriver

from tests.auth.idp import AUDIENCE, ISSUER, Provider
from tests.console.browser import (
    BOOT,
    Daemon,
    control,
    has_control,
    own_sid,
    severe_log_entries,
    start_daemon,
    until,
)
from tests.console.test_console_browser import pending_card, replies_counted


def make_key(daemon: Daemon, name: str, *scopes: str) -> str:
    made = daemon.call("POST", "/v1/keys", {"name": name, "scopes": list(scopes)}, BOOT)
    key: str = made["key"]
    return key


def sign_in(page: WebDriver, credential: str, roles: str, name: str = "Ada") -> None:
    control(page, "textbox", "API key").send_keys(credential)
    control(page, "textbox", "Roles").clear()
    control(page, "textbox", "Roles").send_keys(roles)
    control(page, "textbox", "Name").clear()
    control(page, "textbox", "Name").send_keys(name)
    control(page, "button", "Join").click()


def joined(page: WebDriver) -> None:
    until(page, lambda: page.find_element("id", "conn").text == "connected")


def signed_in_as(page: WebDriver) -> str:
    text: str = until(page, lambda: page.find_element("id", "principal").text)
    return text


def requested(page: WebDriver) -> list[str]:
    """The paths (with query) the page has fetched so far."""
    urls: list[str] = page.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name)"
    )
    return [u.split("/", 3)[3] if u.count("/") >= 3 else u for u in urls]


def operators_shown(page: WebDriver) -> bool:
    shown: bool = page.find_element("id", "operators").is_displayed()
    return shown


def test_a_key_for_review_roles_is_named_refused_main_in_the_form_and_joins_as_review(
    guarded: tuple[WebDriver, Daemon],
) -> None:
    page, daemon = guarded
    key = make_key(daemon, "reviewer", "operate:review-*", "tasks:read")
    sign_in(page, key, "main")
    error = page.find_element("id", "signin-error")
    until(page, lambda: error.text)
    assert error.text == (
        "Could not join: key:reviewer may not operate main "
        "(it may operate roles matching review-*)."
    )
    assert control(page, "textbox", "Roles").get_attribute("aria-invalid") == "true"
    # Refused before sending: the console never asked the server to mint.
    assert not [p for p in requested(page) if p.startswith("v1/operators")]
    assert daemon.call("GET", "/v1/healthz")["operators"]["sessions"] == 0

    control(page, "textbox", "API key").clear()
    sign_in(page, key, "review-1")
    joined(page)
    assert signed_in_as(page) == "Signed in as key:reviewer"
    sid = own_sid(page)
    (view,) = daemon.call("GET", "/v1/operators", bearer=BOOT)["operators"]
    assert (view["sid"], view["minted_by"]) == (sid, "key:reviewer")
    # Not the admin: the Operators view is hidden and never even read; a key
    # without tasks:create is offered no New task.
    until(page, lambda: "v1/tasks?limit=500" in requested(page))
    assert not operators_shown(page)
    assert not [p for p in requested(page) if p.startswith("v1/operators?")]
    assert not has_control(page, "button", "New task")
    # Nor events:read: the list is read once, not followed, and it says so.
    assert page.find_element("id", "tasks-live").text.startswith("not live")
    assert not [p for p in requested(page) if p.startswith("v1/events")]


def test_an_admin_key_is_named_and_shown_the_operators_view(
    guarded: tuple[WebDriver, Daemon],
) -> None:
    page, daemon = guarded
    sign_in(page, make_key(daemon, "ops", "admin"), "main")
    joined(page)
    assert signed_in_as(page) == "Signed in as key:ops"
    sid = own_sid(page)
    until(page, lambda: operators_shown(page))
    until(page, lambda: page.find_elements("css selector", f'#operator-rows tr[data-sid="{sid}"]'))
    minted = page.find_element("css selector", f'#operator-rows tr[data-sid="{sid}"] .minted-by')
    assert minted.text == "minted by key:ops"
    assert has_control(page, "button", "New task")
    # A reload asks again who the stored key is.
    page.refresh()
    joined(page)
    assert signed_in_as(page) == "Signed in as key:ops"
    until(page, lambda: operators_shown(page))


def test_a_revoked_key_is_said_in_terms_of_the_api_key_field(
    guarded: tuple[WebDriver, Daemon],
) -> None:
    page, daemon = guarded
    made = daemon.call("POST", "/v1/keys", {"name": "old", "scopes": ["operate:*"]}, BOOT)
    assert daemon.status_of("DELETE", f"/v1/keys/{made['id']}", bearer=BOOT) == 200
    sign_in(page, made["key"], "main")
    error = page.find_element("id", "signin-error")
    until(page, lambda: error.text)
    assert error.text == (
        'Could not join: this API key was revoked: enter another in the "API key" field of Sign in'
    )
    assert daemon.call("GET", "/v1/healthz")["operators"]["sessions"] == 0
    # The one refusal the browser logged: asking who the key is (no mint was sent).
    (logged,) = severe_log_entries(page)
    assert "/v1/whoami" in logged["message"] and "401" in logged["message"], logged


def test_the_bootstrap_token_still_signs_in_as_bootstrap_the_admin(
    guarded: tuple[WebDriver, Daemon],
) -> None:
    page, _ = guarded
    sign_in(page, BOOT, "main")
    joined(page)
    assert signed_in_as(page) == "Signed in as bootstrap"
    until(page, lambda: operators_shown(page))


def test_a_pasted_jwt_signs_in_by_its_issuer_qualified_name(
    browser: WebDriver, tmp_path: Path
) -> None:
    provider = Provider()
    provider.add("k1", "RS256")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(provider.jwks()))
    daemon = start_daemon(
        "--api-token",
        BOOT,
        "--auth-jwt-issuer",
        ISSUER,
        "--auth-jwt-audience",
        AUDIENCE,
        "--auth-jwt-jwks-file",
        str(jwks),
    )
    try:
        severe_log_entries(browser)
        browser.get(daemon.base + "/console/")
        until(browser, lambda: has_control(browser, "textbox", "API key"))
        token = provider.token(sub="grace", scope="operate:review-* tasks:read tasks:create")
        sign_in(browser, token, "main")
        error = browser.find_element("id", "signin-error")
        until(browser, lambda: "may not operate main" in error.text)
        control(browser, "textbox", "API key").clear()
        sign_in(browser, token, "review-2", name="Grace")
        joined(browser)
        assert signed_in_as(browser) == f"Signed in as {ISSUER}#grace"
        assert not operators_shown(browser)
        assert severe_log_entries(browser) == []
        browser.get("about:blank")
    finally:
        daemon.stop()


def test_an_open_daemon_signs_the_console_in_as_local_with_no_key(
    page: WebDriver, daemon: Daemon
) -> None:
    assert not has_control(page, "textbox", "API key")  # this server needs none
    control(page, "textbox", "Roles").send_keys("main")
    control(page, "button", "Join").click()
    joined(page)
    assert signed_in_as(page) == "Signed in as local"
    until(page, lambda: operators_shown(page))


# Globs as operate:<glob> scopes may hold them, with roles to try each on:
# the console must refuse exactly what Principal.may_operate (fnmatchcase) does.
GLOBS = [
    "review-*",
    "*",
    "main",
    "re?iew",
    "*-[0-9]",
    "[!a]*",
    "[a-c]x",
    "[]]",
    "[!]]x",
    "[c-a]",
    "[a-c-e]",
    "x[-a]",
    "x[a-]",
    "[!-a]",
    "a[",
    "a[b",
    "[\\]",
    "a.b",
    "a+b",
    "(x)|y",
    "$^",
    "ü*",
    "*é",
    "a**b",
    "[^a]",
    "[[]",
    "a/b*",
    "?",
    "{a,b}",
]
ROLES = [
    "review-1",
    "review-",
    "main",
    "mainx",
    "review",
    "reXiew",
    "job-7",
    "job-x",
    "b",
    "a",
    "bx",
    "dx",
    "]",
    "]x",
    "c",
    "d",
    "x-",
    "xa",
    "-",
    "a[",
    "a[b",
    "\\",
    "a.b",
    "axb",
    "aab",
    "(x)|y",
    "y",
    "$^",
    "ü",
    "üx",
    "café",
    "ab",
    "a-b",
    "^",
    "[",
    "a/bc",
    "{a,b}",
    "",
    "a\nb",
    "😀",
    "x😀",
]


def test_the_form_matches_roles_to_globs_exactly_as_the_server_does(
    page: WebDriver,
) -> None:
    expected = {glob: [fnmatch.fnmatchcase(role, glob) for role in ROLES] for glob in GLOBS}
    got = page.execute_async_script(
        """
        const [globs, roles, done] = arguments;
        import("/console/principal.js").then(({ mayOperate }) => {
          const out = {};
          for (const glob of globs) {
            const who = { name: "k", admin: false, scopes: [`operate:${glob}`] };
            out[glob] = roles.map((role) => mayOperate(who, role));
          }
          done(out);
        }, (err) => done(String(err)));
        """,
        GLOBS,
        ROLES,
    )
    assert got == expected


def test_selected_approvals_go_over_the_socket_when_the_batch_route_refuses_the_key(
    guarded: tuple[WebDriver, Daemon],
) -> None:
    """The batch call refused as a whole (the key was revoked while the
    person worked; their seat stays, by its own token): each selected reply
    goes over the socket instead, and none is dropped."""
    page, daemon = guarded
    made = daemon.call(
        "POST", "/v1/keys", {"name": "shift", "scopes": ["operate:*", "tasks:read"]}, BOOT
    )
    sign_in(page, made["key"], "main")
    joined(page)
    body = {"agent": "coder", "directive": "x", "operator": {"role": "main"}}
    tasks = [daemon.call("POST", "/v1/tasks", body, BOOT) for _ in range(2)]
    approvals = [pending_card(page, t["id"], "Approve spawn?") for t in tasks]
    assert daemon.status_of("DELETE", f"/v1/keys/{made['id']}", bearer=BOOT) == 200

    for card in approvals:
        control(card, "checkbox", "Select").click()
    control(page, "button", "Approve selected").click()
    for task in tasks:
        pending_card(page, task["id"], "Do the work")  # approved: the spawn follows
    activity = page.find_element("id", "activity").text
    assert "Batch not sent" in activity and activity.count("Approved (selected)") == 2
    assert replies_counted(daemon) == {("socket", "hook_ack"): 2.0}
    # What the browser logged: the refusals of the revoked key, nothing else.
    logged = [e["message"] for e in severe_log_entries(page)]
    assert any("/v1/requests/reply" in m for m in logged), logged
    assert all("status of 401" in m for m in logged), logged
