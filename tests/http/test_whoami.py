"""``GET /v1/whoami`` against a real daemon: every kind of principal is told
who it is and what it holds, and a caller that is no principal is refused."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

from tests.auth.idp import AUDIENCE, ISSUER, Provider
from tests.auth.test_keys import ADMIN, BOOT, bearer, error_of, make_key
from tests.conftest import Server


async def test_the_bootstrap_token_is_told_it_is_bootstrap_and_the_admin(server: Server) -> None:
    client = await server(api_token=BOOT)
    resp = await client.get("/v1/whoami", headers=ADMIN)
    assert resp.status == 200
    assert await resp.json() == {
        "name": "bootstrap",
        "via": "bootstrap",
        "scopes": ["admin"],
        "admin": True,
        "expires_at": None,
    }


async def test_a_key_is_told_its_name_scopes_and_expiry_and_needs_no_scope_to_ask(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    made = await make_key(
        client, "tasks:read", "operate:review-*", name="reviewer", expires_in_s=3600
    )
    resp = await client.get("/v1/whoami", headers=bearer(made["key"]))
    assert resp.status == 200
    body = await resp.json()
    assert body == {
        "name": "key:reviewer",
        "via": "key",
        "scopes": ["operate:review-*", "tasks:read"],
        "admin": False,
        "expires_at": made["expires_at"],
    }
    assert made["key"] not in json.dumps(body)  # never the credential itself


async def test_no_credential_or_a_refused_one_is_401_with_its_code(server: Server) -> None:
    client = await server(api_token=BOOT)
    missing = await client.get("/v1/whoami")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await error_of(missing))[:2] == (401, "unauthorized")
    wrong = await client.get("/v1/whoami", headers=bearer("osk_0123456789abcdef_nope"))
    assert (await error_of(wrong))[:2] == (401, "bad_credentials")
    made = await make_key(client, "tasks:read")
    assert (await client.delete(f"/v1/keys/{made['id']}", headers=ADMIN)).status == 204
    revoked = await client.get("/v1/whoami", headers=bearer(made["key"]))
    assert (await error_of(revoked))[:2] == (401, "key_revoked")


async def test_an_open_daemon_tells_a_loopback_caller_without_a_credential_it_is_local(
    server: Server,
) -> None:
    client = await server()
    resp = await client.get("/v1/whoami")
    assert resp.status == 200
    body = await resp.json()
    assert (body["name"], body["via"], body["admin"]) == ("local", "loopback", True)


async def test_a_jwt_is_told_its_issuer_qualified_name_scopes_and_expiry(
    server: Server, tmp_path: Path
) -> None:
    provider = Provider()
    provider.add("k1", "ES256")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(provider.jwks()))
    client = await server(
        api_token=BOOT,
        auth__jwt__issuer=ISSUER,
        auth__jwt__audience=AUDIENCE,
        auth__jwt__jwks_file=str(jwks),
    )
    exp = int(time.time()) + 600
    token = provider.token(sub="ada", scope="tasks:read operate:main", exp=exp)
    resp = await client.get("/v1/whoami", headers=bearer(token))
    assert resp.status == 200
    body = await resp.json()
    assert (body["name"], body["via"]) == (f"{ISSUER}#ada", "jwt")
    assert (body["scopes"], body["admin"]) == (["operate:main", "tasks:read"], False)
    assert datetime.fromisoformat(body["expires_at"]).timestamp() == exp
