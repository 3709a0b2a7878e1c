"""The WebSocket wire format, declared once for the server and the client library.

Text frames, one JSON object each, tagged by ``type``.  Each frame type has one
marshmallow schema here (``SERVER_FRAMES`` / ``CLIENT_FRAMES``), one builder
function, and both sides parse with ``parse_frame``.  Builders make plain dicts
(no schema round trip on the hot path); the tests check every builder's output
against its schema.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from operator_server.errors import Code, ProtocolError, describe_validation
from operator_server.wire import json
from operator_server.wire.fastcheck import fast_check
from operator_server.wire.fields import StrictBoolean, StrictInteger
from operator_server.wire.trace import TraceContextSchema
from operator_server.wire.values import Face

# req_id = <sid>-<kind>-<uuid4>; the kind tag names the face.
# The frame type counted for a client frame that did not parse (metrics label).
INVALID_FRAME = "invalid"
REQ_KIND = {"ask": "ask", "hook_before": "hb", "hook_after": "ha", "spawn": "spawn"}
# The face each request kind serves (task events name it).
FACE_OF = {
    "ask": Face.SENIOR_BRIDGE,
    "hook_before": Face.SPAWN_HOOK,
    "hook_after": Face.SPAWN_HOOK,
    "spawn": Face.BACKEND,
}
# The close code of a socket a newer connection for the same session replaced:
# the client that sees it stops, rather than reconnecting and replacing it back.
REPLACED_CLOSE_CODE = 4000
REPLACED_REASON = "replaced by a newer connection for this session"
# The close code of a socket whose attach the store could not record (cluster
# mode: no other node could reach it): "try again later", and a client does.
UNSTORED_CLOSE_CODE = 1013
UNSTORED_REASON = "the attach could not be stored; connect again"
# The ``cancel`` reason a socket is told when its request was answered by
# someone else (over REST, or a batch).
ANSWERED_ELSEWHERE = "answered_elsewhere"
# Which request each reply answers.
REPLY_TO = {
    "answer": "ask",
    "hook_ack": "hook_before",
    "spawn_ack": "spawn",
    "spawn_halt": "spawn",
}


class _Frame(Schema):
    """Every frame.  marshmallow's default ``unknown = RAISE`` applies, as to every
    schema in this project: an undeclared field is an error that names it."""


class _Request(_Frame):
    req_id = fields.String(required=True, validate=validate.Length(min=1))
    parent_req_id = fields.String()
    task_id = fields.String(required=True)
    # The request's W3C trace context when the server traces (``wire/trace.py``).
    trace = fields.Nested(TraceContextSchema)


class AskFrame(_Request):
    question = fields.Raw(required=True, allow_none=True)
    # The form the answer must fill (``wire.answer_schema``); the server
    # refuses an answer that does not validate with ``bad_answer``.
    answer_schema = fields.Dict()


class HookBeforeFrame(_Request):
    agent = fields.String(required=True)
    attempt = StrictInteger(required=True)


class HookAfterFrame(HookBeforeFrame):
    result = fields.Dict(required=True)


class SpawnFrame(HookBeforeFrame):
    capability_token = fields.String(required=True)
    worker_handle = fields.String(required=True)
    directive = fields.String(required=True)


class PingFrame(_Frame):
    """Client -> server, beyond the seed: the server answers ``pong`` with the same
    ``id`` after every frame sent before it has been handled.  Replies have no
    acknowledgement of their own; a ping after them is the barrier that says
    "any error about those replies has already been sent"."""

    id = fields.String(required=True, validate=validate.Length(min=1, max=200))


class ReassignFrame(_Frame):
    """Client -> server: the holder of ``req_id`` moves it to another role or
    session (exactly one of ``role`` / ``sid``).  Its acknowledgement is the
    ``cancel`` (reason ``reassigned``) that withdraws it from this socket; a
    refusal is an ``error`` frame naming the ``req_id``."""

    req_id = fields.String(required=True, validate=validate.Length(min=1))
    role = fields.String(validate=validate.Length(min=1, max=200))
    sid = fields.String(validate=validate.Length(min=1, max=200))
    note = fields.String(validate=validate.Length(max=2000))

    @validates_schema
    def _one_target(self, data: dict[str, Any], **_: Any) -> None:
        if ("role" in data) == ("sid" in data):
            raise ValidationError("name exactly one target: role or sid", "role")


class PongFrame(_Frame):
    id = fields.String(required=True)


class CancelFrame(_Frame):
    req_id = fields.String(required=True)
    reason = fields.String(required=True)


class ErrorFrame(_Frame):
    code = fields.String(required=True)
    message = fields.String(required=True)
    req_id = fields.String()


class _Reply(_Frame):
    req_id = fields.String(required=True, validate=validate.Length(min=1))


class AnswerFrame(_Reply):
    value = fields.Raw(load_default=None, allow_none=True)
    # Beyond the seed: the senior could not answer; the ask fails instead of
    # an empty answer silently overriding an ok=false result.
    error = fields.String(allow_none=True)


class HookAckFrame(_Reply):
    ok = StrictBoolean(required=True)
    reason = fields.String(allow_none=True)


class SpawnAckFrame(_Reply):
    value = fields.Raw(load_default=dict, allow_none=True)
    ok = StrictBoolean(load_default=True)
    error = fields.String(allow_none=True)


class SpawnHaltFrame(_Reply):
    reason = fields.String(allow_none=True)
    value = fields.Raw(allow_none=True)


SERVER_FRAMES: dict[str, Schema] = {
    "ask": AskFrame(),
    "hook_before": HookBeforeFrame(),
    "hook_after": HookAfterFrame(),
    "spawn": SpawnFrame(),
    "cancel": CancelFrame(),
    "error": ErrorFrame(),
    "pong": PongFrame(),
}
CLIENT_FRAMES: dict[str, Schema] = {
    "answer": AnswerFrame(),
    "hook_ack": HookAckFrame(),
    "spawn_ack": SpawnAckFrame(),
    "spawn_halt": SpawnHaltFrame(),
    "ping": PingFrame(),
    "reassign": ReassignFrame(),
}


def parse_frame(
    text: str | bytes, table: dict[str, Schema], max_depth: int
) -> tuple[str, dict[str, Any]]:
    """Decode and validate one frame; ``ProtocolError`` says what is wrong.

    Not standard JSON (``NaN``, bad UTF-8) is ``bad_json``; nesting past
    ``max_depth`` or a lone surrogate is ``bad_message`` naming it.
    """
    try:
        data = json.loads(text, max_depth)
    except json.JsonError as exc:
        if exc.code == Code.BAD_JSON:
            raise ProtocolError(Code.BAD_JSON, f"frame is {exc.message}") from None
        raise ProtocolError(Code.BAD_MESSAGE, exc.message) from None
    if not isinstance(data, dict):
        raise ProtocolError(Code.BAD_MESSAGE, "frame must be a JSON object")
    req_id = data.get("req_id") if isinstance(data.get("req_id"), str) else None
    kind = data.pop("type", None)
    schema = table.get(kind) if isinstance(kind, str) else None
    if schema is None:
        known = ", ".join(table)
        raise ProtocolError(
            Code.BAD_MESSAGE, f"type: {kind!r} is not a known frame type ({known})", req_id
        )
    fast = fast_check(schema)(data)
    if fast is not None:
        return kind, fast
    try:
        return kind, schema.load(data)
    except ValidationError as exc:
        message = "; ".join(describe_validation(exc.messages))
        raise ProtocolError(Code.BAD_MESSAGE, message, req_id) from None


def parse_client_frame(
    text: str | bytes, max_depth: int = json.DEFAULT_MAX_DEPTH
) -> tuple[str, dict[str, Any]]:
    """A frame from an operator; ``max_depth`` is the server's ``max_json_depth``."""
    return parse_frame(text, CLIENT_FRAMES, max_depth)


