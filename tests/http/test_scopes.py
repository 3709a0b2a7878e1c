"""Every route of the OpenAPI document, walked with a key lacking each scope it
declares: each answers 403 ``forbidden`` naming that scope, and lets in a key
holding only it.  A route that declares no scope and takes no other
credential must be one of the few public ones, so a new route without a
declared scope fails here; one open to any principal (an empty scope list)
must be one of the few listed as such, and still refuses a caller with no
credential."""

from __future__ import annotations

import re
from typing import Any

from aiohttp.test_utils import TestClient

from operator_server.auth.principal import OPERATE_ANY, Scope, operate
from tests.auth.test_keys import ADMIN, BOOT, bearer, make_key
from tests.conftest import Server

# Routes any caller may use: liveness, the contract itself, the console's files.
PUBLIC = {
    ("get", "/v1/healthz"),
    ("get", "/v1/openapi.json"),
    ("get", "/"),
    ("get", "/console"),
    ("get", "/console/"),
    ("get", "/console/config.json"),
    ("get", "/console/{name}"),
    # An action link: the signed token in the path is its own credential.
    ("get", "/v1/links/{token}"),
    ("post", "/v1/links/{token}"),
}
# Routes any principal may use, whatever it holds (it must still be one).
# Any principal, filtered per request by the roles it may operate (``operate:<glob>``).
ANY_PRINCIPAL = {
    ("get", "/v1/whoami"),
    ("get", "/v1/requests"),
    ("get", "/v1/requests/{req_id}"),
    ("post", "/v1/requests/{req_id}/reply"),
    ("post", "/v1/requests/reply"),
}
# Credentials that are not principals (a session's token, a worker's, the scraper's).
NOT_PRINCIPALS = {"session_token", "worker_credential", "metrics_token"}
EVERY = [*(str(s) for s in Scope if s is not Scope.ADMIN), operate("*")]


def without(scope: str) -> list[str]:
    """Every scope but ``scope`` (and never ``admin``, which implies it)."""
    if scope == OPERATE_ANY:
        return [s for s in EVERY if not s.startswith("operate:")]
    return [s for s in EVERY if s != scope]


def only(scope: str) -> list[str]:
    return [operate("*") if scope == OPERATE_ANY else scope]


async def call(
    client: TestClient[Any, Any], method: str, path: str, key: str
) -> tuple[int, dict[str, Any]]:
    """The status and the error of ``method path``: ``{sid}`` is a session
    minted for the call (its holder's token is tried before a principal's),
    any other path parameter made up; an empty ``key`` sends no credential."""
    if "{sid}" in path:
        minted = await client.post("/v1/operators", json={}, headers=ADMIN)
        path = path.replace("{sid}", (await minted.json())["sid"])
    concrete = re.sub(r"\{[^}]+\}", "x-unknown", path)
    headers = bearer(key) if key else {}
    async with client.request(method, concrete, headers=headers) as resp:
        error = (await resp.json())["error"] if resp.status >= 400 else {}
        return resp.status, error


async def test_every_route_declares_its_scopes_and_enforces_each(server: Server) -> None:
    client = await server(api_token=BOOT)
    doc = await (await client.get("/v1/openapi.json")).json()
    keys: dict[tuple[str, ...], str] = {}

    async def key_with(scopes: list[str]) -> str:
        if tuple(scopes) not in keys:
            keys[tuple(scopes)] = (await make_key(client, *scopes))["key"]
        return keys[tuple(scopes)]

    walked = 0
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            alternatives = op.get("security", [])
            needs = [s for alt in alternatives for name, s in alt.items() if name == "api_key"]
            others = {name for alt in alternatives for name in alt} - {"api_key"}
            if not needs:
                assert (method, path) in PUBLIC or (others and others <= NOT_PRINCIPALS), (
                    f"{method.upper()} {path} declares no scope and takes no other credential"
                )
                continue
            (scopes,) = needs
            if not scopes:
                assert (method, path) in ANY_PRINCIPAL, (
                    f"{method.upper()} {path} takes a principal but names no scope"
                )
                status, error = await call(client, method, path, "")
                assert (status, error.get("code")) == (401, "unauthorized"), (method, path)
                status, _ = await call(client, method, path, await key_with(["events:read"]))
                assert status not in (401, 403), (method, path, status)
                continue
            for scope in scopes:
                status, error = await call(client, method, path, await key_with(without(scope)))
                assert (status, error.get("code")) == (403, "forbidden"), (method, path, scope)
                assert error["scope"] == scope and repr(scope) in error["message"]
                status, _ = await call(client, method, path, await key_with(only(scope)))
                assert status not in (401, 403), (method, path, scope, status)
            walked += 1
    assert walked >= 12  # tasks, events, operators, keys: the walk reached them
    # The bootstrap token holds them all.
    assert (await client.get("/v1/keys", headers=ADMIN)).status == 200
