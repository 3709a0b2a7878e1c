"""A provider serving its JWKS on a real port, and verifiers configured for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from operator_server.config import JwtSettings, load_settings
from tests.auth.idp import AUDIENCE, ISSUER, Provider


def jwt_settings(**keys: Any) -> JwtSettings:
    """``[auth.jwt]`` for the test provider, read through the config schema."""
    values = {"issuer": ISSUER, "audience": AUDIENCE, **keys}
    settings = load_settings(env={}, overrides={f"auth.jwt.{k}": v for k, v in values.items()})
    assert settings.auth.jwt is not None
    return settings.auth.jwt


class Clock:
    """Monotonic time the test moves by hand: the JWKS refetch interval
    passes when the test says so, not after a sleep."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def idp() -> AsyncIterator[tuple[Provider, str]]:
    """A provider with one RSA key ``k1``, and the URL of its JWKS."""
    provider = Provider()
    provider.add("k1", "RS256")
    server = await provider.serve()
    try:
        yield provider, str(server.make_url("/jwks.json"))
    finally:
        if provider.stall is not None:
            provider.stall.set()
        await server.close()
