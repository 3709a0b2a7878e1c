"""Operator admin: the session list, a session's pending requests, the forced leave."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from operator_server.operators.session import hash_token
from tests.conftest import Server, create_task, directory_of, wait_task
from tests.needs import unavailable
from tests.wsop import connect, eventually, expect

API = "admin-secret"
ADMIN = {"Authorization": f"Bearer {API}"}


async def mint_as_admin(
    client: TestClient[Any, Any], roles: list[str] | None = None, desc: str = ""
) -> tuple[str, str]:
    resp = await client.post(
        "/v1/operators", json={"roles": roles or [], "desc": desc}, headers=ADMIN
    )
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    return body["sid"], body["token"]


async def status_and_code(resp: aiohttp.ClientResponse) -> tuple[int, str | None]:
    if resp.status >= 400:
        return resp.status, (await resp.json())["error"]["code"]
    return resp.status, None


async def test_the_list_shows_each_session_and_never_a_secret(server: Server) -> None:
    client = await server(api_token=API)
    sid_a, token_a = await mint_as_admin(client, ["main"], "laptop")
    sid_b, token_b = await mint_as_admin(client, ["review"])
    ws = await connect(client, sid_a, token_a)

    resp = await client.get("/v1/operators", headers=ADMIN)
    assert resp.status == 200
    text = await resp.text()
    body = await resp.json()
    assert body["next"] is None
    views = {v["sid"]: v for v in body["operators"]}
    assert [v["sid"] for v in body["operators"]] == [sid_a, sid_b]  # creation order
    assert set(views[sid_a]) == {
        "minted_by",
        "sid",
        "roles",
        "desc",
        "connected",
        "node",
        "pending",
        "created_at",
        "last_seen_at",
        "remote",
    }
    assert views[sid_a]["roles"] == ["main"] and views[sid_a]["desc"] == "laptop"
    assert views[sid_a]["connected"] is True and views[sid_a]["remote"] == "127.0.0.1"
    assert views[sid_a]["node"] == directory_of(client).settings.node_id
    assert views[sid_b]["connected"] is False and views[sid_b]["remote"] is None
    assert views[sid_b]["node"] is None
    for secret in (token_a, token_b, hash_token(token_a), hash_token(token_b), API):
        assert secret not in text
    assert "token" not in text
    await ws.close()


async def test_the_list_needs_the_api_token(server: Server) -> None:
    client = await server(api_token=API)
    _, token = await mint_as_admin(client)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {token}"}):
        resp = await client.get("/v1/operators", headers=headers)
        assert await status_and_code(resp) == (401, "unauthorized")


async def test_the_list_filters_by_role_and_connection_and_pages_by_cursor(
    server: Server,
) -> None:
    client = await server(api_token=API)
    minted = [await mint_as_admin(client, [f"r{i}"]) for i in range(5)]
    ws = await connect(client, *minted[3])

    seen: list[str] = []
    after: str | None = None
    while True:
        params = {"limit": "2", **({"after": after} if after else {})}
        page = await (await client.get("/v1/operators", params=params, headers=ADMIN)).json()
        assert len(page["operators"]) <= 2
        seen += [v["sid"] for v in page["operators"]]
        after = page["next"]
        if after is None:
            break
    assert seen == [sid for sid, _ in minted]

    async def sids(**params: str) -> list[str]:
        page = await (await client.get("/v1/operators", params=params, headers=ADMIN)).json()
        return [v["sid"] for v in page["operators"]]

    assert await sids(role="r2") == [minted[2][0]]
    assert await sids(connected="true") == [minted[3][0]]
    assert await sids(connected="false") == [s for i, (s, _) in enumerate(minted) if i != 3]
    for bad in ({"connected": "yes"}, {"limit": "0"}, {"after": "nonsense"}, {"sid": "x"}):
        resp = await client.get("/v1/operators", params=bad, headers=ADMIN)
        assert await status_and_code(resp) == (400, "bad_request"), bad
    await ws.close()


async def test_pending_shows_what_the_operator_is_asked_but_no_credential(
    server: Server,
) -> None:
    client = await server(api_token=API)
    sid, token = await mint_as_admin(client)
    ws = await connect(client, sid, token)
    resp = await client.post(
        "/v1/tasks",
        json={
            "agent": "coder",
            "directive": "x",
            "operator": {"sid": sid},
            "layers": ["operator_delegate"],
        },
        headers=ADMIN,
    )
    task = await resp.json()
    spawn = await expect(ws, "spawn")

    for auth in (ADMIN, {"Authorization": f"Bearer {token}"}):
        resp = await client.get(f"/v1/operators/{sid}/pending", headers=auth)
        assert resp.status == 200
        text = await resp.text()
        [view] = (await resp.json())["pending"]
        assert view["req_id"] == spawn["req_id"] and view["type"] == "spawn"
        assert view["task_id"] == task["id"] and view["attempt"] == 1
        assert view["agent"] == "coder" and view["issued_at"].endswith("Z")
        assert view["waiting_s"] >= 0
        assert spawn["capability_token"] not in text and spawn["worker_handle"] not in text
        assert token not in text

    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": 1})
    await eventually(lambda: not directory_of(client).sessions[sid].pending)
    resp = await client.get(f"/v1/operators/{sid}/pending", headers=ADMIN)
    assert (await resp.json()) == {"pending": []}
    await ws.close()


@pytest.mark.parametrize("method", ["GET pending", "DELETE"])
async def test_admin_session_routes_check_401_then_404_then_401(
    server: Server, method: str
) -> None:
    client = await server(api_token=API)
    sid, token = await mint_as_admin(client)
    other_sid, other_token = await mint_as_admin(client)

    async def call(path_sid: str, headers: dict[str, str]) -> tuple[int, str | None]:
        if method == "DELETE":
            resp = await client.delete(f"/v1/operators/{path_sid}", headers=headers)
        else:
            resp = await client.get(f"/v1/operators/{path_sid}/pending", headers=headers)
        return await status_and_code(resp)

    for bad in ({}, {"Authorization": ""}, {"Authorization": f"Basic {API}"}):
        assert await call("op-unknown", bad) == (401, "unauthorized")
    assert await call("op-unknown", ADMIN) == (404, "operator_not_found")
    assert await call("op-unknown", {"Authorization": f"Bearer {token}"}) == (
        404,
        "operator_not_found",
    )
    # Another session's token is no key to this one.
    assert await call(sid, {"Authorization": f"Bearer {other_token}"}) == (401, "unauthorized")
    assert await call(sid, {"Authorization": "Bearer wrong"}) == (401, "unauthorized")
    assert other_sid in directory_of(client).sessions and sid in directory_of(client).sessions


async def test_a_forced_delete_frees_the_roles_and_fails_pending_requests(
    server: Server,
) -> None:
    client = await server(api_token=API)
    sid, token = await mint_as_admin(client, ["main"])
    ws = await connect(client, sid, token)
    resp = await client.post(
        "/v1/tasks",
        json={"agent": "coder", "directive": "x", "operator": {"role": "main"}},
        headers=ADMIN,
    )
    task = await resp.json()
    hook = await expect(ws, "hook_before")

    resp = await client.delete(f"/v1/operators/{sid}", headers=ADMIN)
    assert resp.status == 204
    assert (await expect(ws, "cancel"))["req_id"] == hook["req_id"]
    closing = await asyncio.wait_for(ws.receive(), 5)
    assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1000

    resp = await client.get(f"/v1/tasks/{task['id']}", params={"wait": "5"}, headers=ADMIN)
    done = await resp.json()
    assert done["status"] == "failed" and done["error"]["code"] == "operator_deleted"
    # The role is free again: a new session can claim it.
    await mint_as_admin(client, ["main"])
    assert sid not in directory_of(client).sessions


async def spawn_with_a_result_accepted(
    client: TestClient[Any, Any], value: Any
) -> tuple[str, Any, dict[str, Any], dict[str, Any]]:
    """A session of role ``main`` holding the spawn of a new task, whose worker
    has posted ``value`` (answered 200) before any spawn_ack: the session's
    sid and socket, the task and the spawn frame."""
    sid, token = await mint_as_admin(client, ["main"])
    ws = await connect(client, sid, token)
    task = await create_task_as_admin(client, {"role": "main"})
    hook = await expect(ws, "hook_before")
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    spawn = await expect(ws, "spawn")
    auth = {"Authorization": f"Bearer {spawn['worker_handle']}"}
    resp = await client.post("/v1/worker/result", json={"value": value}, headers=auth)
    assert resp.status == 200
    return sid, ws, task, spawn


async def test_a_result_accepted_before_a_forced_delete_decides_the_attempt(
    server: Server,
) -> None:
    client = await server(api_token=API)
    sid, ws, task, _spawn = await spawn_with_a_result_accepted(client, {"done": 1})

    # The operator is deleted before it acknowledges the spawn.
    assert (await client.delete(f"/v1/operators/{sid}", headers=ADMIN)).status == 204
    resp = await client.get(f"/v1/tasks/{task['id']}", params={"wait": "5"}, headers=ADMIN)
    done = await resp.json()
    assert done["status"] == "passed", done
    assert done["result"] == {"value": {"done": 1}, "ok": True}
    assert done["error"] is None
    await ws.close()


async def test_a_result_accepted_before_the_spawn_times_out_decides_the_attempt(
    server: Server,
) -> None:
    client = await server(api_token=API, spawn_timeout_s=0.5)
    _sid, ws, task, spawn = await spawn_with_a_result_accepted(client, "mine")

    # No spawn_ack ever comes: the spawn is withdrawn at its timeout.
    assert (await expect(ws, "cancel"))["req_id"] == spawn["req_id"]
    resp = await client.get(f"/v1/tasks/{task['id']}", params={"wait": "5"}, headers=ADMIN)
    done = await resp.json()
    assert done["status"] == "passed", done
    assert done["result"] == {"value": "mine", "ok": True}
    await ws.close()


async def test_an_error_ack_still_fails_an_attempt_a_worker_posted_to(server: Server) -> None:
    client = await server(api_token=API)
    _sid, ws, task, spawn = await spawn_with_a_result_accepted(client, "mine")

    # The operator's own verdict on its spawn is not a lost session: it counts.
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "error": "wrong repo"})
    resp = await client.get(f"/v1/tasks/{task['id']}", params={"wait": "5"}, headers=ADMIN)
    done = await resp.json()
    assert done["status"] == "failed" and done["error"]["code"] == "operator_error"
    await ws.close()


async def create_task_as_admin(
    client: TestClient[Any, Any], operator: dict[str, Any]
) -> dict[str, Any]:
    resp = await client.post(
        "/v1/tasks",
        json={"agent": "coder", "directive": "x", "operator": operator},
        headers=ADMIN,
    )
    assert resp.status == 202, await resp.text()
    task: dict[str, Any] = await resp.json()
    return task


async def test_with_no_api_token_a_loopback_caller_without_credentials_is_the_admin(
    server: Server,
) -> None:
    client = await server()
    resp = await client.post("/v1/operators", json={"roles": ["main"]})
    sid = (await resp.json())["sid"]
    task = await create_task(client, agent="coder", operator={"role": "main"})

    listing = await (await client.get("/v1/operators")).json()
    assert [v["sid"] for v in listing["operators"]] == [sid]
    await eventually(lambda: bool(directory_of(client).sessions[sid].pending))
    pending = await (await client.get(f"/v1/operators/{sid}/pending")).json()
    assert [p["type"] for p in pending["pending"]] == ["hook_before"]
    # A credential that is sent is checked, even here.
    wrong = await client.delete(f"/v1/operators/{sid}", headers={"Authorization": "Bearer no"})
    assert await status_and_code(wrong) == (401, "unauthorized")
    wrong = await client.get("/v1/operators", headers={"Authorization": "Bearer no"})
    assert await status_and_code(wrong) == (401, "unauthorized")

    assert (await client.delete(f"/v1/operators/{sid}")).status == 204
    done = await wait_task(client, task["id"])
    assert done["error"]["code"] == "operator_deleted"


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def test_with_no_api_token_admin_routes_refuse_callers_off_loopback(
    aiohttp_client: Any,
) -> None:
    address = _non_loopback_address()
    if address is None:
        unavailable("this machine has no non-loopback IPv4 address")
    from operator_server.app import build_app
    from tests.conftest import make_settings

    # The config refuses such a bind without a token; the test server binds it
    # anyway, as a reverse proxy or a mistake would, to check the second wall.
    client = await aiohttp_client(build_app(make_settings()), server_kwargs={"host": "0.0.0.0"})
    port = client.server.port
    async with aiohttp.ClientSession() as http:
        # The first wall: a request naming a non-loopback host (http/admission.py).
        async with http.get(f"http://{address}:{port}/v1/operators") as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "host_not_allowed"
        # The second: one that names loopback but comes from off it.
        local = {"Host": f"127.0.0.1:{port}"}
        async with http.get(f"http://{address}:{port}/v1/operators", headers=local) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "forbidden"
        async with http.delete(f"http://{address}:{port}/v1/operators/op-x", headers=local) as resp:
            assert resp.status == 401


async def test_an_empty_query_value_is_refused_naming_it(server: Server) -> None:
    """Not read as "no filter": the same rule as everywhere, where ``?ok=`` from
    an unset shell variable must not quietly mean the default ``ok=true``
    (tests/http/test_bad_input.py)."""
    client = await server(api_token=API)
    resp = await client.get("/v1/operators?role=", headers=ADMIN)
    assert await status_and_code(resp) == (400, "bad_request")
    assert "role" in (await resp.json())["error"]["message"]
