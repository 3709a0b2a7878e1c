"""The task JSON every task route (and every webhook) answers with: each
shape declared once here, its schema (for the OpenAPI document and the tests)
beside the function that builds it.

The view functions are plain dict literals, not a schema's ``dump``: a list
of 500 tasks is built on every page read.  ``tests/engine/test_task_json.py``
holds each view to its schema (the same keys, and values that validate), so
the two cannot drift apart.  The stored form (float times, no outputs or
asks) is ``Task.to_record``.
"""

from __future__ import annotations

from typing import Any

from marshmallow import (
    INCLUDE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from operator_server.engine.asks import AskStatus
from operator_server.engine.deadlines import KINDS as DEADLINE_KINDS
from operator_server.engine.deadlines import spec_problems
from operator_server.engine.faces import Face, Kind
from operator_server.engine.outputs import OutputEvent
from operator_server.engine.tasks import (
    AttemptRecord,
    Callback,
    OperatorSpec,
    Task,
    TaskStatus,
    error_record,
    result_record,
)
from operator_server.wire.fields import StrictNumber
from operator_server.wire.times import iso
from operator_server.wire.values import OnTimeout

NAME = validate.Length(min=1, max=200)


# One optional name per face, derived from the one declaration of the faces.
_FaceNamesSchema = Schema.from_dict(
    {str(face): fields.String(validate=NAME) for face in Face}, name="FaceNames"
)


def _deadline_s() -> StrictNumber:
    return StrictNumber(
        validate=validate.Range(min=0, min_inclusive=False),
        metadata={"description": "seconds a request waits for its reply (more than 0)"},
    )


def _on_timeout() -> fields.String:
    return fields.String(
        validate=validate.OneOf(
            [str(a) for a in OnTimeout], error="{input!r} is not an action: one of {choices}"
        ),
        metadata={
            "description": "what an unanswered request becomes at its deadline: `fail` (the "
            "attempt fails operator_timeout), `decline` (asks only: answered as declined), "
            "`approve` (hook_before only: the spawn goes ahead)"
        },
    )


class KindDeadlineSchema(Schema):
    """One request kind's deadline and on-timeout action."""

    deadline_s = _deadline_s()
    on_timeout = _on_timeout()


# One optional entry per kind that has a deadline; any other key is refused.
_KindDeadlinesSchema = Schema.from_dict(
    {kind: fields.Nested(KindDeadlineSchema) for kind in DEADLINE_KINDS}, name="KindDeadlines"
)


class EscalationStepSchema(Schema):
    """One step of an escalation chain: after ``after_s`` at the step before,
    an unanswered request moves to ``role``."""

    after_s = StrictNumber(
        required=True,
        validate=validate.Range(min=0, min_inclusive=False),
        metadata={"description": "seconds at the step before, counted from when it got there"},
    )
    role = fields.String(required=True, validate=NAME)


# A chain longer than this is a mistake, not a roster.
MAX_ESCALATION_STEPS = 10


class OperatorSpecSchema(_FaceNamesSchema):  # type: ignore[valid-type,misc]
    sid = fields.String(validate=NAME)
    role = fields.String(validate=NAME)
    kind = fields.Enum(Kind, by_value=True)
    deadline_s = _deadline_s()
    on_timeout = _on_timeout()
    deadlines = fields.Nested(
        _KindDeadlinesSchema,
        metadata={"description": "per request kind, overriding deadline_s and on_timeout"},
    )
    escalate = fields.List(
        fields.Nested(EscalationStepSchema),
        validate=validate.Length(min=1, max=MAX_ESCALATION_STEPS),
        metadata={
            "description": "escalation chain: an unanswered request moves to each role in turn; "
            "after the last step its deadline and on_timeout count from when it got there"
        },
    )

    @validates_schema
    def _one_target(self, data: dict[str, Any], **_: Any) -> None:
        if "sid" in data and "role" in data:
            raise ValidationError("give either sid or role, not both", "role")
        if not data:
            raise ValidationError("name a sid, a role, or a face (senior_bridge, ...)")

    @validates_schema
    def _deadlines_fit(self, data: dict[str, Any], **_: Any) -> None:
        problems = spec_problems(data.get("on_timeout"), data.get("deadlines"))
        if problems:
            raise ValidationError(problems)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> OperatorSpec:
        return OperatorSpec(**data)


class TaskResultSchema(Schema):
    value = fields.Raw(required=True, allow_none=True)
    ok = fields.Boolean(required=True)


class OutcomeErrorSchema(Schema):
    """Why an attempt failed: a stable ``code`` and a human ``message``."""

    class Meta:
        unknown = INCLUDE

    code = fields.String(required=True)
    message = fields.String(required=True)


class OutputSchema(Schema):
    kind = fields.String(required=True, validate=validate.OneOf(["final", "output"]))
    source = fields.String(required=True)
    value = fields.Raw(required=True, allow_none=True)
    ok = fields.Boolean(required=True)
    at = fields.DateTime(required=True)
    error = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "why a worker's ok=false result failed, when it said"},
    )


