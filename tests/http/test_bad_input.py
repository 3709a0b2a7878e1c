"""Every route answers malformed input with a 4xx JSON error naming the problem."""

from __future__ import annotations

import asyncio
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
        (  # ``composite`` behaved exactly as ``main_ai``: no longer a kind
            b'{"agent": "echo", "directive": "x", "operator": {"sid": "a", "kind": "composite"}}',
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
        "/v1/worker/ask",
    ):
        # The open daemon's own routes take no credential (one sent is checked).
        headers = bearer(ctx.worker_handle) if path.startswith("/v1/worker/") else {}
        resp = await client.post(path, data=big, headers=headers)
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


# -- hostile input: never a 5xx, never a crash, never a stuck store ---------------


def nested(depth: int, leaf: str = "0") -> str:
    """JSON text of arrays nested ``depth`` deep around ``leaf``."""
    return "[" * depth + leaf + "]" * depth


async def healthy(client: Any) -> None:
    assert (await client.get("/v1/healthz")).status == 200


async def test_a_deeply_nested_body_is_too_deep_on_every_body_route(server: Server) -> None:
    from tests.engine.test_capabilities import bearer, start_parked

    client = await server()
    parked, _ = await start_parked(client)
    ctx = await parked.attempt(1)
    task = await create_task(client, agent="echo")
    deep = nested(10_000)
    bodies = {
        "/v1/tasks": '{"agent": "echo", "directive": %s}',
        "/v1/operators": '{"roles": %s}',
        f"/v1/tasks/{task['id']}/cancel": '{"reason": %s}',
        "/v1/worker/result": '{"value": %s}',
    }
    for path, body in bodies.items():
        # The open daemon's own routes take no credential (one sent is checked).
        headers = bearer(ctx.worker_handle) if path.startswith("/v1/worker/") else {}
        resp = await client.post(path, data=(body % deep).encode(), headers=headers)
        assert "max_json_depth (64)" in await error(resp, 400, "too_deep")
    await healthy(client)
    assert (await client.get("/v1/tasks")).status == 200
    parked.release[1].set_result(None)


async def test_nesting_up_to_max_json_depth_is_accepted_and_served_back(server: Server) -> None:
    client = await server(max_json_depth=10)
    # The body object is level 1, so the directive may nest 9 deep.
    ok = await client.post("/v1/tasks", data='{"agent": "echo", "directive": ' + nested(9) + "}")
    assert ok.status == 202, await ok.text()
    task = await ok.json()
    assert (await client.get(f"/v1/tasks/{task['id']}")).status == 200
    resp = await client.post("/v1/tasks", data='{"agent": "echo", "directive": ' + nested(10) + "}")
    assert "max_json_depth (10)" in await error(resp, 400, "too_deep")
    # Brackets inside strings are text, not nesting.
    text = '{"agent": "echo", "directive": "%s"}' % ("[" * 500)
    assert (await client.post("/v1/tasks", data=text)).status == 202


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_non_standard_numbers_are_bad_json(server: Server, constant: str) -> None:
    client = await server()
    body = '{"agent": "echo", "directive": {"x": ' + constant + "}}"
    assert constant.lstrip("-") in await error(
        await client.post("/v1/tasks", data=body), 400, "bad_json"
    )
    assert (await (await client.get("/v1/tasks")).json())["tasks"] == []


@pytest.mark.parametrize("attempts", ['"1"', "1.5", "true", "1.0"])
async def test_max_attempts_must_be_a_json_integer(server: Server, attempts: str) -> None:
    client = await server()
    body = '{"agent": "echo", "directive": "x", "max_attempts": ' + attempts + "}"
    resp = await client.post("/v1/tasks", data=body)
    assert "max_attempts" in await error(resp, 400, "bad_request")


async def test_worker_ok_must_be_a_json_boolean(server: Server) -> None:
    from tests.engine.test_capabilities import bearer, start_parked

    client = await server()
    parked, _ = await start_parked(client)
    ctx = await parked.attempt(1)
    auth = bearer(ctx.worker_handle)
    for odd in ("1", "0", "1.0", '"true"'):
        resp = await client.post(
            "/v1/worker/result", data='{"value": 1, "ok": ' + odd + "}", headers=auth
        )
        assert "ok" in await error(resp, 400, "bad_request")
    for odd in ("1", "yes", "True", "on", ""):  # "": an unset $OK, never the default
        resp = await client.post("/v1/worker/submit", params={"ok": odd}, data=b"x", headers=auth)
        assert "ok" in await error(resp, 400, "bad_request")
    ok = await client.post("/v1/worker/submit", params={"ok": "false"}, data=b"x", headers=auth)
    assert ok.status == 200
    parked.release[1].set_result(None)


async def test_query_integers_are_plain_decimal_text(server: Server) -> None:
    client = await server()
    assert (await client.get("/v1/tasks", params={"limit": "10"})).status == 200
    for odd in ("1_0", " 10", "+10", "10.0", "\u0661\u0660"):
        resp = await client.get("/v1/tasks", params={"limit": odd})
        assert "limit" in await error(resp, 400, "bad_request")


