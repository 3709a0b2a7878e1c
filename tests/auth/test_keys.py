"""API keys against a real daemon: made over REST and by the CLI, used as a
Bearer, listed without their secret, refused once expired or revoked."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from operator_server.auth.authenticator import AUTHENTICATOR
from operator_server.auth.keys import ApiKeys
from tests.conftest import Server
from tests.processes import started

BOOT = "bootstrap-token"
ADMIN = {"Authorization": f"Bearer {BOOT}"}
KEY_TEXT = re.compile(r"^osk_[0-9a-f]{16}_[A-Za-z0-9]{43}$")
TASK = {"agent": "echo", "directive": "x"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def error_of(resp: aiohttp.ClientResponse) -> tuple[int, str, str]:
    body = await resp.json()
    return resp.status, body["error"]["code"], body["error"]["message"]


async def make_key(client: TestClient[Any, Any], *scopes: str, **more: Any) -> dict[str, Any]:
    body = {"name": more.pop("name", "ci"), "scopes": list(scopes), **more}
    resp = await client.post("/v1/keys", json=body, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    made: dict[str, Any] = await resp.json()
    return made


async def test_a_key_is_shown_once_listed_without_its_secret_and_works_for_its_scopes(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    made = await make_key(client, "tasks:create", "tasks:read", name="ci-bot", note="for CI")
    assert KEY_TEXT.match(made["key"]) and made["key"].startswith(f"osk_{made['id']}_")
    assert made["scopes"] == ["tasks:create", "tasks:read"]
    assert made["note"] == "for CI" and made["expires_at"] is None
    secret = made["key"].rsplit("_", 1)[1]

    listed = await client.get("/v1/keys", headers=ADMIN)
    text = await listed.text()
    assert listed.status == 200 and secret not in text and made["key"] not in text
    (view,) = (await listed.json())["keys"]
    assert view["id"] == made["id"] and "key" not in view and view["revoked_at"] is None

    created = await client.post("/v1/tasks", json=TASK, headers=bearer(made["key"]))
    assert created.status == 202
    task_id = (await created.json())["id"]
    assert (await client.get(f"/v1/tasks/{task_id}", headers=bearer(made["key"]))).status == 200
    # Holding tasks:read and tasks:create is not holding tasks:cancel.
    cancel = await client.post(f"/v1/tasks/{task_id}/cancel", headers=bearer(made["key"]))
    status, code, message = await error_of(cancel)
    assert (status, code) == (403, "forbidden") and "tasks:cancel" in message
    assert "key:ci-bot" in message


async def test_revoking_a_key_refuses_it_at_once_even_where_it_was_cached(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    made = await make_key(client, "tasks:read")
    assert (await client.get("/v1/tasks", headers=bearer(made["key"]))).status == 200
    app: web.Application = client.app  # type: ignore[assignment]
    assert app[AUTHENTICATOR].cached == 1  # verified once, then served from the cache

    revoked = await client.delete(f"/v1/keys/{made['id']}", headers=ADMIN)
    assert revoked.status == 204
    refused = await client.get("/v1/tasks", headers=bearer(made["key"]))
    status, code, message = await error_of(refused)
    assert (status, code) == (401, "key_revoked") and made["id"] in message
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    (view,) = (await (await client.get("/v1/keys", headers=ADMIN)).json())["keys"]
    assert view["revoked_at"] is not None  # still listed: who held it stays known

    gone = await client.delete("/v1/keys/0123456789abcdef", headers=ADMIN)
    assert (await error_of(gone))[:2] == (404, "not_found")


async def test_an_expired_key_is_refused_naming_when_it_expired(server: Server) -> None:
    client = await server(api_token=BOOT)
    app: web.Application = client.app  # type: ignore[assignment]
    # Made an hour ago with a minute to live: the daemon's own store and rules.
    an_hour_ago = ApiKeys(app[AUTHENTICATOR].keys.book, clock=lambda: time.time() - 3600)
    record, text = await an_hour_ago.create("old", ["tasks:read"], expires_in_s=60, by="test")
    status, code, message = await error_of(await client.get("/v1/tasks", headers=bearer(text)))
    assert (status, code) == (401, "key_expired") and "expired at" in message
    still = await client.get("/v1/keys", headers=ADMIN)
    (view,) = (await still.json())["keys"]
    assert view["expires_at"] is not None and view["id"] == record.id


async def test_malformed_unknown_and_wrong_secret_keys_are_bad_credentials(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    made = await make_key(client, "tasks:read")
    key_id = made["id"]
    wrong_secret = f"osk_{key_id}_{'A' * 43}"
    for key in ("osk_nothex_abc", f"osk_{'f' * 16}_{'A' * 43}", wrong_secret, made["key"] + "x"):
        status, code, _ = await error_of(await client.get("/v1/tasks", headers=bearer(key)))
        assert (status, code) == (401, "bad_credentials"), key
    missing = await client.get("/v1/tasks")
    assert (await error_of(missing))[:2] == (401, "unauthorized")
    assert missing.headers["WWW-Authenticate"] == "Bearer"


async def test_creating_a_key_with_unknown_scopes_is_refused_naming_them(server: Server) -> None:
    client = await server(api_token=BOOT)
    body = {"name": "x", "scopes": ["tasks:read", "tasks:write", "operate:", "root"]}
    status, code, message = await error_of(await client.post("/v1/keys", json=body, headers=ADMIN))
    assert (status, code) == (400, "bad_request")
    for name in ("tasks:write", "operate:", "root"):
        assert name in message
    assert "tasks:read," not in message.split("unknown scope(s):")[1].split("(")[0]
    for bad in ({"name": "x", "scopes": []}, {"scopes": ["admin"]}, {"name": "x"}):
        resp = await client.post("/v1/keys", json=bad, headers=ADMIN)
        assert (await error_of(resp))[:2] == (400, "bad_request"), bad
    assert (await (await client.get("/v1/keys", headers=ADMIN)).json())["keys"] == []


async def test_managing_keys_needs_admin(server: Server) -> None:
    client = await server(api_token=BOOT)
    made = await make_key(client, "tasks:create", "tasks:read", "operate:*")
    for method, path in (("GET", "/v1/keys"), ("POST", "/v1/keys"), ("DELETE", "/v1/keys/x")):
        resp = await client.request(method, path, json={}, headers=bearer(made["key"]))
        status, code, message = await error_of(resp)
        assert (status, code) == (403, "forbidden") and "'admin'" in message


async def keys_cli(*args: str) -> tuple[int, str, str]:
    """``operator-server keys ARGS`` as a real process: exit code, stdout, stderr."""
    proc = started(
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "operator_server",
            "keys",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("secret", ["", "configured-secret"])
async def test_a_key_made_by_the_cli_works_in_the_daemon_and_after_a_restart(
    server: Server, tmp_path: Path, secret: str
) -> None:
    db = str(tmp_path / "keys.sqlite")
    code, out, err = await keys_cli(
        "create", "--store-path", db, "--name", "deploy", "--scope", "tasks:read"
    )
    assert code == 0, err
    key = out.strip().splitlines()[-1]
    assert KEY_TEXT.match(key)
    code, out, _ = await keys_cli("list", "--store-path", db)
    assert code == 0 and '"deploy"' in out and key not in out

    for run in range(2):  # each start has a secret of its own when none is configured
        client = await server(api_token=BOOT, store__path=db, secret=secret)
        resp = await client.get("/v1/tasks", headers=bearer(key))
        assert resp.status == 200, (run, await resp.text())
        await client.close()

    key_id = key.split("_")[1]
    code, _, err = await keys_cli("revoke", key_id, "--store-path", db)
    assert code == 0, err
    client = await server(api_token=BOOT, store__path=db)
    assert (await error_of(await client.get("/v1/tasks", headers=bearer(key))))[1] == "key_revoked"
    await client.close()
    code, _, err = await keys_cli("revoke", "0000000000000000", "--store-path", db)
    assert code == 1 and "no API key" in err
    code, _, err = await keys_cli(
        "create", "--store-path", db, "--name", "n", "--scope", "tasks:write"
    )
    assert code == 2 and "tasks:write" in err
