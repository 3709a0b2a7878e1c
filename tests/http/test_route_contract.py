"""What a route declares is what it does: its credentials and its error statuses."""

from __future__ import annotations

from typing import Any

from operator_server.errors import STATUS, Code
from tests.conftest import Server
from tests.http.test_openapi import document_of

API = "contract-api-token"


def test_every_code_is_bound_to_one_http_status() -> None:
    assert set(STATUS) == set(Code)
    assert all(400 <= status < 600 for status in STATUS.values())


async def test_a_route_refuses_a_caller_without_credentials_exactly_where_it_declares_one(
    server: Server,
) -> None:
    # Every token configured: an optional credential (``metrics_token``) is then required.
    client = await server(api_token=API, metrics_token="contract-metrics", events=True)
    doc = await document_of(client)
    seen = 0
    for path, ops in doc["paths"].items():
        url = path.replace("{", "").replace("}", "")  # each parameter: its own name
        for method, op in ops.items():
            kwargs: dict[str, Any] = {}
            if "requestBody" in op:
                kwargs["json"] = {}
            resp = await client.request(method.upper(), url, **kwargs)
            refused = resp.status == 401
            await resp.read()
            assert refused == bool(op.get("security")), (method, path, resp.status)
            if refused:
                body = await resp.json()
                assert STATUS[Code(body["error"]["code"])] == 401, (method, path, body)
            seen += 1
    assert seen > 15


async def test_every_documented_error_status_is_the_status_of_some_code(server: Server) -> None:
    client = await server()
    doc = await document_of(client)
    bound = set(STATUS.values())
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status in op["responses"]:
                if int(status) >= 400:
                    assert int(status) in bound, (method, path, status)
