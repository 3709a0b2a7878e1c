"""The login flow: mint, read, delete, and the WebSocket upgrade's checks."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import Server, create_task, directory_of, engine_of, wait_task
from tests.wsop import connect, expect, mint


async def test_mint_returns_a_sid_a_strong_token_and_the_roles(server: Server) -> None:
    client = await server()
    resp = await client.post("/v1/operators", json={"roles": ["main", "review"], "desc": "bot"})
    assert resp.status == 201
    body = await resp.json()
    assert body["sid"].startswith("op-") and len(body["sid"]) == 3 + 36
    assert len(body["token"]) >= 43  # 256 bits, url-safe base64
    assert body["roles"] == ["main", "review"]
    engine = engine_of(client)
    # Registered with the engine at mint time, before any socket.
    assert engine.resolution.get(body["sid"]) is not None
    assert engine.resolution.roles.resolve("review") == body["sid"]


async def test_mint_with_no_body_is_a_session_without_roles(server: Server) -> None:
    client = await server()
    resp = await client.post("/v1/operators")
    assert resp.status == 201 and (await resp.json())["roles"] == []


async def test_a_mint_may_carry_the_callers_own_token_strong_and_bearer_safe(
    server: Server,
) -> None:
    client = await server()
    chosen = "k" * 20 + "-._~+/=" + "Z" * 20
    resp = await client.post("/v1/operators", json={"roles": ["main"], "token": chosen})
    assert resp.status == 201
    body = await resp.json()
    assert body["token"] == chosen
    view = await client.get(
        f"/v1/operators/{body['sid']}", headers={"Authorization": f"Bearer {chosen}"}
    )
    assert view.status == 200
    for bad in ("short" * 6, "x" * 31, "x" * 40 + " y", "x" * 257, 12345678901234567890):
        resp = await client.post("/v1/operators", json={"roles": ["other"], "token": bad})
        assert resp.status == 400, bad
        error = (await resp.json())["error"]
        assert error["code"] == "bad_request" and "token" in error["message"], error
    assert len(directory_of(client).sessions) == 1


async def test_roles_are_exclusive_and_a_conflict_names_each_holder(server: Server) -> None:
    client = await server()
    sid_a, _ = await mint(client, ["main"])
    sid_b, _ = await mint(client, ["review"])
    resp = await client.post("/v1/operators", json={"roles": ["main", "review", "free"]})
    assert resp.status == 409
    err = (await resp.json())["error"]
    assert err["code"] == "roles_conflict"
    assert err["conflicts"] == [{"role": "main", "sid": sid_a}, {"role": "review", "sid": sid_b}]
    assert sid_a in err["message"] and sid_b in err["message"]
    # All or nothing: "free" was not taken by the failed mint.
    assert engine_of(client).resolution.roles.resolve("free") is None
    assert len(directory_of(client).sessions) == 2


async def test_get_reports_connected_only_while_a_socket_is_attached(server: Server) -> None:
    client = await server()
    sid, token = await mint(client, ["main"])
    auth = {"Authorization": f"Bearer {token}"}
    view = await (await client.get(f"/v1/operators/{sid}", headers=auth)).json()
    assert view["connected"] is False and view["pending"] == 0 and view["roles"] == ["main"]
    assert view["created_at"].endswith("Z") and view["last_seen_at"].endswith("Z")
    ws = await connect(client, sid, token)
    assert (await (await client.get(f"/v1/operators/{sid}", headers=auth)).json())["connected"]
    await ws.close()
    for _ in range(100):
        view = await (await client.get(f"/v1/operators/{sid}", headers=auth)).json()
        if not view["connected"]:
            break
        await asyncio.sleep(0.01)
    assert view["connected"] is False


@pytest.mark.parametrize("method", ["GET", "DELETE", "WS"])
async def test_session_auth_is_checked_401_then_404_then_401(server: Server, method: str) -> None:
    # With an api_token, so that a credential-less DELETE is not the loopback admin.
    client = await server(api_token="admin-secret")
    resp = await client.post(
        "/v1/operators", json={}, headers={"Authorization": "Bearer admin-secret"}
    )
    sid, token = (body := await resp.json())["sid"], body["token"]

    async def call(path_sid: str, headers: dict[str, str]) -> tuple[int, str]:
        if method == "WS":
            path = f"/v1/operators/{path_sid}/ws"
            headers = {
                **headers,
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            }
            resp = await client.get(path, headers=headers)
        else:
            resp = await client.request(method, f"/v1/operators/{path_sid}", headers=headers)
        return resp.status, (await resp.json())["error"]["code"]

    for bad in (
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {token}"},
    ):
        # Missing credentials come first, even for a sid that does not exist.
        assert await call("op-unknown", bad) == (401, "unauthorized")
    assert await call("op-unknown", {"Authorization": f"Bearer {token}"}) == (
        404,
        "operator_not_found",
    )
    assert await call(sid, {"Authorization": "Bearer wrong"}) == (401, "unauthorized")


async def test_the_token_may_come_as_a_bearer_subprotocol_and_is_echoed(server: Server) -> None:
    client = await server()
    sid, token = await mint(client)
    ws = await client.ws_connect(f"/v1/operators/{sid}/ws", protocols=(f"bearer.{token}",))
    assert ws.protocol == f"bearer.{token}"
    assert directory_of(client).sessions[sid].connected
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(f"/v1/operators/{sid}/ws", protocols=("bearer.wrong",))
    assert refused.value.status == 401


async def test_an_origin_outside_the_allow_list_is_refused(server: Server) -> None:
    client = await server(allowed_origins=["https://console.example"])
    sid, token = await mint(client)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await connect(client, sid, token, origin="https://evil.example")
    assert refused.value.status == 403
    ws = await connect(client, sid, token, origin="https://console.example")
    assert not ws.closed
    await ws.close()


async def test_a_plain_get_on_the_socket_route_is_a_clear_400(server: Server) -> None:
    client = await server()
    sid, token = await mint(client)
    resp = await client.get(f"/v1/operators/{sid}/ws", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "bad_request"


async def test_delete_with_pending_requests_fails_them_loudly_and_closes_1000(
    server: Server,
) -> None:
    client = await server()
    sid, token = await mint(client, ["main"])
    ws = await connect(client, sid, token)
    first = await create_task(client, agent="coder", operator={"sid": sid})
    second = await create_task(client, agent="coder", operator={"role": "main"})
    hooks = {(await expect(ws, "hook_before"))["req_id"] for _ in range(2)}
    auth = {"Authorization": f"Bearer {token}"}
    assert (await (await client.get(f"/v1/operators/{sid}", headers=auth)).json())["pending"] == 2

    resp = await client.delete(f"/v1/operators/{sid}", headers=auth)
    assert resp.status == 204
    withdrawn = {(await expect(ws, "cancel"))["req_id"] for _ in range(2)}
    assert withdrawn == hooks
    closing = await asyncio.wait_for(ws.receive(), 5)
    assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1000
    for task in (first, second):
        done = await wait_task(client, task["id"])
        assert done["status"] == "failed"
        assert done["error"] == {"code": "operator_deleted", "message": "operator session deleted"}
    engine = engine_of(client)
    assert engine.resolution.get(sid) is None and engine.resolution.roles.resolve("main") is None
    assert (await client.get(f"/v1/operators/{sid}", headers=auth)).status == 404
    # The role is free again.
    assert (await client.post("/v1/operators", json={"roles": ["main"]})).status == 201
