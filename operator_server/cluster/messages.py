"""Every message the nodes of a cluster send each other, declared once.

A message travels as ``{"k": kind, "f": from_node, "b": body}`` (a
``NOTIFY`` payload, or a ``cluster_messages`` row when too large: see
``cluster/bus.py``).  Each kind is one frozen dataclass here: its fields are
its body, ``body()`` builds it, ``parse`` reads it back and refuses a body
that is not its shape (a missing, extra or mistyped field) with
``BadMessage``; ``encode`` makes the whole payload.  The bus hands each
handler the parsed message, so nothing outside this package reads a body by
key.  ``tests/cluster/test_messages.py`` round-trips every kind.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from operator_server.wire import json as wire_json

M = TypeVar("M", bound="Message")


class BadMessage(ValueError):
    """A message that is not the shape its kind declares."""


@dataclass(frozen=True)
class Message:
    KIND: ClassVar[str]

    def body(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def encode(self, from_node: str) -> str:
        """The whole payload, as sent."""
        return wire_json.dumps({"k": self.KIND, "f": from_node, "b": self.body()})

    @classmethod
    def parse(cls: type[M], body: Any) -> M:
        if not isinstance(body, dict):
            raise BadMessage(f"{cls.KIND}: the body is not an object")
        hints, fields, names = _shape(cls)
        extra = sorted(set(body) - names)
        if extra:
            raise BadMessage(f"{cls.KIND}: unknown fields {extra}")
        values = {}
        for f in fields:
            if f.name not in body:
                if f.default is not dataclasses.MISSING:
                    continue
                raise BadMessage(f"{cls.KIND}: missing field {f.name!r}")
            if not _fits(body[f.name], hints[f.name]):
                raise BadMessage(f"{cls.KIND}: field {f.name!r} is not {hints[f.name]}")
            values[f.name] = body[f.name]
        return cls(**values)


Shape = tuple[dict[str, Any], tuple[dataclasses.Field[Any], ...], frozenset[str]]
_SHAPES: dict[type[Message], Shape] = {}


def _shape(cls: type[Message]) -> Shape:
    """A kind's field types, fields and field names, worked out once per kind:
    ``get_type_hints`` evaluates (compiles) every annotation each time, which
    was most of the cost of hearing a message."""
    shape = _SHAPES.get(cls)
    if shape is None:
        fields = dataclasses.fields(cls)
        shape = typing.get_type_hints(cls), fields, frozenset(f.name for f in fields)
        _SHAPES[cls] = shape
    return shape


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, hint)


# -- what the store announces, as the transaction that made it commits --------


@dataclass(frozen=True)
class EventsStored(Message):
    """To every node: events up to ``last`` are stored; streams read on."""

    KIND: ClassVar[str] = "events"
    last: int


@dataclass(frozen=True)
class TasksEnded(Message):
    """To every node: these tasks ended; their long-polls look again."""

    KIND: ClassVar[str] = "ended"
    ids: list[str]


@dataclass(frozen=True)
class EndedAs(Message):
    """To every node, just before the ``TasksEnded`` naming them: these tasks
    as they ended (by id: the whole task record, as JSON text, as a task row
    holds it), for the long-polls on them to answer without reading them.  A
    kind of its own, so that a node that does not know it still hears the
    ids in ``TasksEnded``."""

    KIND: ClassVar[str] = "ended_as"
    records: dict[str, str]

    @classmethod
    def packed(cls, ids: list[str], told: dict[str, tuple[str, int]], budget: int) -> list[EndedAs]:
        """The records ``told`` has for ``ids`` (each with its encoded size), in
        as few messages as hold them within ``budget`` characters each; a
        record too large to ride along is left out (its long-polls read it)."""
        packs: list[dict[str, str]] = []
        size = budget
        for task_id in ids:
            record, length = told.get(task_id, (None, 0))
            adds = len(task_id) + 6 + length
            if record is None or adds > budget // 2:
                continue
            if size + adds > budget:
                packs.append({})
                size = 0
            packs[-1][task_id] = record
            size += adds
        return [cls(records) for records in packs]


@dataclass(frozen=True)
class NodesGone(Message):
    """To every node: these nodes stopped beating; calls to them fail at once."""

    KIND: ClassVar[str] = "nodes_gone"
    nodes: list[str]


@dataclass(frozen=True)
class KeyRevoked(Message):
    """To every node: API key ``key_id`` is revoked; forget what was cached of it."""

    KIND: ClassVar[str] = "key_revoked"
    key_id: str


# -- an operator's requests, wherever its socket is (``cluster/relay.py``) -----


@dataclass(frozen=True)
class Deliver(Message):
    """To the node holding the session's socket: show the operator ``frame``."""

    KIND: ClassVar[str] = "deliver"
    sid: str
    req_id: str
    frame: dict[str, Any]


