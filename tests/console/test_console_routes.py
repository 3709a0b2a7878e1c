"""The console's HTTP side: where it lives, what it ships, and its headers."""

from __future__ import annotations

import re

import aiohttp
import pytest

from operator_server.console import STATIC_DIR
from tests.conftest import Server
from tests.wsop import connect, mint


async def test_the_root_redirects_to_the_console(server: Server) -> None:
    client = await server()
    for path in ("/", "/console"):
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 302
        assert resp.headers["Location"] == "/console/"


async def test_the_console_page_and_its_files_are_served_with_their_types(server: Server) -> None:
    client = await server()
    page = await client.get("/console/")
    assert page.status == 200
    assert page.content_type == "text/html"
    html = await page.text()
    assert '<script type="module" src="/console/main.js">' in html
    for name, kind in (("main.js", "text/javascript"), ("console.css", "text/css")):
        resp = await client.get(f"/console/{name}")
        assert resp.status == 200
        assert resp.content_type == kind


async def test_every_console_response_forbids_inline_script_and_other_origins(
    server: Server,
) -> None:
    client = await server()
    for path in ("/console/", "/console/main.js", "/console/config.json"):
        csp = (await client.get(path)).headers["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["script-src"] == "'self'"
        host = f"{client.host}:{client.port}"
        assert directives["connect-src"] == f"'self' ws://{host}"
        assert "unsafe-inline" not in csp and "http" not in csp


def test_the_shipped_files_load_nothing_from_elsewhere_parse_no_markup_and_persist_no_secret() -> (
    None
):
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"https?://", text.replace("http://www.w3.org/2000/svg", "")), path
        assert not re.search(r"\.(inner|outer)HTML\b|insertAdjacentHTML|document\.write", text), (
            path
        )
        # localStorage outlives the tab: it holds "Notify me"'s on/off alone (a
        # preference of the browser), never a session or a key.
        used = re.findall(r"localStorage\s*[.\[]\s*(\w+)\(([^,)]*)", text)
        if path.name == "notify.js":
            assert used == [("getItem", "CHOICE_KEY"), ("setItem", "CHOICE_KEY")], used
        else:
            assert not re.search(r"localStorage\s*[.\[]", text), path
        if path.suffix == ".html":
            assert not re.search(r"<script(?![^>]*\bsrc=)", text), "inline script"
            assert not re.search(r"\s(on\w+|style)=", text), "inline handler or style"


async def test_only_shipped_files_are_served(server: Server) -> None:
    client = await server()
    for path in ("/console/nope.js", "/console/..%2Fapp.py", "/console/%2e%2e/__init__.py"):
        assert (await client.get(path)).status == 404


async def test_config_says_whether_an_api_token_is_needed(server: Server) -> None:
    open_client = await server()
    assert await (await open_client.get("/console/config.json")).json() == {
        "api_token_required": False
    }
    guarded = await server(api_token="t0ken")
    assert await (await guarded.get("/console/config.json")).json() == {"api_token_required": True}


async def test_the_console_origin_may_open_the_socket_whatever_allowed_origins_says(
    server: Server,
) -> None:
    client = await server(allowed_origins=["https://console.example"])
    sid, token = await mint(client)
    ws = await connect(client, sid, token, origin=f"http://{client.host}:{client.port}")
    assert not ws.closed
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await connect(client, sid, token, origin=f"http://{client.host}:{client.port + 1}")
    assert refused.value.status == 403


def _directives(csp: str) -> dict[str, str]:
    return dict(d.strip().split(" ", 1) for d in csp.split(";"))


async def test_redirects_404s_and_405s_under_the_console_carry_its_csp_and_nosniff(
    server: Server,
) -> None:
    """No handler writes these (the router and the error middleware do): they
    must still forbid framing and sniffing, like every console response."""
    client = await server()
    for method, path, status in (
        ("GET", "/", 302),
        ("GET", "/console", 302),
        ("GET", "/console/nope", 404),
        ("GET", "/console/a/b", 404),
        ("POST", "/console/", 405),
        ("DELETE", "/console/config.json", 405),
    ):
        resp = await client.request(method, path, allow_redirects=False)
        assert resp.status == status, (method, path)
        assert resp.headers.get("X-Content-Type-Options") == "nosniff", (method, path)
        csp = _directives(resp.headers.get("Content-Security-Policy", ""))
        assert csp.get("default-src") == "'none'", (method, path)
        assert csp.get("frame-ancestors") == "'none'", (method, path)


async def test_the_console_may_never_be_framed(server: Server) -> None:
    """``frame-ancestors 'none'``: no other page may frame the console (clickjacking
    an operator into approving a hook)."""
    client = await server()
    for path in ("/console/", "/console/main.js", "/console/config.json"):
        resp = await client.get(path)
        assert _directives(resp.headers["Content-Security-Policy"])["frame-ancestors"] == "'none'"
