"""Who a caller is decides what it may do: minting checks every role claimed,
the session remembers who minted it, and an admin is any principal with
``admin`` — the bootstrap token, a key, or the open daemon's loopback caller."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from tests.auth.test_keys import ADMIN, BOOT, bearer, error_of, make_key
from tests.conftest import Server


async def mint(client: TestClient[Any, Any], key: str | None, roles: list[str]) -> Any:
    headers = bearer(key) if key else {}
    return await client.post("/v1/operators", json={"roles": roles}, headers=headers)


async def test_a_key_mints_only_roles_its_operate_globs_match_and_the_session_names_it(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    reviewer = (await make_key(client, "operate:review-*", name="reviewer"))["key"]

    minted = await mint(client, reviewer, ["review-a", "review-b"])
    assert minted.status == 201, await minted.text()
    op = await minted.json()
    own = await client.get(f"/v1/operators/{op['sid']}", headers=bearer(op["token"]))
    assert (await own.json())["minted_by"] == "key:reviewer"
    listed = await (await client.get("/v1/operators", headers=ADMIN)).json()
    assert [v["minted_by"] for v in listed["operators"]] == ["key:reviewer"]

    refused = await mint(client, reviewer, ["review-c", "main", "ops"])
    status, code, message = await error_of(refused)
    assert (status, code) == (403, "forbidden")
    assert (await refused.json())["error"]["roles"] == ["main", "ops"]
    assert "main, ops" in message and "operate:" in message and "review-c" not in message
    # Nothing was taken by the refused mint.
    assert (await mint(client, reviewer, ["review-c"])).status == 201


async def test_a_key_with_no_operate_scope_may_not_mint_at_all(server: Server) -> None:
    client = await server(api_token=BOOT)
    reader = (await make_key(client, "tasks:read", "tasks:create"))["key"]
    status, code, message = await error_of(await mint(client, reader, []))
    assert (status, code) == (403, "forbidden") and "operate:<glob>" in message


async def test_the_bootstrap_token_and_the_open_loopback_caller_mint_under_their_names(
    server: Server,
) -> None:
    with_token = await server(api_token=BOOT)
    op = await (await mint(with_token, BOOT, ["main"])).json()
    view = await with_token.get(f"/v1/operators/{op['sid']}", headers=bearer(op["token"]))
    assert (await view.json())["minted_by"] == "bootstrap"

    open_daemon = await server()
    op = await (await mint(open_daemon, None, ["main"])).json()
    view = await open_daemon.get(f"/v1/operators/{op['sid']}", headers=bearer(op["token"]))
    assert (await view.json())["minted_by"] == "local"
    # A credential sent to the open daemon is checked, never ignored.
    status, code, _ = await error_of(await mint(open_daemon, "osk_bogus", ["x"]))
    assert (status, code) == (401, "bad_credentials")


async def test_minted_by_is_stored_with_the_session_and_back_after_a_restart(
    server: Server, tmp_path: Path
) -> None:
    db = str(tmp_path / "s.sqlite")
    first = await server(api_token=BOOT, store__path=db)
    key = (await make_key(first, "operate:*", name="desk"))["key"]
    op = await (await mint(first, key, ["main"])).json()
    await first.close()
    second = await server(api_token=BOOT, store__path=db)
    view = await second.get(f"/v1/operators/{op['sid']}", headers=bearer(op["token"]))
    assert view.status == 200 and (await view.json())["minted_by"] == "key:desk"


async def test_forcing_a_session_out_needs_a_principal_with_admin(server: Server) -> None:
    client = await server(api_token=BOOT)
    op = await (await mint(client, BOOT, ["main"])).json()
    operator = (await make_key(client, "operate:*", "tasks:read"))["key"]
    admin = (await make_key(client, "admin", name="root"))["key"]
    for path in (f"/v1/operators/{op['sid']}/pending", f"/v1/operators/{op['sid']}"):
        method = "GET" if path.endswith("pending") else "DELETE"
        resp = await client.request(method, path, headers=bearer(operator))
        status, code, message = await error_of(resp)
        assert (status, code) == (403, "forbidden") and "'admin'" in message
    pending = await client.get(f"/v1/operators/{op['sid']}/pending", headers=bearer(admin))
    assert pending.status == 200
    assert (await client.delete(f"/v1/operators/{op['sid']}", headers=bearer(admin))).status == 204


async def test_a_session_whose_chosen_token_looks_like_a_key_still_opens_itself(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    chosen = f"osk_{'0' * 16}_{'a' * 43}"
    minted = await client.post(
        "/v1/operators", json={"roles": ["main"], "token": chosen}, headers=ADMIN
    )
    sid = (await minted.json())["sid"]
    pending = await client.get(f"/v1/operators/{sid}/pending", headers=bearer(chosen))
    assert pending.status == 200
    assert (await client.delete(f"/v1/operators/{sid}", headers=bearer(chosen))).status == 204
