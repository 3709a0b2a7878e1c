"""The daemon holds one ``JwtVerifier`` when ``[auth.jwt]`` is set, and closes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from operator_server.app import build_app
from operator_server.appkeys import JWT_VERIFIER
from operator_server.config import ConfigError
from tests.auth.idp import AUDIENCE, ISSUER, Provider
from tests.conftest import Server, make_settings


def jwt_keys(**keys: Any) -> dict[str, Any]:
    """``server(**...)`` keyword arguments for an ``[auth.jwt]`` table."""
    values = {"issuer": ISSUER, "audience": AUDIENCE, **keys}
    return {f"auth__jwt__{key}": value for key, value in values.items()}


async def test_without_auth_jwt_the_app_holds_no_verifier(server: Server) -> None:
    client = await server()
    app: web.Application = client.app  # type: ignore[assignment]
    assert app[JWT_VERIFIER] is None


async def test_the_app_verifies_with_the_configured_provider_and_closes_it_on_shutdown(
    server: Server, idp: tuple[Provider, str]
) -> None:
    provider, url = idp
    client = await server(**jwt_keys(jwks_url=url))
    app: web.Application = client.app  # type: ignore[assignment]
    verifier = app[JWT_VERIFIER]
    assert verifier is not None
    who = await verifier.principal(provider.token(scope="tasks:create"))
    assert (who.name, who.scopes) == (f"{ISSUER}#alice", {"tasks:create"})
    assert provider.hits == 1 and not verifier.closed
    await client.close()  # the app's shutdown runs
    assert verifier.closed


def test_a_bad_jwks_file_stops_the_app_from_being_built(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": "none"}))
    settings = make_settings(**jwt_keys(jwks_file=str(path)))
    with pytest.raises(ConfigError, match=r"auth\.jwt\.jwks_file: .*not a JWKS"):
        build_app(settings)
