"""End to end: ``Authorization: Bearer <JWT>`` on the daemon's own routes.

The authenticator hands a JWT-shaped bearer credential to the app's verifier
and checks each route's scope against the principal it answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from operator_server.app import build_app, listening_on
from operator_server.auth.jwks import KeySet
from operator_server.auth.jwt import JwtVerifier
from tests.auth.conftest import Clock
from tests.auth.idp import AUDIENCE, ISSUER, Provider
from tests.conftest import make_settings
from tests.wsop import connect, expect

BOOTSTRAP = "bootstrap-token"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def daemon(
    aiohttp_client: Any, idp: tuple[Provider, str]
) -> AsyncIterator[tuple[TestClient[Any, Any], Provider, Clock]]:
    """A daemon with an api_token and [auth.jwt] for the test provider; its
    verifier's clock is the test's, so the JWKS refetch interval passes when
    the test moves it."""
    provider, url = idp
    settings = make_settings(
        api_token=BOOTSTRAP,
        auth__jwt__issuer=ISSUER,
        auth__jwt__audience=AUDIENCE,
        auth__jwt__jwks_url=url,
        auth__jwt__claim_scopes={"groups=reviewers": ["operate:review-*"]},
    )
    assert settings.auth.jwt is not None
    clock = Clock()
    verifier = JwtVerifier(settings.auth.jwt, keys=KeySet(settings.auth.jwt, clock=clock))
    app = build_app(settings, jwt=verifier)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    listening_on(app, str(client.make_url("")).rstrip("/"))
    yield client, provider, clock


async def test_a_jwt_with_tasks_create_creates_a_task_and_one_without_it_gets_403(
    daemon: tuple[TestClient[Any, Any], Provider, Clock],
) -> None:
    client, provider, _ = daemon
    allowed = provider.token(scope="openid tasks:create tasks:read")
    resp = await client.post(
        "/v1/tasks", json={"agent": "echo", "directive": "hi"}, headers=bearer(allowed)
    )
    assert resp.status == 202, await resp.text()
    task = await resp.json()
    resp = await client.get(f"/v1/tasks/{task['id']}", headers=bearer(allowed))
    assert resp.status == 200

    lacking = provider.token(scope="tasks:read")
    resp = await client.post(
        "/v1/tasks", json={"agent": "echo", "directive": "hi"}, headers=bearer(lacking)
    )
    assert resp.status == 403
    error = (await resp.json())["error"]
    assert error["code"] == "forbidden" and "tasks:create" in error["message"]


async def test_refused_jwts_answer_401_with_their_code_and_a_challenge(
    daemon: tuple[TestClient[Any, Any], Provider, Clock],
) -> None:
    client, provider, _ = daemon
    for token, code, says in (
        (provider.token(scope="tasks:read", exp=1000, iat=900), "token_expired", "expired"),
        (provider.token(scope="tasks:read", aud="elsewhere"), "bad_credentials", "audience"),
    ):
        resp = await client.get("/v1/tasks", headers=bearer(token))
        assert resp.status == 401
        assert "WWW-Authenticate" in resp.headers
        error = (await resp.json())["error"]
        assert error["code"] == code and says in error["message"]


async def test_an_unreachable_jwks_answers_503_jwks_unavailable(
    daemon: tuple[TestClient[Any, Any], Provider, Clock],
) -> None:
    client, provider, _ = daemon
    provider.status = 502
    resp = await client.get("/v1/tasks", headers=bearer(provider.token(scope="tasks:read")))
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "jwks_unavailable"


async def test_a_session_minted_with_a_jwt_lives_on_across_a_key_rotation(
    daemon: tuple[TestClient[Any, Any], Provider, Clock],
) -> None:
    client, provider, clock = daemon
    person = provider.token(groups=["reviewers"])
    resp = await client.post("/v1/operators", json={"roles": ["review-1"]}, headers=bearer(person))
    assert resp.status == 201, await resp.text()
    session = await resp.json()
    ws = await connect(client, session["sid"], session["token"])

    # The provider rotates to k2; past jwks_refresh_s the daemon fetches it once.
    provider.add("k2", "ES256")
    provider.published.remove("k1")
    clock.now += 30
    rotated = provider.token("k2", scope="tasks:create")
    resp = await client.post(
        "/v1/tasks",
        json={"directive": "review", "agent": "coder", "operator": {"role": "review-1"}},
        headers=bearer(rotated),
    )
    assert resp.status == 202, await resp.text()
    assert provider.hits == 2
    # The session minted under the old key still serves the new task.
    await expect(ws, "hook_before")
    await ws.close()
