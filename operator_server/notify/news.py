"""What a notification says about one request: built once, when it is queued.

In: what is asked (the kind; an ask's question; the task's directive), for
which task and agent, which attempt, who holds it (session and roles), by
when (the deadline), and for a reminder or a move what happened.  A rule
with ``include_text = false`` leaves the question and the directive out.

Out, always: what the events keep out too: answers, results, credentials
(capability tokens, worker handles), and the spawn directive (it names the
worker handle).  ``PendingView`` is built from an allow-list of a request's
fields, never from its frame as a whole, so a field added to a frame later
does not leak into mail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from operator_server.wire import json

# A question or directive longer than this is cut (with a mark): a message
# is a pointer to the request, not its archive.
TEXT_MAX = 2000

NEW = "new"
DUE_SOON = "due_soon"
MOVED = "moved"


@dataclass(frozen=True)
class PendingView:
    """A pending request as the node that issued it sees it now."""

    req_id: str
    kind: str
    task_id: str
    sid: str
    roles: tuple[str, ...]
    connected: bool
    deadline_at: float | None
    question: Any = None
    attempt: int | None = None
    agent: str | None = None


# Finds a request this node issued and still holds (or holds waiting); None
# when it is settled or elsewhere.  Given by ``app.py`` from the operator
# directory, so this package needs neither ``operators/`` nor ``http/``.
FindPending = Callable[[str], PendingView | None]


@dataclass(frozen=True)
class TaskFacts:
    agent: str
    directive: Any


def as_text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= TEXT_MAX else text[: TEXT_MAX - 1] + "…"


def news(
    what: str,
    view: PendingView,
    task: TaskFacts | None,
    *,
    include_text: bool,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One notice's content (JSON), as stored and as every channel renders it."""
    agent = view.agent or (task.agent if task is not None else None)
    return {
        "what": what,
        "req_id": view.req_id,
        "kind": view.kind,
        "task_id": view.task_id,
        "agent": agent,
        "attempt": view.attempt,
        "holder": view.sid,
        "roles": list(view.roles),
        "deadline_at": view.deadline_at,
        "question": as_text(view.question) if include_text and view.kind == "ask" else None,
        "directive": as_text(task.directive) if include_text and task is not None else None,
        **(extra or {}),
    }
