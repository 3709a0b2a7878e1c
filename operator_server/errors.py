"""Error codes and the one error type per layer.

Every error a user can see carries a stable ``code`` (the constants below) and a
human ``message``.  Each layer raises its own type; exactly one place per surface
turns it into wire form: ``http/errors.py`` for HTTP responses, the operator
session for WebSocket ``error`` frames, and the engine for a task's ``error``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Code(StrEnum):
    # HTTP request problems
    BAD_JSON = "bad_json"
    TOO_DEEP = "too_deep"
    BAD_ENCODING = "bad_encoding"
    BAD_REQUEST = "bad_request"
    TOO_LARGE = "too_large"
    REQUEST_TIMEOUT = "request_timeout"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    FORBIDDEN_ORIGIN = "origin_not_allowed"
    HOST_NOT_ALLOWED = "host_not_allowed"
    UNKNOWN_AGENT = "unknown_agent"
    TASK_NOT_FOUND = "task_not_found"
    TASK_FINISHED = "task_finished"
    ASK_NOT_FOUND = "ask_not_found"
    NO_SENIOR = "no_senior"
    CALLBACK_NOT_ALLOWED = "callback_not_allowed"
    OPERATOR_NOT_FOUND = "operator_not_found"
    REQUEST_NOT_FOUND = "request_not_found"
    ROLES_CONFLICT = "roles_conflict"
    STORE_FAILED = "store_failed"
    SHUTTING_DOWN = "shutting_down"
    NODE_UNREACHABLE = "node_unreachable"
    INTERNAL = "internal"

    # Principals (``auth/``): a credential that is not, or no longer, accepted.
    BAD_CREDENTIALS = "bad_credentials"
    KEY_EXPIRED = "key_expired"
    KEY_REVOKED = "key_revoked"
    # A JWT past its ``exp``: the client should fetch a fresh one from its provider.
    TOKEN_EXPIRED = "token_expired"
    # The identity provider's key set could not be fetched: try again (503).
    JWKS_UNAVAILABLE = "jwks_unavailable"

    # Worker credentials
    MISSING_CREDENTIAL = "missing_credential"
    INVALID_CAPABILITY = "invalid_capability"
    CAPABILITY_EXPIRED = "capability_expired"
    CAPABILITY_REVOKED = "capability_revoked"
    UNKNOWN_HANDLE = "unknown_handle"
    WRONG_TASK = "wrong_task"
    WRONG_ATTEMPT = "wrong_attempt"
    SCOPE_DENIED = "scope_denied"
    ATTEMPT_ENDED = "attempt_ended"
    # What one attempt may accumulate (``engine/bounds.py``): 429 / 413.
    ATTEMPT_LIMIT = "attempt_limit"
    ATTEMPT_TOO_LARGE = "attempt_too_large"

    # Attempt outcomes (a task's ``error.code``)
    SPAWN_REJECTED = "spawn_rejected"
    AGENT_NOT_REGISTERED = "agent_not_registered"
    NO_FINAL_RESULT = "no_final_result"
    OPERATOR_ERROR = "operator_error"
    OPERATOR_TIMEOUT = "operator_timeout"
    OPERATOR_UNAVAILABLE = "operator_unavailable"
    OPERATOR_DELETED = "operator_deleted"
    OPERATOR_EXPIRED = "operator_expired"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    AGENT_CRASHED = "agent_crashed"
    SENIOR_UPHELD = "senior_upheld"
    WORKER_FAILED = "worker_failed"

    # WebSocket frames from the client
    BAD_MESSAGE = "bad_message"
    UNKNOWN_REQ_ID = "unknown_req_id"
    ALREADY_ANSWERED = "already_answered"
    WRONG_REPLY = "wrong_reply"
    BAD_ANSWER = "bad_answer"
    # The request went on to another holder (escalated, reassigned, handed
    # over) before this reply came: it changed nothing.
    ALREADY_MOVED = "already_moved"

    # Action links (``notify/links.py``): why a link's page offers no decision.
    LINK_NOT_FOUND = "link_not_found"  # not a link at all
    LINK_FORGED = "link_forged"  # a signature this server did not make (altered, or foreign)
    LINK_EXPIRED = "link_expired"
    LINK_USED = "link_used"  # it already decided its request


# The HTTP status each code is answered with: ``ApiError`` and ``http/errors.py``
# read it here, so a handler names the code and never the status.  Attempt
# outcomes and frame codes reach HTTP only as a refusal of the request that
# caused them (400), except where a route states otherwise with ``status=``.
STATUS: dict[Code, int] = {
    Code.BAD_JSON: 400,
    Code.TOO_DEEP: 400,
    Code.BAD_ENCODING: 400,
    Code.BAD_REQUEST: 400,
    Code.TOO_LARGE: 413,
    Code.REQUEST_TIMEOUT: 408,
    Code.NOT_FOUND: 404,
    Code.METHOD_NOT_ALLOWED: 405,
    Code.UNAUTHORIZED: 401,
    Code.FORBIDDEN: 403,
    Code.FORBIDDEN_ORIGIN: 403,
    Code.HOST_NOT_ALLOWED: 403,
    Code.UNKNOWN_AGENT: 400,
    Code.TASK_NOT_FOUND: 404,
    Code.TASK_FINISHED: 409,
    Code.ASK_NOT_FOUND: 404,
    Code.NO_SENIOR: 409,
    Code.CALLBACK_NOT_ALLOWED: 400,
    Code.OPERATOR_NOT_FOUND: 404,
    Code.REQUEST_NOT_FOUND: 404,
    Code.ROLES_CONFLICT: 409,
    Code.STORE_FAILED: 503,
    Code.SHUTTING_DOWN: 503,
    Code.NODE_UNREACHABLE: 503,
    Code.INTERNAL: 500,
    Code.BAD_CREDENTIALS: 401,
    Code.KEY_EXPIRED: 401,
    Code.KEY_REVOKED: 401,
    Code.TOKEN_EXPIRED: 401,
    Code.JWKS_UNAVAILABLE: 503,
    Code.MISSING_CREDENTIAL: 401,
    Code.INVALID_CAPABILITY: 401,
    Code.CAPABILITY_EXPIRED: 401,
    Code.UNKNOWN_HANDLE: 401,
    # The credential is genuine but may not do this (any more): 403, not 401.
    Code.CAPABILITY_REVOKED: 403,
    Code.WRONG_TASK: 403,
    Code.WRONG_ATTEMPT: 403,
    Code.SCOPE_DENIED: 403,
    Code.ATTEMPT_ENDED: 409,
    Code.ATTEMPT_LIMIT: 429,
    Code.ATTEMPT_TOO_LARGE: 413,
    Code.SPAWN_REJECTED: 400,
    Code.AGENT_NOT_REGISTERED: 400,
    Code.NO_FINAL_RESULT: 400,
    Code.OPERATOR_ERROR: 400,
    Code.OPERATOR_TIMEOUT: 400,
    Code.OPERATOR_UNAVAILABLE: 400,
    Code.OPERATOR_DELETED: 400,
    Code.OPERATOR_EXPIRED: 400,
    Code.CANCELLED: 400,
    Code.INTERRUPTED: 400,
    Code.AGENT_CRASHED: 400,
    Code.SENIOR_UPHELD: 400,
    Code.WORKER_FAILED: 400,
    Code.BAD_MESSAGE: 400,
    Code.UNKNOWN_REQ_ID: 400,
    # A reply over REST that lost to another (``POST /v1/requests/{req_id}/reply``).
    Code.ALREADY_ANSWERED: 409,
    Code.ALREADY_MOVED: 409,
    Code.WRONG_REPLY: 400,
    Code.BAD_ANSWER: 400,
    Code.LINK_NOT_FOUND: 404,
    Code.LINK_FORGED: 403,
    Code.LINK_EXPIRED: 410,
    Code.LINK_USED: 409,
}


def status_of(code: Code | str) -> int:
    """The HTTP status of ``code`` (``STATUS``); 400 for a code not declared here."""
    try:
        return STATUS[Code(code)]
    except ValueError:
        return 400


class CodedError(Exception):
    """Base: a stable code, a message a user can act on, and optional detail."""

    def __init__(self, code: Code | str, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message
        self.detail = detail

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.detail}


class ApiError(CodedError):
    """HTTP layer: an answer to the request, with the status of its code
    (``STATUS``).  ``status`` overrides it only where the same code means a
    different thing on one route (a missing ``parent_task_id`` is a bad body,
    400, not a missing resource, 404).

    ``close_connection``: the connection cannot carry another request (its body
    could not be parsed), so the answer says ``Connection: close``.
    """

    def __init__(
        self,
        code: Code | str,
        message: str,
        *,
        status: int | None = None,
        close_connection: bool = False,
        **detail: Any,
    ) -> None:
        super().__init__(code, message, **detail)
        self.status = status_of(code) if status is None else status
        self.close_connection = close_connection


class AttemptFailed(CodedError):
    """Engine layer: why an attempt (and possibly its task) failed."""


class CapabilityError(CodedError):
    """Worker credential refused; ``forbidden`` distinguishes 403 from 401."""

    def __init__(self, code: Code, message: str, *, forbidden: bool = False) -> None:
        super().__init__(code, message)
        self.forbidden = forbidden


class AttemptEnded(CodedError):
    """Engine layer: a worker wrote for an attempt that ended after its
    credential was checked (the HTTP layer answers 409)."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.ATTEMPT_ENDED, message)


