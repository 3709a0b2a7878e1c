"""The task JSON is declared once (``engine/task_json.py``): each view and its
schema list the same keys, and what a view builds validates against it."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema

from operator_server.engine.asks import AskStatus, WorkerAsk
from operator_server.engine.faces import Kind, WorkerResult
from operator_server.engine.task_json import (
    AttemptSchema,
    CallbackStateSchema,
    OutputSchema,
    TaskSchema,
    WorkerAskSchema,
    attempt_view,
    callback_view,
    output_view,
    task_view,
)
from operator_server.engine.tasks import Callback, Ending, OperatorSpec, Task, TaskStatus
from operator_server.errors import AttemptFailed, Code


def full_task() -> Task:
    """A task with every part of its JSON filled in."""
    task = Task(
        agent="coder",
        directive={"do": "it"},
        system="be brief",
        operator=OperatorSpec(role="main", kind=Kind.MAIN_AI),
        layers=("senior_escalation", "operator_delegate"),
        kind=Kind.MAIN_AI,
        max_attempts=2,
        parent_task_id="t-parent",
        callback=Callback("https://hooks.example.com/done"),
    )
    record = task.start_attempt()
    record.served_by = {"backend": "op-1"}
    record.tail.append_final(WorkerResult({"v": 1}, True), "worker")
    ask = WorkerAsk(question="which?", schema={"type": "string"}, parent_req_id="r-1", attempt=1)
    ask.settle(AskStatus.ANSWERED, answer="this", by="op-1")
    record.asks.append(ask)
    task.end(
        Ending(TaskStatus.BLOCKED, error=AttemptFailed(Code.NO_FINAL_RESULT, "x"), final=False)
    )
    task.start_attempt()
    task.end(Ending(TaskStatus.PASSED, result=WorkerResult("done", True)))
    return task


def agrees(view: dict[str, Any], schema: type[Schema]) -> None:
    assert set(view) == set(schema().fields), schema.__name__
    assert schema().validate(view) == {}, schema.__name__


def test_each_view_has_exactly_its_schemas_keys_and_validates() -> None:
    task = full_task()
    attempt = task.attempts[0]
    assert task.callback is not None
    agrees(task_view(task), TaskSchema)
    agrees(attempt_view(attempt), AttemptSchema)
    agrees(output_view(attempt.tail.events[0]), OutputSchema)
    agrees(attempt.asks[0].as_dict(), WorkerAskSchema)
    agrees(callback_view(task.callback), CallbackStateSchema)


def test_a_task_with_nothing_optional_validates_too() -> None:
    task = Task(
        agent="echo",
        directive="x",
        system=None,
        operator=None,
        layers=(),
        kind=Kind.AUTOMATE,
        max_attempts=1,
    )
    agrees(task_view(task), TaskSchema)
