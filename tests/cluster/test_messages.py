"""Every cross-node message kind: its builder and its parser agree, and a
parser refuses a body that is not its kind's shape."""

from __future__ import annotations

from typing import Any

import pytest

from operator_server.cluster.messages import (
    KINDS,
    Answer,
    BadMessage,
    Call,
    Deliver,
    Delivered,
    EndedAs,
    EventsStored,
    KeyRevoked,
    Message,
    NodesGone,
    Placed,
    Replaced,
    Seated,
    SessionGone,
    SocketAttached,
    TasksEnded,
    Withdraw,
    decode,
)
from operator_server.wire import json as wire_json

ONE_OF_EACH: list[Message] = [
    EventsStored(last=42),
    TasksEnded(ids=["t-1", "t-2"]),
    EndedAs(records={"t-1": '{"id": "t-1"}'}),
    NodesGone(nodes=["node-b"]),
    KeyRevoked(key_id="0123abcd"),
    Deliver(sid="s1", req_id="s1-ask-1", frame={"type": "ask", "question": {"q": [1, None]}}),
    Withdraw(sid="s1", req_id="s1-ask-1", reason="timed out"),
    Delivered(sid="s1"),
    Replaced(sid="s1", epoch=3),
    SessionGone(sid="s1", code="session_deleted", message="gone"),
    Seated(sid="s1", roles=["l2", "night"]),
    Placed(ids=["t-1", "t-2"]),
    SocketAttached(sid="s1"),
    Call(id=7, m="worker_prompt", a={"claims": {"task_id": "t-1"}}),
    Answer(id=7, value={"ok": True}),
    Answer(id=8, error={"type": "AttemptEnded", "code": "attempt_ended", "message": "x"}),
]


def test_every_kind_is_declared_and_exercised() -> None:
    assert {type(m) for m in ONE_OF_EACH} == set(KINDS.values())
    assert len(KINDS) == len(set(KINDS))  # no two kinds share a name


@pytest.mark.parametrize("message", ONE_OF_EACH, ids=lambda m: m.KIND)
def test_each_kind_round_trips_through_its_payload(message: Message) -> None:
    sender, back = decode(message.encode("node-a"))
    assert (sender, back) == ("node-a", message)
    # The payload on the wire is the envelope the bus has always carried.
    envelope = wire_json.loads(message.encode("node-a"), 64)
    assert envelope == {"k": message.KIND, "f": "node-a", "b": message.body()}


def _broken_bodies(message: Message) -> list[Any]:
    body = message.body()
    broken: list[Any] = ["not an object", {**body, "extra": 1}]
    for name in body:
        broken.append({k: v for k, v in body.items() if k != name})  # one missing
        broken.append({**body, name: object()})  # one mistyped (not JSON at all)
    return broken


@pytest.mark.parametrize("message", ONE_OF_EACH, ids=lambda m: m.KIND)
def test_each_parser_refuses_a_malformed_body(message: Message) -> None:
    for body in _broken_bodies(message):
        with pytest.raises(BadMessage):
            type(message).parse(body)


def test_typed_fields_are_checked_not_coerced() -> None:
    with pytest.raises(BadMessage):
        Replaced.parse({"sid": "s1", "epoch": "3"})
    with pytest.raises(BadMessage):
        Replaced.parse({"sid": "s1", "epoch": True})
    with pytest.raises(BadMessage):
        TasksEnded.parse({"ids": ["t-1", 2]})
    with pytest.raises(BadMessage):
        Answer.parse({"id": 1, "value": {}, "error": {}})
    with pytest.raises(BadMessage):
        Answer.parse({"id": 1})


def test_a_payload_that_is_no_message_is_refused_and_an_unknown_kind_is_skipped() -> None:
    for payload in ('"text"', '{"k": "events", "b": {}}', '{"k": 1, "f": "a", "b": {}}'):
        with pytest.raises(BadMessage):
            decode(payload)
    assert decode('{"k": "from_a_newer_node", "f": "a", "b": {}}') == ("a", None)


def test_a_call_carries_its_callers_trace_context_only_when_there_is_one() -> None:
    carrier = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    traced = Call(id=9, m="worker_result", a={}, t=carrier)
    assert decode(traced.encode("node-b")) == ("node-b", traced)
    assert "t" not in Call(id=9, m="worker_result", a={}).body()  # no bytes when not tracing
    with pytest.raises(BadMessage):
        Call.parse({"id": 9, "m": "worker_result", "a": {}, "t": "not an object"})


def test_ended_news_carries_the_ended_records_that_fit() -> None:
    told = {f"t-{n}": (f"{{{n}}}" + "x" * 3000, 3004) for n in (1, 2, 3)}
    told["t-big"] = ("y" * 5000, 5000)
    ids = ["t-1", "t-big", "t-2", "t-3", "t-4"]
    messages = EndedAs.packed(ids, told, budget=7000)
    # Two records fill a message; one too large for any rides in none (its
    # long-polls read it), nor does one without a record.
    assert [sorted(m.records) for m in messages] == [["t-1", "t-2"], ["t-3"]]
    for message in messages:
        assert decode(message.encode("node-a")) == ("node-a", message)
        assert len(message.encode("node-a")) <= 7000
    assert EndedAs.packed(["t-4"], told, budget=7000) == []