class AttemptFull(CodedError):
    """Engine layer: a worker's ask or result would take its attempt past a
    bound (``max_*_per_attempt``): ``attempt_limit`` for a count (HTTP 429),
    ``attempt_too_large`` for bytes (HTTP 413).  ``detail`` names the key."""

    @property
    def too_large(self) -> bool:
        return self.code == Code.ATTEMPT_TOO_LARGE


class NodeUnreachable(CodedError):
    """Cluster mode: the node that owns the work did not answer in time (503)."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.NODE_UNREACHABLE, message)


class ProtocolError(CodedError):
    """WebSocket layer: a client frame the server could not use."""

    def __init__(self, code: Code, message: str, req_id: str | None = None) -> None:
        super().__init__(code, message)
        self.req_id = req_id


def describe_validation(messages: Any, prefix: str = "") -> list[str]:
    """Flatten marshmallow's nested messages into ``field.sub: message`` lines."""
    if isinstance(messages, dict):
        lines: list[str] = []
        for key, value in messages.items():
            if key == "_schema":
                name = prefix or "body"
            else:
                name = f"{prefix}.{key}" if prefix else str(key)
            lines.extend(describe_validation(value, name))
        return lines
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [f"{prefix}: {' '.join(messages)}"]
    return [f"{prefix}: {messages}"]
