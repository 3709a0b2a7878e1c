"""The small values both sides name: the faces, the task kinds, what an
attempt returns and what a spawn hook says.

They live below the engine so that the wire frames (and with them the client
library) can use them without importing the engine; ``engine.faces`` builds
its protocols on them.  Nothing here imports from the rest of the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Face(StrEnum):
    """The three faces of the Operator role.  Declared here once: registries,
    operator specs, ``served_by`` and the task schema all iterate over it."""

    SENIOR_BRIDGE = "senior_bridge"
    SPAWN_HOOK = "spawn_hook"
    BACKEND = "backend"


class Kind(StrEnum):
    MAIN_AI = "main_ai"
    AUTOMATE = "automate"

    @property
    def fires_spawn_hooks(self) -> bool:
        return self is not Kind.AUTOMATE


@dataclass(frozen=True)
class WorkerResult:
    value: Any
    ok: bool = True
    # A deliberate stop by the operator (``spawn_halt``): final even over a
    # worker-posted result, because the operator chose to end the attempt.
    halted: bool = False
    # Why the work failed, in the worker's words (only with ``ok=false``): it
    # becomes the attempt's ``error`` (``worker_failed``), e.g. a command's
    # exit status and the tail of its stderr.
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ok": self.ok}


@dataclass(frozen=True)
class HookVerdict:
    ok: bool
    reason: str | None = None


class ReplyVia(StrEnum):
    """Where an operator's reply came from (the ``reply`` event's ``via``, the
    ``replies_total`` metric's label)."""

    SOCKET = "socket"  # a frame on the operator's WebSocket
    REST = "rest"  # POST /v1/requests/{req_id}/reply
    BATCH = "batch"  # one item of POST /v1/requests/reply
    LINK = "link"  # the confirmation page of an action link (POST /v1/links/{token})


class OnTimeout(StrEnum):
    """What a request's deadline decides when nobody replied in time."""

    FAIL = "fail"  # the attempt fails ``operator_timeout`` (fail closed)
    DECLINE = "decline"  # an ask is answered as declined, as an operator can
    APPROVE = "approve"  # a hook_before lets the spawn go ahead (opt-in only)


# Per request kind, the actions that make sense, the first being the default
# when nothing else is configured.  Nothing approves itself by default.
ON_TIMEOUT_ALLOWED: dict[str, tuple[OnTimeout, ...]] = {
    "hook_before": (OnTimeout.FAIL, OnTimeout.APPROVE),
    "ask": (OnTimeout.DECLINE, OnTimeout.FAIL),
    "spawn": (OnTimeout.FAIL,),
}


def on_timeout_problem(kind: str, action: str) -> str | None:
    """Why ``action`` cannot end a ``kind`` request, or None when it can."""
    allowed = ON_TIMEOUT_ALLOWED.get(kind)
    if allowed is None:
        return f"{kind!r} is not a request kind with a deadline ({', '.join(ON_TIMEOUT_ALLOWED)})"
    if action not in set(OnTimeout):
        return f"{action!r} is not an on_timeout action ({', '.join(OnTimeout)})"
    if action not in allowed:
        return f"{action!r} cannot end {kind} requests (allowed: {', '.join(allowed)})"
    return None
