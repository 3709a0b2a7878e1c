"""The OpenAPI contract: valid, complete, and true of the real answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec

from operator_server.http import health
from operator_server.http.openapi import build_document, documented_routes, undocumented
from operator_server.wire.contract import Security
from tests.conftest import Server, create_task, wait_task
from tests.engine.test_capabilities import bearer, start_parked
from tests.http.sse import fields_of, next_block
from tests.wsop import mint

API = "openapi-api-token"


async def document_of(client: TestClient[Any, Any]) -> dict[str, Any]:
    resp = await client.get("/v1/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    doc: dict[str, Any] = await resp.json()
    return doc


def app_of(client: TestClient[Any, Any]) -> web.Application:
    app: web.Application = client.app  # type: ignore[assignment]
    return app


def conforms(doc: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    """``body`` matches what ``doc`` declares for that answer (AssertionError if not)."""
    answer = doc["paths"][path][method]["responses"][str(status)]
    schema = dict(answer["content"]["application/json"]["schema"])
    schema["components"] = doc["components"]
    errors = [e.message for e in OAS31Validator(schema).iter_errors(body)]
    assert errors == [], (path, method, status, errors)


async def test_the_served_document_is_valid_openapi_3_1(server: Server) -> None:
    client = await server()
    doc = await document_of(client)
    assert doc["openapi"] == "3.1.0"
    validate_spec(doc)
    assert doc == build_document(app_of(client))


async def test_every_route_is_documented_and_nothing_else(server: Server) -> None:
    client = await server()
    app = app_of(client)
    doc = await document_of(client)
    assert list(undocumented(app)) == []
    on_router = {(method.lower(), path) for method, path, _ in documented_routes(app)}
    in_document = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert in_document == on_router
    assert len(on_router) >= 19


def test_a_route_without_a_declaration_is_caught() -> None:
    """The guard the test above relies on: an undeclared route is named."""
    app = web.Application()
    app.add_routes(health.routes)

    async def stray(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/v1/stray", stray)
    assert list(undocumented(app)) == ["GET /v1/stray"]
    assert set(build_document(app)["paths"]) == {"/v1/healthz"}


async def test_every_operation_declares_its_statuses_errors_and_credentials(
    server: Server,
) -> None:
    client = await server()
    doc = await document_of(client)
    assert set(doc["components"]["securitySchemes"]) == {str(s) for s in Security}
    assert {"Error", "Task"} <= set(doc["components"]["schemas"])
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            statuses = set(op["responses"])
            assert any(s.startswith(("1", "2", "3")) for s in statuses), (method, path)
            for status, answer in op["responses"].items():
                if status >= "400":
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/Error", (method, path, status)
            if op.get("security"):
                assert "401" in statuses, (method, path)
            if "requestBody" in op:
                assert {"400", "408", "413"} <= statuses, (method, path)
            if "session_token" in str(op.get("security")):
                # The session is looked up in the store (another node may
                # have minted it): a store that fails is a 503.
                assert "503" in statuses, (method, path)


async def test_security_is_stated_per_route(server: Server) -> None:
    doc = await document_of(await server())
    security = {
        (method, path): [next(iter(alt), None) for alt in op.get("security", [])]
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    }
    assert security["post", "/v1/tasks"] == ["api_key"]
    assert security["get", "/v1/operators/{sid}"] == ["session_token"]
    assert security["get", "/v1/operators/{sid}/ws"] == ["session_token"]
    assert security["delete", "/v1/operators/{sid}"] == ["session_token", "api_key"]
    assert security["post", "/v1/worker/result"] == ["worker_credential"]
    assert security["get", "/metrics"] == ["metrics_token", None]  # optional
    assert security["get", "/v1/healthz"] == []
    # A principal's alternative names the scopes it needs (OpenAPI 3.1 role names).
    create = doc["paths"]["/v1/tasks"]["post"]["security"]
    assert create == [{"api_key": ["tasks:create"]}]
    leave = doc["paths"]["/v1/operators/{sid}"]["delete"]["security"]
    assert leave == [{"session_token": []}, {"api_key": ["admin"]}]
    ws = doc["paths"]["/v1/operators/{sid}/ws"]["get"]["responses"]
    assert {"101", "401", "403", "404"} <= set(ws)


async def test_real_answers_match_the_documented_schemas(server: Server) -> None:
    """A scripted run through every JSON answer, each checked against the document."""
    client = await server()
    doc = await document_of(client)

    async def check(path: str, method: str, resp: Any, status: int) -> Any:
        assert resp.status == status, await resp.text()
        body = await resp.json()
        conforms(doc, path, method, status, body)
        return body

    await check("/v1/healthz", "get", await client.get("/v1/healthz"), 200)
    await check("/console/config.json", "get", await client.get("/console/config.json"), 200)

    task = await create_task(client, agent="echo", directive={"x": [1, None]}, system="s")
    conforms(doc, "/v1/tasks", "post", 202, task)
    done = await wait_task(client, task["id"])
    assert done["attempts"] and done["attempts"][0]["outputs"]
    conforms(doc, "/v1/tasks/{task_id}", "get", 200, done)
    await check("/v1/tasks", "get", await client.get("/v1/tasks", params={"limit": "1"}), 200)
    late = await client.post(f"/v1/tasks/{task['id']}/cancel", json={"reason": "late"})
    await check("/v1/tasks/{task_id}/cancel", "post", late, 409)
    await check("/v1/tasks/{task_id}", "get", await client.get("/v1/tasks/t-none"), 404)
    bad = await client.post("/v1/tasks", json={"agent": "echo"})
    assert (await check("/v1/tasks", "post", bad, 400))["error"]["fields"]

    parked, running = await start_parked(client, directive="go")
    ctx = await parked.attempt(1)
    prompt = await client.get("/v1/worker/prompt", headers=bearer(ctx.worker_handle))
    await check("/v1/worker/prompt", "get", prompt, 200)
    posted = await client.post(
        "/v1/worker/result", json={"value": 1}, headers=bearer(ctx.worker_handle)
    )
    await check("/v1/worker/result", "post", posted, 200)
    cancelled = await client.post(f"/v1/tasks/{running['id']}/cancel")
    await check("/v1/tasks/{task_id}/cancel", "post", cancelled, 200)

    resp = await client.post("/v1/operators", json={"roles": ["a"], "desc": "d"})
    minted = await check("/v1/operators", "post", resp, 201)
    clash = await client.post("/v1/operators", json={"roles": ["a"]})
    await check("/v1/operators", "post", clash, 409)
    sid, token = minted["sid"], minted["token"]
    own = bearer(token)
    await check(
        "/v1/operators/{sid}", "get", await client.get(f"/v1/operators/{sid}", headers=own), 200
    )
    pending = await client.get(f"/v1/operators/{sid}/pending", headers=own)
    await check("/v1/operators/{sid}/pending", "get", pending, 200)
    await check("/v1/operators", "get", await client.get("/v1/operators"), 200)


async def test_admin_pending_lists_conform_with_a_request_held(server: Server) -> None:
    from tests.wsop import connect, expect

    client = await server()
    doc = await document_of(client)
    sid, token = await mint(client, ["boss"])
    ws = await connect(client, sid, token)
    await create_task(client, agent="coder", operator={"role": "boss"})
    await expect(ws, "hook_before")
    resp = await client.get(f"/v1/operators/{sid}/pending")
    body = await resp.json()
    assert body["pending"], body
    conforms(doc, "/v1/operators/{sid}/pending", "get", 200, body)
    listed = await (await client.get("/v1/operators")).json()
    assert listed["operators"][0]["connected"] is True
    conforms(doc, "/v1/operators", "get", 200, listed)
    await ws.close()


# Each request the handlers refuse with 400 that the document once called valid
# (found by schemathesis's positive-data check): the document now refuses it too.
REFUSED = [
    ("/v1/tasks", "post", {"agent": "echo", "directive": None}),
    ("/v1/operators", "post", {"roles": [""]}),
    ("/v1/operators", "post", {"roles": [" "]}),
    ("/v1/operators", "post", {"roles": ["a", "a"]}),
]


@pytest.mark.parametrize(("path", "method", "body"), REFUSED)
async def test_the_document_refuses_bodies_the_handlers_refuse(
    server: Server, path: str, method: str, body: Any
) -> None:
    client = await server()
    doc = await document_of(client)
    resp = await client.request(method, path, json=body)
    assert resp.status == 400
    schema = dict(doc["paths"][path][method]["requestBody"]["content"]["application/json"])
    schema = dict(schema["schema"], components=doc["components"])
    assert not OAS31Validator(schema).is_valid(body)


@pytest.mark.parametrize(
    ("path", "name", "value"),
    [("/v1/tasks", "after", ""), ("/v1/operators", "after", "nonsense")],
)
async def test_the_document_refuses_queries_the_handlers_refuse(
    server: Server, path: str, name: str, value: str
) -> None:
    client = await server()
    doc = await document_of(client)
    resp = await client.get(path, params={name: value})
    assert resp.status == 400
    (param,) = [p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == name]
    assert not OAS31Validator(param["schema"]).is_valid(value)


async def test_the_document_is_served_with_an_api_token_configured_without_one(
    server: Server,
) -> None:
    """The contract is public: a client reads it before it has any credential."""
    client = await server(api_token=API)
    resp = await client.get("/v1/openapi.json")
    assert resp.status == 200


async def test_each_streamed_event_matches_the_documented_event(server: Server) -> None:
    """An event stream is documented per event ({id, event, data}), its data
    as the EventData object: a real stream's events, validated against both."""
    client = await server()
    doc = await document_of(client)
    task = await create_task(client, agent="echo")
    await wait_task(client, task["id"])
    path = "/v1/tasks/{task_id}/events"
    answer = doc["paths"][path]["get"]["responses"]["200"]["content"]["text/event-stream"]
    event_schema = dict(answer["schema"], components=doc["components"])
    data_schema = dict(event_schema["properties"]["data"]["contentSchema"])
    data_schema["components"] = doc["components"]
    resp = await client.get(f"/v1/tasks/{task['id']}/events")
    blocks = []
    while (block := await next_block(resp)) is not None:
        blocks.append(block)
    assert len(blocks) == 6
    for block in blocks:
        event = fields_of(block)
        OAS31Validator(event_schema).validate(event)
        OAS31Validator(data_schema).validate(json.loads(event["data"]))
