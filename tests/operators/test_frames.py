"""Bad frames get error frames; the socket and every pending request survive."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from operator_server.wire import frames as p
from tests.conftest import Server, create_task, engine_of, wait_task
from tests.wire.test_fastcheck import agree
from tests.wsop import connect, expect, mint, no_frame


async def pending_hook(
    server: Server, **settings: Any
) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
    client = await server(**settings)
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    task = await create_task(client, agent="coder", operator={"sid": sid})
    hook = await expect(ws, "hook_before")
    return client, ws, task, hook


@pytest.mark.parametrize(
    ("frame", "code", "names"),
    [
        ("{nope", "bad_json", "not valid JSON"),
        ("[1]", "bad_message", "JSON object"),
        ('{"type": "shout", "req_id": "x"}', "bad_message", "type"),
        ('{"req_id": "x"}', "bad_message", "type"),
        ('{"type": "hook_ack", "ok": true}', "bad_message", "req_id"),
        ('{"type": "hook_ack", "req_id": "x"}', "bad_message", "ok"),
        ('{"type": "hook_ack", "req_id": "x", "ok": "yes"}', "bad_message", "ok"),
        ('{"type": "answer", "req_id": "x", "value": 1, "extra": 2}', "bad_message", "extra"),
        (
            '{"type": "answer", "req_id": "never-issued", "value": 1}',
            "unknown_req_id",
            "never-issued",
        ),
        # Hostile input: each of these once closed the socket or got through.
        (
            '{"type": "answer", "req_id": "x", "value": ' + "[" * 10_000 + "]" * 10_000 + "}",
            "bad_message",
            "max_json_depth (64)",
        ),
        ('{"type": "answer", "req_id": "x", "value": NaN}', "bad_json", "NaN"),
        ('{"type": "answer", "req_id": "x", "value": [-Infinity]}', "bad_json", "Infinity"),
        ('{"type": "answer", "req_id": "x", "value": {"a": "\\ud800"}}', "bad_message", "value.a"),
        ('{"type": "hook_ack", "req_id": "x", "ok": 1}', "bad_message", "ok"),
        ('{"type": "hook_ack", "req_id": "x", "ok": 0}', "bad_message", "ok"),
    ],
)
async def test_bad_frames_get_an_error_frame_and_nothing_is_disturbed(
    server: Server, frame: str, code: str, names: str
) -> None:
    client, ws, task, hook = await pending_hook(server)
    await ws.send_str(frame)
    err = await expect(ws, "error")
    assert err["code"] == code and names in err["message"]
    # The socket is open and the pending hook is still answerable.
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": False, "reason": "r"})
    done = await wait_task(client, task["id"])
    assert done["error"]["message"] == "spawn rejected: r"


async def test_a_bad_message_error_carries_the_req_id_when_it_can(server: Server) -> None:
    _, ws, _, hook = await pending_hook(server)
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": "sure"})
    err = await expect(ws, "error")
    assert err["req_id"] == hook["req_id"] and err["code"] == "bad_message"


@pytest.mark.parametrize("ok", ["1", "1.0", '"true"'])
async def test_a_truthy_non_boolean_ok_never_approves_a_pending_hook(
    server: Server, ok: str
) -> None:
    client, ws, task, hook = await pending_hook(server)
    await ws.send_str(f'{{"type": "hook_ack", "req_id": "{hook["req_id"]}", "ok": {ok}}}')
    err = await expect(ws, "error")
    assert err["code"] == "bad_message" and err["req_id"] == hook["req_id"]
    # Still pending: a real answer decides it.
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": False, "reason": "no"})
    assert (await wait_task(client, task["id"]))["error"]["message"] == "spawn rejected: no"


async def test_max_json_depth_bounds_frames_too(server: Server) -> None:
    _, ws, _, hook = await pending_hook(server, max_json_depth=4)
    # The frame object is level 1.
    await ws.send_json({"type": "answer", "req_id": "x", "value": [[[[1]]]]})
    assert (await expect(ws, "error"))["code"] == "bad_message"
    await ws.send_json({"type": "answer", "req_id": "x", "value": [[[1]]]})
    assert (await expect(ws, "error"))["code"] == "unknown_req_id"
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    await expect(ws, "spawn")


async def test_a_duplicate_answer_is_already_answered_and_changes_nothing(server: Server) -> None:
    client, ws, task, hook = await pending_hook(server)
    await ws.send_json(
        {"type": "hook_ack", "req_id": hook["req_id"], "ok": False, "reason": "first"}
    )
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    err = await expect(ws, "error")
    assert err == {
        "type": "error",
        "code": "already_answered",
        "message": err["message"],
        "req_id": hook["req_id"],
    }
    done = await wait_task(client, task["id"])
    assert done["error"]["message"] == "spawn rejected: first"


async def test_a_reply_of_the_wrong_kind_is_refused_and_the_request_stays(server: Server) -> None:
    client, ws, task, hook = await pending_hook(server)
    await ws.send_json({"type": "answer", "req_id": hook["req_id"], "value": "yes"})
    err = await expect(ws, "error")
    assert err["code"] == "wrong_reply" and "answer cannot answer a hook_before" in err["message"]
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    spawn = await expect(ws, "spawn")
    await ws.send_json({"type": "hook_ack", "req_id": spawn["req_id"], "ok": True})
    assert (await expect(ws, "error"))["code"] == "wrong_reply"
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": 1})
    assert (await wait_task(client, task["id"]))["status"] == "passed"


async def test_a_frame_over_max_frame_bytes_is_too_large_and_the_socket_stays(
    server: Server,
) -> None:
    _client, ws, _task, hook = await pending_hook(server, max_frame_bytes=2048)
    await ws.send_str(json.dumps({"type": "answer", "req_id": "x", "value": "z" * 4000}))
    err = await expect(ws, "error")
    assert err["code"] == "too_large" and "2048" in err["message"]
    await ws.send_bytes(b"\x00\x01")
    assert (await expect(ws, "error"))["code"] == "bad_message"
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    await expect(ws, "spawn")


async def test_a_thousand_concurrent_asks_answered_out_of_order_reach_their_callers(
    server: Server,
) -> None:
    client = await server()
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    bridge = engine_of(client).resolution.get(sid)
    assert bridge is not None
    n = 1000
    callers = [asyncio.create_task(bridge.ask(f"t-{i}", {"n": i})) for i in range(n)]
    asks = [await expect(ws, "ask") for _ in range(n)]
    assert len({a["req_id"] for a in asks}) == n
    random.Random(7).shuffle(asks)
    for ask in asks:
        await ws.send_json(
            {"type": "answer", "req_id": ask["req_id"], "value": ask["question"]["n"] * 2}
        )
    answers = await asyncio.wait_for(asyncio.gather(*callers), 10)
    assert answers == [i * 2 for i in range(n)]
    await no_frame(ws)


def test_every_builder_makes_a_frame_its_schema_accepts() -> None:
    server_frames = [
        p.ask_frame("r", "t", {"q": 1}),
        p.ask_frame("r", "t", None, parent_req_id="r0"),
        p.hook_before_frame("r", "t", "a", 1),
        p.hook_after_frame("r", "t", "a", 1, {"value": 1, "ok": True}),
        p.spawn_frame("r", "t", "a", 1, "cap", "wh-1", "do it"),
        p.cancel_frame("r", "why"),
        p.error_frame("bad_json", "m"),
        p.error_frame("bad_json", "m", "r"),
        p.pong_frame("b-1"),
    ]
    for frame in server_frames:
        kind, data = p.parse_server_frame(p.encode(frame))
        assert kind == frame["type"] and {"type": kind, **data} == frame
    client_frames = [
        p.answer_frame("r", None),
        p.hook_ack_frame("r", False, "no"),
        p.spawn_ack_frame("r", {"x": 1}),
        p.spawn_ack_frame("r", error="boom"),
        p.spawn_halt_frame("r", "stop", 3),
        p.ping_frame("b-1"),
        p.reassign_frame("r", role="l2", note="yours"),
        p.reassign_frame("r", sid="op-1"),
    ]
    for frame in client_frames:
        kind, _ = p.parse_client_frame(p.encode(frame))
        assert kind == frame["type"]
    assert set(p.SERVER_FRAMES) == {f["type"] for f in server_frames}
    assert set(p.CLIENT_FRAMES) == {f["type"] for f in client_frames}


def test_the_fast_path_agrees_with_the_schemas_on_every_frame() -> None:

    samples = [
        p.ask_frame("r", "t", {"q": 1}, parent_req_id="r0"),
        p.hook_before_frame("r", "t", "a", 1),
        p.hook_after_frame("r", "t", "a", 1, {"value": 1, "ok": True}),
        p.spawn_frame("r", "t", "a", 1, "cap", "wh-1", "do it"),
        p.cancel_frame("r", "why"),
        p.error_frame("bad_json", "m", "r"),
        p.answer_frame("r", {"v": 1}, error="e"),
        p.hook_ack_frame("r", True, "fine"),
        p.spawn_ack_frame("r", {"x": 1}, ok=False, error="boom"),
        p.spawn_halt_frame("r", "stop", 3),
        p.ping_frame("b-1"),
        p.pong_frame("b-1"),
        p.reassign_frame("r", role="l2", note="yours"),
        {"type": "reassign", "req_id": "r"},  # no target: both paths refuse it
        {"type": "reassign", "req_id": "r", "role": "a", "sid": "b"},
    ]
    checked = 0
    for sample in samples:
        schema = {**p.SERVER_FRAMES, **p.CLIENT_FRAMES}[sample["type"]]
        body = {k: v for k, v in sample.items() if k != "type"}
        checked += agree(schema, [body])
    assert checked > len(samples)  # it does take the common frames


def test_every_boolean_and_integer_field_refuses_look_alikes() -> None:
    """Booleans only JSON booleans, integers only JSON integers, in every frame."""
    from marshmallow import ValidationError, fields

    look_alikes = {
        fields.Boolean: (1, 0, 1.0, "true", "1", None),
        fields.Integer: ("1", 1.5, 1.0, True, False, None),
    }
    checked = 0
    for schema in (*p.SERVER_FRAMES.values(), *p.CLIENT_FRAMES.values()):
        for name, field in schema.fields.items():
            kind = next((k for k in look_alikes if isinstance(field, k)), None)
            if kind is None:
                continue
            for odd in look_alikes[kind]:
                with pytest.raises(ValidationError) as refused:
                    schema.load({**_filler(schema), name: odd})
                assert set(refused.value.messages) == {name}, (schema, name, odd)
                checked += 1
    assert checked >= 20


def _filler(schema: Any) -> dict[str, Any]:
    """Valid values for every required field, so only the field under test is wrong."""
    from marshmallow import fields

    sample = {fields.String: "s", fields.Integer: 1, fields.Boolean: True, fields.Dict: {}}
    out: dict[str, Any] = {}
    for name, field in schema.fields.items():
        if field.required:
            out[name] = next((v for k, v in sample.items() if isinstance(field, k)), None)
    return out


async def test_a_ping_is_answered_after_every_frame_sent_before_it(server: Server) -> None:
    """The barrier clients use: errors about earlier replies arrive before the pong."""
    client = await server()
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    await ws.send_str(p.encode(p.hook_ack_frame(f"{sid}-hb-nope", True)))
    await ws.send_str(p.encode(p.ping_frame("barrier-1")))
    refused = await expect(ws, "error")
    assert refused["code"] == "unknown_req_id"
    assert await expect(ws, "pong") == {"type": "pong", "id": "barrier-1"}
    await ws.send_str(json.dumps({"type": "ping", "id": ""}))
    assert (await expect(ws, "error"))["code"] == "bad_message"