@pytest.mark.parametrize(
    ("path", "body", "names"),
    [
        ("/v1/operators", '{"desc": "\\ud800"}', "desc"),
        ("/v1/operators", '{"roles": ["ok", "\\udfff"]}', "roles[1]"),
        ("/v1/tasks", '{"agent": "echo", "directive": {"a": ["\\ud83d"]}}', "directive.a[0]"),
        ("/v1/tasks", '{"agent": "echo", "directive": {"\\ud800": 1}}', "directive (a key)"),
    ],
)
async def test_a_lone_surrogate_is_a_400_naming_the_field(
    server: Server, path: str, body: str, names: str
) -> None:
    client = await server()
    message = await error(await client.post(path, data=body), 400, "bad_request")
    assert message.startswith(names) and "surrogate" in message
    # A proper surrogate pair is just a character.
    pair = '{"agent": "echo", "directive": "\\ud83d\\ude00"}'
    assert (await client.post("/v1/tasks", data=pair)).status == 202


async def raw_http(client: Any, head: bytes) -> tuple[int, str, bytes]:
    """Send ``head`` as-is (bytes no HTTP client library would write) -> status, type, body."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(head)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    top, _, body = answer.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers.get("Content-Type", ""), body


def request_head(method: str, path: str, *headers: bytes) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1".encode(),
        b"Host: 127.0.0.1",
        b"Connection: close",
        *headers,
    ]
    return b"\r\n".join([*lines, b"Content-Length: 0", b"", b""])


async def test_non_utf8_bearer_bytes_are_401(server: Server) -> None:
    import json

    from tests.engine.test_capabilities import start_parked

    client = await server()
    sid, _ = await mint(client)
    parked, _ = await start_parked(client)
    await parked.attempt(1)
    for method, path in (
        ("GET", f"/v1/operators/{sid}"),
        ("DELETE", f"/v1/operators/{sid}"),
        ("GET", f"/v1/operators/{sid}/ws"),
        ("GET", "/v1/worker/prompt"),
        ("POST", "/v1/worker/result"),
        ("POST", "/v1/worker/submit"),
    ):
        head = request_head(method, path, b"Authorization: Bearer wh-\xff\xfe")
        status, ctype, body = await raw_http(client, head)
        assert (status, ctype) == (401, "application/json; charset=utf-8"), (path, body)
        assert json.loads(body)["error"]["code"] == "unauthorized"
    upgrade = request_head(
        "GET",
        f"/v1/operators/{sid}/ws",
        b"Sec-WebSocket-Protocol: bearer.\xff\xfe",
        b"Upgrade: websocket",
        b"Sec-WebSocket-Version: 13",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    )
    status, _, body = await raw_http(client, upgrade)
    assert status == 401 and b"Sec-WebSocket-Protocol" in body
    parked.release[1].set_result(None)


async def test_non_utf8_bytes_in_the_api_token_are_401(server: Server) -> None:
    client = await server(api_token="admin-secret")
    head = request_head("GET", "/v1/tasks", b"Authorization: Bearer \xff")
    status, _, body = await raw_http(client, head)
    assert status == 401 and b"UTF-8" in body


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_that_does_not_match_its_content_encoding_is_bad_encoding(
    server: Server, encoding: str
) -> None:
    import gzip
    import zlib

    client = await server()
    body = b'{"agent": "echo", "directive": "x"}'
    resp = await client.post(
        "/v1/tasks",
        data=b"this is not " + encoding.encode(),
        headers={"Content-Encoding": encoding},
    )
    assert encoding in await error(resp, 400, "bad_encoding")
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    good = await client.post("/v1/tasks", data=packed, headers={"Content-Encoding": encoding})
    assert good.status == 202, await good.text()


async def test_roles_are_capped_in_count_and_length(server: Server) -> None:
    client = await server(max_roles=3, max_role_length=5)
    resp = await client.post("/v1/operators", json={"roles": ["a", "b", "c", "d"]})
    assert "max_roles" in await error(resp, 400, "bad_request")
    resp = await client.post("/v1/operators", json={"roles": ["abcdef"]})
    assert "max_role_length" in await error(resp, 400, "bad_request")
    assert (await client.post("/v1/operators", json={"roles": ["a", "b", "abcde"]})).status == 201


async def test_a_mint_with_forty_thousand_roles_is_refused_and_healthz_answers(
    server: Server,
) -> None:
    client = await server()
    roles = [f"role-{i}" for i in range(40_000)]
    mint_call = asyncio.ensure_future(client.post("/v1/operators", json={"roles": roles}))
    await healthy(client)
    message = await error(await mint_call, 400, "bad_request")
    assert "at most 64 roles (max_roles)" in message


async def test_a_content_encoding_the_server_cannot_decode_is_bad_encoding(
    server: Server,
) -> None:
    client = await server()
    for encoding in ("snappy", "gzip, gzip"):
        resp = await client.post("/v1/tasks", data=b"{}", headers={"Content-Encoding": encoding})
        assert "not supported" in await error(resp, 400, "bad_encoding")
    assert (await (await client.get("/v1/tasks")).json())["tasks"] == []


@pytest.mark.parametrize(
    ("head", "says"),
    [
        (b"GE\x01T / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"Invalid method"),
        (b"BREW /v1/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"Invalid method"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"8190 bytes"),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n", b"8190 bytes"),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: 1\r\n\r\n", b"Invalid header token"),
        (b"GET / HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n", b"Invalid HTTP version"),
        (
            b"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n",
            b"Content-Length",
        ),
        (
            b"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"chunk size",
        ),
    ],
)
async def test_requests_aiohttp_refuses_before_any_handler_are_400_text_and_closed(
    server: Server, head: bytes, says: bytes
) -> None:
    """Documented exception to "every error is JSON": aiohttp's own HTTP parser
    answers these itself, as text/plain, and no application hook can change it."""
    client = await server()
    status, ctype, body = await raw_http(client, head)
    assert (status, ctype.split(";")[0]) == (400, "text/plain") and says in body
    await healthy(client)