class WorkerAskSchema(Schema):
    """A worker's ask during the attempt (``POST /v1/worker/ask``)."""

    ask_id = fields.String(required=True)
    req_id = fields.String(required=True, allow_none=True)
    parent_req_id = fields.String(required=True, allow_none=True)
    question = fields.Raw(required=True, allow_none=True)
    answer_schema = fields.Dict(required=True, allow_none=True)
    status = fields.Enum(AskStatus, by_value=True, required=True)
    answer = fields.Raw(required=True, allow_none=True)
    declined = fields.String(required=True, allow_none=True)
    error = fields.Nested(OutcomeErrorSchema, required=True, allow_none=True)
    answered_by = fields.String(required=True, allow_none=True)
    asked_at = fields.DateTime(required=True)
    answered_at = fields.DateTime(required=True, allow_none=True)


class AttemptSchema(Schema):
    attempt = fields.Integer(required=True)
    status = fields.Enum(TaskStatus, by_value=True, required=True)
    started_at = fields.DateTime(required=True)
    ended_at = fields.DateTime(required=True, allow_none=True)
    result = fields.Nested(TaskResultSchema, required=True, allow_none=True)
    error = fields.Nested(OutcomeErrorSchema, required=True, allow_none=True)
    served_by = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    outputs = fields.List(fields.Nested(OutputSchema), required=True)
    asks = fields.List(fields.Nested(WorkerAskSchema), required=True)


class CallbackStateSchema(Schema):
    """Where the task's end is delivered (``callback_url``), and how that went."""

    url = fields.String(required=True)
    attempts = fields.Integer(required=True, metadata={"description": "tries made so far"})
    delivered_at = fields.DateTime(required=True, allow_none=True)
    last_error = fields.String(required=True, allow_none=True)
    delivery_id = fields.String(
        required=True, metadata={"description": "X-Operator-Server-Delivery of every try"}
    )


class TaskSchema(Schema):
    """The task JSON every task route answers with (``task_view``)."""

    id = fields.String(required=True)
    status = fields.Enum(TaskStatus, by_value=True, required=True)
    agent = fields.String(required=True)
    kind = fields.Enum(Kind, by_value=True, required=True)
    attempt = fields.Integer(required=True)
    max_attempts = fields.Integer(required=True)
    interruptions = fields.Integer(required=True)
    result = fields.Nested(TaskResultSchema, required=True, allow_none=True)
    error = fields.Nested(OutcomeErrorSchema, required=True, allow_none=True)
    directive = fields.Raw(required=True, allow_none=True)
    system = fields.String(required=True, allow_none=True)
    operator = fields.Nested(OperatorSpecSchema, required=True, allow_none=True)
    layers = fields.List(fields.String(), required=True)
    parent_task_id = fields.String(required=True, allow_none=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)
    attempts = fields.List(fields.Nested(AttemptSchema), required=True)
    callback = fields.Nested(CallbackStateSchema, required=True, allow_none=True)


def output_view(output: OutputEvent) -> dict[str, Any]:
    """``OutputSchema``."""
    return output.as_dict()


def attempt_view(record: AttemptRecord) -> dict[str, Any]:
    """``AttemptSchema``."""
    return {
        "attempt": record.number,
        "status": str(record.status),
        "started_at": iso(record.started_at),
        "ended_at": iso(record.ended_at),
        "result": result_record(record.result),
        "error": error_record(record.error),
        "served_by": record.served_by,
        "outputs": [e.as_dict() for e in record.tail.events],
        "asks": [a.as_dict() for a in record.asks],
    }


def callback_view(callback: Callback) -> dict[str, Any]:
    """``CallbackStateSchema``."""
    return {
        "url": callback.url,
        "attempts": callback.attempts,
        "delivered_at": iso(callback.delivered_at),
        "last_error": callback.last_error,
        "delivery_id": callback.delivery_id,
    }


def task_view(task: Task) -> dict[str, Any]:
    """``TaskSchema``: the task JSON."""
    return {
        "id": task.id,
        "status": str(task.status),
        "agent": task.agent,
        "kind": str(task.kind),
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
        "interruptions": task.interruptions,
        "result": result_record(task.result),
        "error": error_record(task.error),
        "directive": task.directive,
        "system": task.system,
        "operator": task.operator.as_dict() if task.operator else None,
        "layers": list(task.layers),
        "parent_task_id": task.parent_task_id,
        "created_at": iso(task.created_at),
        "updated_at": iso(task.updated_at),
        "attempts": [attempt_view(a) for a in task.attempts],
        "callback": callback_view(task.callback) if task.callback else None,
    }
