"""An ending is stored before it is applied: the two must describe the same task."""

from __future__ import annotations

from operator_server.engine import Kind
from operator_server.engine.faces import WorkerResult
from operator_server.engine.tasks import Ending, Task, TaskStatus
from operator_server.errors import AttemptFailed, Code


def running_task() -> Task:
    task = Task(
        agent="coder",
        directive={"do": "it"},
        system=None,
        operator=None,
        layers=("operator_delegate",),
        kind=Kind.AUTOMATE,
        max_attempts=2,
    )
    task.start_attempt()
    return task


def test_the_record_of_an_ending_is_the_task_after_it_and_leaves_the_task_as_it_was() -> None:
    for ending in (
        Ending(TaskStatus.PASSED, result=WorkerResult({"v": 1}, True)),
        Ending(TaskStatus.BLOCKED, result=WorkerResult("no", False), final=False),
        Ending(TaskStatus.CANCELLED, error=AttemptFailed(Code.CANCELLED, "stop")),
    ):
        task = running_task()
        before = task.to_record()
        stored = task.record_with(ending)
        assert task.to_record() == before and not task.finished.is_set()
        task.end(ending)
        assert task.to_record() == stored
        assert task.finished.is_set() is ending.final
        assert task.current is not None and task.current.status is ending.status


def test_an_ending_leaves_an_attempt_that_already_ended_as_it_was() -> None:
    task = running_task()
    task.end(Ending(TaskStatus.BLOCKED, result=WorkerResult("no", False), final=False))
    task.end(Ending(TaskStatus.CANCELLED, error=AttemptFailed(Code.CANCELLED, "stop")))
    assert task.status is TaskStatus.CANCELLED
    assert task.current is not None and task.current.status is TaskStatus.BLOCKED


def test_a_task_stored_with_the_old_composite_kind_reads_back_as_main_ai() -> None:
    record = running_task().to_record()
    record["kind"] = "composite"
    record["operator"] = {"role": "main", "kind": "composite"}
    task = Task.from_record(record)
    assert task.kind is Kind.MAIN_AI
    assert task.operator is not None and task.operator.kind is Kind.MAIN_AI


def test_an_interruption_ends_the_attempt_not_the_task_and_counts_apart() -> None:
    task = running_task()
    ending = task.interrupt("the server stopped during this attempt")
    assert not ending.final and ending.error is not None and ending.error.code == Code.INTERRUPTED
    task.end(ending)
    assert task.interruptions == 1 and task.attempts_used == 0
    assert task.status is TaskStatus.RUNNING and task.current is not None
    assert task.current.status is TaskStatus.FAILED
    assert task.requeue() is TaskStatus.RUNNING and task.status is TaskStatus.PENDING
