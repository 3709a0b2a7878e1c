"""With no api_token, a request must name the daemon by a loopback host (DNS rebinding)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Server
from tests.http.test_bad_input import raw_http

REFUSED = [
    "evil.example",
    "evil.example:7786",
    "127.0.0.1.nip.io",
    "localhost.evil.example",
    # Contains ".localhost" without ending with it: a "contains" check would pass it.
    "x.localhost.evil.example",
    "x.localhost.evil.example:7786",
    "10.0.0.5",
    "[2001:db8::1]:80",
]
ACCEPTED = [
    "127.0.0.1",
    "127.0.0.1:7786",
    "127.0.0.2",
    "localhost",
    "LocalHost:7786",
    "localhost.",
    "app.localhost:7786",
    "[::1]:7786",
]
TASK = {"agent": "echo", "directive": {"n": 1}}


async def answer(resp: Any) -> tuple[int, str | None]:
    body = await resp.json()
    return resp.status, (body.get("error") or {}).get("code")


@pytest.mark.parametrize("host", REFUSED)
async def test_an_open_daemon_refuses_a_request_naming_another_host(
    server: Server, host: str
) -> None:
    client = await server()
    headers = {"Host": host}
    async with client.post("/v1/tasks", json=TASK, headers=headers) as resp:
        assert await answer(resp) == (403, "host_not_allowed")
    async with client.get("/v1/healthz", headers=headers) as resp:
        assert await answer(resp) == (403, "host_not_allowed")
    async with client.post("/v1/operators", json={"roles": ["r"]}, headers=headers) as resp:
        assert await answer(resp) == (403, "host_not_allowed")
    upgrade = {**headers, "Upgrade": "websocket", "Connection": "Upgrade"}
    async with client.get("/v1/operators/op-x/ws", headers=upgrade) as resp:
        assert await answer(resp) == (403, "host_not_allowed")
    async with client.get("/v1/tasks", headers={"Host": "127.0.0.1"}) as resp:
        assert (await resp.json())["tasks"] == []  # nothing was created


@pytest.mark.parametrize("host", ACCEPTED)
async def test_an_open_daemon_answers_a_request_naming_it_by_a_loopback_host(
    server: Server, host: str
) -> None:
    client = await server()
    async with client.post("/v1/tasks", json=TASK, headers={"Host": host}) as resp:
        assert resp.status == 202


async def test_public_url_names_a_host_a_local_proxy_may_pass_on(server: Server) -> None:
    client = await server(public_url="https://ops.example.com/base")
    async with client.get("/v1/healthz", headers={"Host": "ops.example.com"}) as resp:
        assert resp.status == 200
    async with client.get("/v1/healthz", headers={"Host": "other.example.com"}) as resp:
        assert await answer(resp) == (403, "host_not_allowed")


async def test_with_an_api_token_any_host_is_answered_and_the_token_decides(
    server: Server,
) -> None:
    client = await server(api_token="tok")
    evil = {"Host": "evil.example"}
    async with client.post("/v1/tasks", json=TASK, headers=evil) as resp:
        assert await answer(resp) == (401, "unauthorized")
    authorized = {**evil, "Authorization": "Bearer tok"}
    async with client.post("/v1/tasks", json=TASK, headers=authorized) as resp:
        assert resp.status == 202


async def test_a_request_with_no_host_at_all_comes_from_no_browser_and_is_answered(
    server: Server,
) -> None:
    client = await server()
    status, _, _ = await raw_http(client, b"GET /v1/healthz HTTP/1.0\r\n\r\n")
    assert status == 200
