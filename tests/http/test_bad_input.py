"""Every route answers malformed input with a 4xx JSON error naming the problem."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Server, create_task
from tests.wsop import mint


async def error(resp: Any, status: int, code: str) -> str:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    assert message
    return message


@pytest.mark.parametrize(
    ("body", "code", "names"),
    [
        (b"{not json", "bad_json", "not valid JSON"),
        (b"", "bad_json", "empty"),
        (b"[1, 2]", "bad_request", "JSON object"),
        (b'{"directive": "x"}', "bad_request", "agent"),
        (b'{"agent": "echo"}', "bad_request", "directive"),
        (b'{"agent": 5, "directive": "x"}', "bad_request", "agent"),
        (b'{"agent": "echo", "directive": null}', "bad_request", "directive"),
        (
            b'{"agent": "echo", "directive": "x", "max_attempts": "two"}',
            "bad_request",
            "max_attempts",
        ),
        (b'{"agent": "echo", "directive": "x", "max_attempts": 0}', "bad_request", "max_attempts"),
        (b'{"agent": "echo", "directive": "x", "layers": ["nope"]}', "bad_request", "layers"),
        (
            b'{"agent": "echo", "directive": "x", "layers": ["main_ai", "main_ai"]}',
            "bad_request",
            "layers",
        ),
        (b'{"agent": "echo", "directive": "x", "colour": "red"}', "bad_request", "colour"),
        (b'{"agent": "echo", "directive": "x", "operator": {}}', "bad_request", "operator"),
        (
            b'{"agent": "echo", "directive": "x", "operator": {"sid": "a", "role": "b"}}',
            "bad_request",
            "operator.role",
        ),
        (
            b'{"agent": "echo", "directive": "x", "operator": {"sid": "a", "kind": "boss"}}',
            "bad_request",
            "operator.kind",
        ),
        (b'{"agent": "no-such-agent", "directive": "x"}', "unknown_agent", "no-such-agent"),
        (
            b'{"agent": "echo", "directive": "x", "parent_task_id": "t-missing"}',
            "task_not_found",
            "t-missing",
        ),
    ],
)
async def test_create_task_rejects_bad_bodies(
    server: Server, body: bytes, code: str, names: str
) -> None:
    client = await server()
    resp = await client.post("/v1/tasks", data=body)
    assert names in await error(resp, 400, code)
    assert (await (await client.get("/v1/tasks")).json())["tasks"] == []


async def test_oversize_bodies_are_413_on_every_body_route(server: Server) -> None:
    from tests.engine.test_capabilities import bearer, start_parked

    client = await server(max_body_bytes=2048)
    parked, task = await start_parked(client)
    ctx = await parked.attempt(1)
    big = b'{"agent": "echo", "directive": "' + b"x" * 4096 + b'"}'
    for path in (
        "/v1/tasks",
        "/v1/operators",
        f"/v1/tasks/{task['id']}/cancel",
        "/v1/worker/result",
        "/v1/worker/submit",
    ):
        resp = await client.post(path, data=big, headers=bearer(ctx.worker_handle))
        await error(resp, 413, "too_large")
    parked.release[1].set_result(None)


async def test_an_oversize_worker_body_without_a_credential_is_refused_first(
    server: Server,
) -> None:
    client = await server(max_body_bytes=2048)
    big = b'{"value": "' + b"y" * 4096 + b'"}'
    for path in ("/v1/worker/result", "/v1/worker/submit"):
        resp = await client.post(path, data=big, headers={"Authorization": "Bearer wh-x"})
        await error(resp, 401, "unknown_handle")


async def test_unknown_task_is_404_on_every_task_route(server: Server) -> None:
    client = await server()
    assert "t-nope" in await error(await client.get("/v1/tasks/t-nope"), 404, "task_not_found")
    await error(await client.post("/v1/tasks/t-nope/cancel"), 404, "task_not_found")


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"status": "sleeping"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "lots"}, "limit"),
        ({"after": "t-unknown"}, "after"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_list_tasks_rejects_bad_queries(
    server: Server, params: dict[str, str], names: str
) -> None:
    client = await server()
    assert names in await error(await client.get("/v1/tasks", params=params), 400, "bad_request")


@pytest.mark.parametrize("wait", ["soon", "-1", "nan", "100000"])
async def test_get_task_rejects_a_bad_wait(server: Server, wait: str) -> None:
    client = await server(max_wait_s=30)
    task = await create_task(client, agent="echo")
    resp = await client.get(f"/v1/tasks/{task['id']}", params={"wait": wait})
    assert "wait" in await error(resp, 400, "bad_request")


async def test_cancel_rejects_a_bad_body(server: Server) -> None:
    client = await server()
    task = await create_task(client, agent="echo")
    resp = await client.post(f"/v1/tasks/{task['id']}/cancel", data=b"{oops")
    await error(resp, 400, "bad_json")
    resp = await client.post(f"/v1/tasks/{task['id']}/cancel", json={"reason": 7})
    await error(resp, 400, "bad_request")


async def test_worker_routes_reject_bad_bodies_and_queries(server: Server) -> None:
    from tests.engine.test_capabilities import bearer, start_parked

    client = await server()
    parked, _ = await start_parked(client)
    ctx = await parked.attempt(1)
    auth = bearer(ctx.worker_handle)
    await error(await client.post("/v1/worker/result", data=b"{", headers=auth), 400, "bad_json")
    resp = await client.post("/v1/worker/result", json={"ok": True}, headers=auth)
    assert "value" in await error(resp, 400, "bad_request")
    resp = await client.post("/v1/worker/result", json={"value": 1, "ok": "yes"}, headers=auth)
    assert "ok" in await error(resp, 400, "bad_request")
    resp = await client.post("/v1/worker/submit", data=b"\xff\xfe", headers=auth)
    assert "UTF-8" in await error(resp, 400, "bad_request")
    resp = await client.post("/v1/worker/submit", params={"ok": "maybe"}, data=b"x", headers=auth)
    assert "ok" in await error(resp, 400, "bad_request")
    resp = await client.get("/v1/worker/prompt", params={"extra": "1"}, headers=auth)
    assert "extra" in await error(resp, 400, "bad_request")
    # None of that disturbed the attempt: it still takes a good result.
    good = await client.post("/v1/worker/result", json={"value": "fine"}, headers=auth)
    assert good.status == 200
    parked.release[1].set_result(None)


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (b"{", "JSON"),
        (b'{"roles": "admin"}', "roles"),
        (b'{"roles": [""]}', "empty"),
        (b'{"roles": ["a", "a"]}', "duplicate"),
        (b'{"roles": [1]}', "roles"),
        (b'{"desc": 5}', "desc"),
        (b'{"who": "me"}', "who"),
    ],
)
async def test_mint_rejects_bad_bodies(server: Server, body: bytes, names: str) -> None:
    client = await server()
    resp = await client.post("/v1/operators", data=body)
    assert resp.status == 400
    assert names in (await resp.json())["error"]["message"]


async def test_unknown_routes_and_methods_are_json_errors(server: Server) -> None:
    client = await server()
    await error(await client.get("/v1/nothing"), 404, "not_found")
    resp = await client.delete("/v1/tasks")
    await error(resp, 405, "method_not_allowed")
    assert "GET" in resp.headers["Allow"]


async def test_reading_an_operator_session_needs_its_token(server: Server) -> None:
    # DELETE is also an admin route: with no api_token a credential-less loopback
    # caller is the admin (tests/operators/test_admin.py).
    client = await server()
    sid, _ = await mint(client)
    resp = await client.get(f"/v1/operators/{sid}")
    await error(resp, 401, "unauthorized")


async def test_api_token_guards_the_task_routes_when_set(server: Server) -> None:
    client = await server(api_token="admin-secret")
    await error(
        await client.post("/v1/tasks", json={"agent": "echo", "directive": "x"}),
        401,
        "unauthorized",
    )
    await error(
        await client.get("/v1/tasks", headers={"Authorization": "Bearer wrong"}),
        401,
        "unauthorized",
    )
    await error(await client.post("/v1/operators", json={}), 401, "unauthorized")
    ok = await client.post(
        "/v1/tasks",
        json={"agent": "echo", "directive": "x"},
        headers={"Authorization": "Bearer admin-secret"},
    )
    assert ok.status == 202
    assert (await client.get("/v1/healthz")).status == 200  # liveness stays open
