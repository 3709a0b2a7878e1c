"""Generated JSON against every body route and frame type: only documented answers.

Deep, wide, odd types (NaN, infinities, huge integers), odd strings (lone
surrogates, brackets, control characters).  Whatever arrives: never a 5xx, a
task that was accepted can be read back as standard JSON, the socket stays open
and answers each bad frame with an error frame, and healthz answers.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operator_server.wire.frames import CLIENT_FRAMES
from tests.conftest import Server, create_task
from tests.engine.test_capabilities import bearer, start_parked
from tests.wsop import connect, expect, mint

_text = st.text(
    st.characters(codec=None, categories=["L", "N", "P", "S", "Z", "Cc", "Cs"]), max_size=12
)
_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and the infinities included: they must be refused
    | _text
)


def _wrap(value: Any, depth: int, as_object: bool) -> Any:
    for _ in range(depth):
        value = {"k": value} if as_object else [value]
    return value


class Deep:
    """Arrays nested ``n`` deep, written straight into the text (``json.dumps``
    itself could not build past the recursion limit)."""

    def __init__(self, n: int) -> None:
        self.n = n


def encode(value: Any) -> str:
    """JSON text as a careless client writes it: NaN, Infinity, \\ud800 escapes and all."""
    text = json.dumps(value, default=lambda deep: f"@@deep{deep.n}@@")
    return re.sub(r'"@@deep(\d+)@@"', lambda m: "[" * int(m[1]) + "]" * int(m[1]), text)


_deep = st.builds(_wrap, _leaf, st.integers(1, 150), st.booleans()) | st.builds(
    Deep, st.integers(1, 5000)
)
VALUES = (
    st.recursive(
        _leaf,
        lambda inner: st.lists(inner, max_size=8) | st.dictionaries(_text, inner, max_size=6),
        max_leaves=40,
    )
    | _deep
)

_ROUTE_KEYS = {
    "tasks": ("agent", "directive", "system", "operator", "layers", "max_attempts"),
    "operators": ("roles", "desc"),
    "cancel": ("reason",),
    "result": ("value", "ok", "task_id"),
    "ask": ("question", "answer_schema", "timeout_s", "key", "task_id"),
}
# What each route may answer with a credential that is good, whatever the body.
_DOCUMENTED = {
    "tasks": {202, 400},
    "operators": {201, 400, 409},
    "cancel": {200, 400, 409},
    "result": {200, 400},
    # The parked operator answers a worker ask at once; a zero wait may see it pending.
    "ask": {200, 202, 400},
}


def _shaped(route: str) -> st.SearchStrategy[Any]:
    """Bodies shaped like the route's own, so generation reaches past the first check."""
    optional: dict[str, st.SearchStrategy[Any]] = {key: VALUES for key in _ROUTE_KEYS[route]}
    if route == "tasks":
        optional["agent"] = st.just("echo") | VALUES
    return st.fixed_dictionaries({}, optional=optional) | VALUES


_BODIES = st.fixed_dictionaries({route: _shaped(route) for route in _ROUTE_KEYS})
_FRAMES = (
    st.fixed_dictionaries(
        {"type": st.sampled_from(sorted(CLIENT_FRAMES)) | VALUES},
        optional={
            "req_id": st.just("op-x-ask-1") | VALUES,
            "value": VALUES,
            "ok": VALUES,
            "reason": VALUES,
            "error": VALUES,
        },
    )
    | VALUES
)
_FRAME_CODES = {"bad_json", "bad_message", "unknown_req_id", "too_large"}


def _standard_json(raw: bytes) -> Any:
    """Parse an answer, refusing what is not standard JSON (NaN, Infinity)."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"the server wrote {constant}, which is not JSON")

    return json.loads(raw, parse_constant=refuse)


_FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,  # the same examples on every run: a failure is reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
async def target(server: Server) -> dict[str, Any]:
    """One server for all examples: a parked attempt's handle and a task to cancel."""
    client = await server()
    parked, _ = await start_parked(client)
    ctx = await parked.attempt(1)
    to_cancel = await create_task(client, agent="echo")
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    return {
        "client": client,
        "ws": ws,
        "paths": {
            "tasks": "/v1/tasks",
            "operators": "/v1/operators",
            "cancel": f"/v1/tasks/{to_cancel['id']}/cancel",
            "result": "/v1/worker/result",
            "ask": "/v1/worker/ask",
        },
        "auth": bearer(ctx.worker_handle),
    }


@_FUZZ
@given(bodies=_BODIES)
async def test_generated_bodies_get_only_documented_answers(
    target: dict[str, Any], bodies: dict[str, Any]
) -> None:
    client = target["client"]
    for route, body in bodies.items():
        # The open daemon's own routes take no credential (one sent is checked).
        headers = target["auth"] if route in ("result", "ask") else {}
        resp = await client.post(target["paths"][route], data=encode(body), headers=headers)
        assert resp.status in _DOCUMENTED[route], (route, resp.status, await resp.text())
        assert resp.content_type == "application/json"
        answer = _standard_json(await resp.read())
        if resp.status == 202:
            read = await client.get(f"/v1/tasks/{answer['id']}")
            assert read.status == 200
            _standard_json(await read.read())
    assert (await client.get("/v1/healthz")).status == 200
    assert (await client.get("/v1/tasks", params={"limit": "500"})).status == 200


@_FUZZ
@given(frame=_FRAMES)
async def test_generated_frames_get_an_error_frame_and_the_socket_stays(
    target: dict[str, Any], frame: Any
) -> None:
    ws = target["ws"]
    # Nothing is pending on this session, so every frame, valid or not, earns
    # exactly one error frame.
    await ws.send_str(encode(frame))
    error = await expect(ws, "error")
    assert error["code"] in _FRAME_CODES, error
    assert not ws.closed
    assert (await target["client"].get("/v1/healthz")).status == 200