@dataclass(frozen=True)
class Withdraw(Message):
    """To the node holding the socket: send the operator ``cancel`` for ``req_id``."""

    KIND: ClassVar[str] = "withdraw"
    sid: str
    req_id: str
    reason: str


@dataclass(frozen=True)
class Delivered(Message):
    """To a node waiting on a session's requests: its socket is back (elsewhere)."""

    KIND: ClassVar[str] = "delivered"
    sid: str


@dataclass(frozen=True)
class Replaced(Message):
    """To the node that held the session's socket: close it, a newer one
    (attach ``epoch``) is elsewhere."""

    KIND: ClassVar[str] = "replaced"
    sid: str
    epoch: int


@dataclass(frozen=True)
class SessionGone(Message):
    """To every node: forget the session."""

    KIND: ClassVar[str] = "session_gone"
    sid: str
    code: str
    message: str


@dataclass(frozen=True)
class Seated(Message):
    """To every node: session ``sid`` now holds ``roles`` (minted, or handed a
    seat); a node with requests waiting for one of them issues them to it."""

    KIND: ClassVar[str] = "seated"
    sid: str
    roles: list[str]


# -- where a task runs (``cluster/placement.py``) -----------------------------


@dataclass(frozen=True)
class Placed(Message):
    """To the node holding a task's operator socket: these tasks, created
    elsewhere, are leased to you; take them and run their attempts there."""

    KIND: ClassVar[str] = "placed"
    ids: list[str]


@dataclass(frozen=True)
class SocketAttached(Message):
    """To every node: session ``sid``'s socket attached on the sender.  A node
    holding tasks that wait for a socket of their operator looks again where
    it is, and hands them there."""

    KIND: ClassVar[str] = "socket_attached"
    sid: str


# -- calls between nodes (``cluster/calls.py``) --------------------------------


@dataclass(frozen=True)
class Call(Message):
    """Run method ``m`` with ``a`` here; answer with ``Answer`` of the same ``id``."""

    KIND: ClassVar[str] = "call"
    id: int
    m: str
    a: dict[str, Any]
    # The caller's W3C trace context (``wire/trace.py``), when it traces.
    t: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        body = {"id": self.id, "m": self.m, "a": self.a}
        return body if self.t is None else {**body, "t": self.t}


@dataclass(frozen=True)
class Answer(Message):
    """A call's outcome: its ``value``, or its ``error`` (``calls.error_to_wire``)."""

    KIND: ClassVar[str] = "answer"
    id: int
    value: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        if self.error is not None:
            return {"id": self.id, "error": self.error}
        return {"id": self.id, "value": self.value}

    @classmethod
    def parse(cls, body: Any) -> Answer:
        answer = super().parse(body)
        if ("error" in body) == ("value" in body):
            raise BadMessage("answer: exactly one of 'value' and 'error'")
        if "value" in body and answer.value is None:
            raise BadMessage("answer: field 'value' is not an object")
        return answer


KINDS: dict[str, type[Message]] = {
    m.KIND: m
    for m in (
        EventsStored,
        TasksEnded,
        NodesGone,
        KeyRevoked,
        Deliver,
        Withdraw,
        Delivered,
        Replaced,
        SessionGone,
        Seated,
        Placed,
        SocketAttached,
        EndedAs,
        Call,
        Answer,
    )
}


def decode(payload: str) -> tuple[str, Message | None]:
    """The sender and the message of a payload; None for a kind this node does
    not know (a newer node's).  ``BadMessage`` (a ``ValueError``) when it is
    not a message, or not its kind's shape."""
    envelope = wire_json.loads(payload, wire_json.STORED_MAX_DEPTH)
    if not isinstance(envelope, dict) or set(envelope) != {"k", "f", "b"}:
        raise BadMessage("not a cluster message")
    kind, sender = envelope["k"], envelope["f"]
    if not isinstance(kind, str) or not isinstance(sender, str):
        raise BadMessage("not a cluster message")
    cls = KINDS.get(kind)
    return sender, None if cls is None else cls.parse(envelope["b"])
