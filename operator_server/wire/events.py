"""A task event's wire form: the JSON object an SSE ``data:`` line carries.

Every event holds ``task_id``, ``type``, ``at``, ``agent`` and ``status`` (the
task's status once the event applies), then the fields of its type, in the
order ``FIELDS`` gives; a field whose value is None is left out (``error_code``
only comes with a failure).

What an event never holds: an output's value (a worker may post anything,
credentials included), a question, an answer, a capability or worker handle.
Only kinds, sources, ids, statuses and error codes.
"""

from __future__ import annotations


class EventType:
    CREATED = "created"
    STATUS = "status"
    ATTEMPT_STARTED = "attempt_started"
    ATTEMPT_ENDED = "attempt_ended"
    OUTPUT = "output"
    REQUEST = "request"
    REPLY = "reply"
    # A request still unanswered at ``remind_at_fraction`` of its deadline.
    REQUEST_DUE_SOON = "request_due_soon"
    # A request moved on to another holder (``reason``: "escalated").
    REQUEST_MOVED = "request_moved"


# Each type's own fields after the common five.  Events are built and stored
# as these values, by position (``store.TaskEvent``), and become objects only
# when streamed: so a stored event's layout is this table — append, never
# reorder.
_OPERATOR = ("attempt", "req_id", "face", "sid")
FIELDS: dict[str, tuple[str, ...]] = {
    EventType.CREATED: (),
    EventType.STATUS: ("error_code",),
    # ``node``: the node running the attempt (its `node_id`).
    EventType.ATTEMPT_STARTED: ("attempt", "node"),
    EventType.ATTEMPT_ENDED: ("attempt", "outcome", "error_code"),
    EventType.OUTPUT: ("attempt", "kind", "source", "ok"),
    EventType.REQUEST: _OPERATOR,
    # ``via``: where the reply came from (socket, rest, batch).
    EventType.REPLY: (*_OPERATOR, "via"),
    EventType.REQUEST_DUE_SOON: (*_OPERATOR, "due_at", "on_timeout"),
    # ``sid``: the session it left; ``from``/``to``: the names of the steps.
    # ``note``: what a reassigning principal wrote for the next holder.
    EventType.REQUEST_MOVED: (*_OPERATOR, "from", "to", "step", "reason", "after_s", "note"),
}