def parse_server_frame(
    text: str | bytes, max_depth: int = json.STORED_MAX_DEPTH
) -> tuple[str, dict[str, Any]]:
    """A frame from the server.  Its values may wrap what the server accepted a
    level or two deeper (an escalation ``ask`` holds the worker's value), so the
    client allows what the server may store."""
    return parse_frame(text, SERVER_FRAMES, max_depth)


def parse_reply(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A reply given as a JSON object rather than a frame's text (``POST
    /v1/requests/{req_id}/reply``): checked by the very schemas a socket's
    reply is, ``type`` included; ``ProtocolError`` (``bad_message``) says what
    is wrong."""
    body = dict(data)
    kind = body.pop("type", None)
    req_id = body.get("req_id") if isinstance(body.get("req_id"), str) else None
    if not isinstance(kind, str) or kind not in REPLY_TO:
        raise ProtocolError(
            Code.BAD_MESSAGE,
            f"type: {kind!r} is not a reply type ({', '.join(REPLY_TO)})",
            req_id,
        )
    try:
        return kind, CLIENT_FRAMES[kind].load(body)
    except ValidationError as exc:
        message = "; ".join(describe_validation(exc.messages))
        raise ProtocolError(Code.BAD_MESSAGE, message, req_id) from None


def encode(frame: dict[str, Any]) -> str:
    return json.dumps_bytes(frame).decode()


# -- server -> client ------------------------------------------------------


def _request(kind: str, req_id: str, parent_req_id: str | None, **body: Any) -> dict[str, Any]:
    frame = {"type": kind, "req_id": req_id, **body}
    if parent_req_id is not None:
        frame["parent_req_id"] = parent_req_id
    return frame


# The field of a request frame that carries its W3C trace context (``wire/trace.py``).
TRACE = "trace"


def with_trace(frame: dict[str, Any], carrier: dict[str, str]) -> dict[str, Any]:
    """``frame`` (a request) carrying the W3C context of its request's span."""
    frame[TRACE] = carrier
    return frame


def ask_frame(
    req_id: str,
    task_id: str,
    question: Any,
    parent_req_id: str | None = None,
    answer_schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    frame = _request("ask", req_id, parent_req_id, task_id=task_id, question=question)
    if answer_schema is not None:
        frame["answer_schema"] = answer_schema
    return frame


def hook_before_frame(
    req_id: str, task_id: str, agent: str, attempt: int, parent_req_id: str | None = None
) -> dict[str, Any]:
    return _request(
        "hook_before", req_id, parent_req_id, task_id=task_id, agent=agent, attempt=attempt
    )


def hook_after_frame(
    req_id: str,
    task_id: str,
    agent: str,
    attempt: int,
    result: dict[str, Any],
    parent_req_id: str | None = None,
) -> dict[str, Any]:
    return _request(
        "hook_after",
        req_id,
        parent_req_id,
        task_id=task_id,
        agent=agent,
        attempt=attempt,
        result=result,
    )


def spawn_frame(
    req_id: str,
    task_id: str,
    agent: str,
    attempt: int,
    capability_token: str,
    worker_handle: str,
    directive: str,
    parent_req_id: str | None = None,
) -> dict[str, Any]:
    return _request(
        "spawn",
        req_id,
        parent_req_id,
        task_id=task_id,
        agent=agent,
        attempt=attempt,
        capability_token=capability_token,
        worker_handle=worker_handle,
        directive=directive,
    )


def cancel_frame(req_id: str, reason: str) -> dict[str, Any]:
    return {"type": "cancel", "req_id": req_id, "reason": reason}


def error_frame(code: str, message: str, req_id: str | None = None) -> dict[str, Any]:
    frame = {"type": "error", "code": code, "message": message}
    if req_id is not None:
        frame["req_id"] = req_id
    return frame


# -- client -> server ------------------------------------------------------


def answer_frame(req_id: str, value: Any, error: str | None = None) -> dict[str, Any]:
    frame = {"type": "answer", "req_id": req_id, "value": value}
    if error is not None:
        frame["error"] = error
    return frame


def hook_ack_frame(req_id: str, ok: bool, reason: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "hook_ack", "req_id": req_id, "ok": ok}
    if reason is not None:
        frame["reason"] = reason
    return frame


def spawn_ack_frame(
    req_id: str, value: Any = None, ok: bool = True, error: str | None = None
) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "spawn_ack", "req_id": req_id, "ok": ok}
    if value is not None:
        frame["value"] = value
    if error is not None:
        frame["error"] = error
    return frame


def spawn_halt_frame(req_id: str, reason: str | None = None, value: Any = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "spawn_halt", "req_id": req_id}
    if reason is not None:
        frame["reason"] = reason
    if value is not None:
        frame["value"] = value
    return frame


def reassign_frame(
    req_id: str, *, role: str | None = None, sid: str | None = None, note: str | None = None
) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "reassign", "req_id": req_id}
    for key, value in (("role", role), ("sid", sid), ("note", note)):
        if value is not None:
            frame[key] = value
    return frame


# -- the barrier (both directions) ------------------------------------------


def ping_frame(ping_id: str) -> dict[str, Any]:
    return {"type": "ping", "id": ping_id}


def pong_frame(ping_id: str) -> dict[str, Any]:
    return {"type": "pong", "id": ping_id}
