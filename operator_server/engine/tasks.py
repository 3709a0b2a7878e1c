"""Tasks and their attempts (each attempt's outputs: ``engine.outputs``).

A task owns its own state changes (``start_attempt``, ``interrupt``,
``requeue``, ``cancelling``, ``end``); the engine does the I/O around them.
``to_record``/``from_record`` are the stored form; the task JSON the API
answers with is declared in ``engine.task_json``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from operator_server import entropy
from operator_server.engine.asks import AskStatus, WorkerAsk
from operator_server.engine.bounds import AttemptBudget
from operator_server.engine.faces import Face, Kind, WorkerResult
from operator_server.engine.outputs import OutputEvent, OutputTail
from operator_server.errors import AttemptFailed, Code


class TaskStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PASSED = "passed"
    BLOCKED = "blocked"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # The operator stopped the attempt on purpose (``spawn_halt``): neither
    # passed (nothing was done) nor failed (nothing went wrong).
    HALTED = "halted"

    @property
    def terminal(self) -> bool:
        return self not in LIVE_STATUSES

    @property
    def settles(self) -> bool:
        """An attempt ending so ends its task: nothing a retry would change
        (it passed, or its operator chose to stop it)."""
        return self in SETTLING_STATUSES


LIVE_STATUSES = frozenset({TaskStatus.PENDING, TaskStatus.RUNNING})
TERMINAL_STATUSES = frozenset(set(TaskStatus) - LIVE_STATUSES)
SETTLING_STATUSES = frozenset({TaskStatus.PASSED, TaskStatus.HALTED})


@dataclass(frozen=True)
class OperatorSpec:
    """Who serves a task: a sid or role for all three faces, or one per face.

    Each name is looked up at dispatch time, first as a sid, then as a role.
    """

    sid: str | None = None
    role: str | None = None
    senior_bridge: str | None = None
    spawn_hook: str | None = None
    backend: str | None = None
    kind: Kind | None = None
    # Request deadlines (``engine.deadlines``): for every request of the task,
    # and per kind (``{"ask": {"deadline_s": .., "on_timeout": ..}, ...}``).
    deadline_s: float | None = None
    on_timeout: str | None = None
    deadlines: dict[str, dict[str, Any]] | None = None
    # Escalation chain (``engine.deadlines``): ``[{"after_s": .., "role": ..}, ...]``.
    escalate: list[dict[str, Any]] | None = None

    def face_names(self) -> dict[Face, str | None]:
        everyone = self.sid or self.role
        return {face: getattr(self, face) or everyone for face in Face}

    def names_anyone(self) -> bool:
        return any(self.face_names().values())

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if v is not None and k != "kind"}
        if self.kind is not None:
            out["kind"] = str(self.kind)
        return out


@dataclass(frozen=True)
class Ending:
    """How an attempt — and, when ``final``, its task — ends.

    Decided first, stored, and only then applied (``Task.end``), so nobody can
    see an ending a restart would not show.
    """

    status: TaskStatus
    result: WorkerResult | None = None
    error: AttemptFailed | None = None
    final: bool = True
    at: float = field(default_factory=time.time)


@dataclass
class AttemptRecord:
    number: int
    started_at: float = field(default_factory=time.time)
    status: TaskStatus = TaskStatus.RUNNING
    ended_at: float | None = None
    result: WorkerResult | None = None
    error: AttemptFailed | None = None
    tail: OutputTail = field(default_factory=OutputTail)
    served_by: dict[str, str] = field(default_factory=dict)
    # What its worker asked the senior, in issue order.
    asks: list[WorkerAsk] = field(default_factory=list)
    # What its worker has sent so far, against the bounds (not stored).
    budget: AttemptBudget = field(default_factory=AttemptBudget, repr=False)

    def finish(
        self,
        status: TaskStatus,
        *,
        result: WorkerResult | None = None,
        error: AttemptFailed | None = None,
        at: float | None = None,
    ) -> None:
        self.status, self.result, self.error = status, result, error
        self.ended_at = time.time() if at is None else at
        # Only ``Task.end`` calls this.  Normally the engine has withdrawn
        # them already; after a restart an interrupted attempt's open asks end here.
        for ask in self.asks:
            ask.settle(
                AskStatus.WITHDRAWN,
                error=AttemptFailed(Code.ATTEMPT_ENDED, "the attempt ended before an answer"),
            )

    def ask(self, ask_id: str) -> WorkerAsk | None:
        return next((a for a in self.asks if a.ask_id == ask_id), None)

    def to_record(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "status": str(self.status),
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "result": result_record(self.result),
            "error": error_record(self.error),
            "served_by": self.served_by,
            # Asks and outputs are stored on their own (``Store.put_ask_soon``,
            # ``Store.put_output``): the task's row never carries them, reads
            # put them back here (``tail``).
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> AttemptRecord:
        tail = OutputTail()
        tail.events = [OutputEvent.from_record(e) for e in rec.get("tail", [])]
        return cls(
            number=int(rec["number"]),
            started_at=float(rec["started_at"]),
            status=TaskStatus(rec["status"]),
            ended_at=rec["ended_at"],
            result=_result_from(rec["result"]),
            error=_error_from(rec["error"]),
            tail=tail,
            served_by=dict(rec["served_by"]),
            # Rows written before worker asks existed have none; rows written
            # before they were stored apart carry them inline.
            asks=[WorkerAsk.from_record(a) for a in rec.get("asks", [])],
        )


def result_record(result: WorkerResult | None) -> dict[str, Any] | None:
    return None if result is None else result.as_dict()


def error_record(error: AttemptFailed | None) -> dict[str, Any] | None:
    return None if error is None else error.as_dict()


def _result_from(rec: dict[str, Any] | None) -> WorkerResult | None:
    return None if rec is None else WorkerResult(rec["value"], bool(rec["ok"]))


def _kind_from(value: str) -> Kind:
    # ``composite`` was a third kind that behaved exactly as ``main_ai``; it is
    # refused on the way in now, but rows written before still read back.
    return Kind.MAIN_AI if value == "composite" else Kind(value)


def _error_from(rec: dict[str, Any] | None) -> AttemptFailed | None:
    if rec is None:
        return None
    detail = {k: v for k, v in rec.items() if k not in ("code", "message")}
    return AttemptFailed(rec["code"], rec["message"], **detail)


@dataclass
class Callback:
    """Where a finished task is POSTed (webhook), and how delivery is going.

    ``delivery_id`` is the same on every try of the one delivery, so a receiver
    can drop the duplicates at-least-once delivery may bring.
    """

    url: str
    attempts: int = 0
    delivered_at: float | None = None
    last_error: str | None = None
    delivery_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def to_record(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "attempts": self.attempts,
            "delivered_at": self.delivered_at,
            "last_error": self.last_error,
            "delivery_id": self.delivery_id,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any] | None) -> Callback | None:
        if rec is None:
            return None
        delivered = rec["delivered_at"]
        return cls(
            url=str(rec["url"]),
            attempts=int(rec["attempts"]),
            delivered_at=None if delivered is None else float(delivered),
            last_error=rec["last_error"],
            delivery_id=str(rec["delivery_id"]),
        )


def new_task_id() -> str:
    """``t-`` and 32 hex digits, as always: 48 bits of milliseconds since the
    epoch, then 80 random bits.  Ids made later sort later, so the store's
    indexes on task ids (the tasks' own, and the events' per-task index) grow
    at their right edge: a commit dirties one index page, not one per task
    somewhere in the tree (each dirty page is a whole page in the WAL)."""
    millis = int(time.time() * 1000) & 0xFFFF_FFFF_FFFF
    return f"t-{millis:012x}{entropy.token_hex(10)}"


@dataclass
class Task:
    agent: str
    directive: Any
    system: str | None
    operator: OperatorSpec | None
    layers: tuple[str, ...]
    kind: Kind
    max_attempts: int
    parent_task_id: str | None = None
    callback: Callback | None = None
    id: str = field(default_factory=new_task_id)
    status: TaskStatus = TaskStatus.PENDING
    attempt: int = 0
    result: WorkerResult | None = None
    error: AttemptFailed | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    attempts: list[AttemptRecord] = field(default_factory=list)
    cancel_reason: str | None = None
    # Restarts that cut an attempt short; they do not use up max_attempts.
    interruptions: int = 0
    finished: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    # Set once the event that ends the task is built (Engine._ending_events):
    # nothing is recorded on its stream after it.  Not stored: a finished task
    # read back has its history closed by its status.
    history_closed: bool = field(default=False, repr=False)
    # Due times of the current attempt's open chain requests, by kind
    # (``{"due_at": unix seconds, "step": n}``): stored, so that an attempt
    # re-dispatched after an interruption resumes them (``engine.deadlines``).
    dues: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def current(self) -> AttemptRecord | None:
        return self.attempts[-1] if self.attempts else None

    def touch(self, at: float | None = None) -> None:
        self.updated_at = time.time() if at is None else at

    def start_attempt(self) -> AttemptRecord:
        previous = self.current
        if previous is None or previous.error is None or previous.error.code != Code.INTERRUPTED:
            # Only an interrupted attempt's requests are issued again as they were.
            self.dues = {}
        self.attempt += 1
        record = AttemptRecord(self.attempt)
        self.attempts.append(record)
        self.status = TaskStatus.RUNNING
        self.touch()
        return record

    def interrupt(self, message: str) -> Ending:
        """The current attempt was cut short by something other than its
        work (a restart, the store failing): how it ends, to be applied like
        any ending.  An interruption does not use up ``max_attempts``; the
        engine fails the task once there are too many of them."""
        self.interruptions += 1
        return Ending(
            TaskStatus.FAILED,
            error=AttemptFailed(Code.INTERRUPTED, message),
            final=False,
        )

    def requeue(self) -> TaskStatus:
        """Back to ``pending``, to be dispatched again (recovered after a
        restart); the status it had."""
        before, self.status = self.status, TaskStatus.PENDING
        return before

    def cancelling(self, reason: str) -> None:
        """Its run is being stopped: the reason its end will give."""
        self.cancel_reason = reason

    def let_go(self) -> None:
        """Another node runs it now: not ended here, but its waiters here
        wake and read it again, wherever it runs."""
        self.finished.set()

    def end(self, ending: Ending) -> None:
        """Apply ``ending``: the current attempt ends (if it has not), and with
        ``ending.final`` the task too.  Only the engine's ``_apply_end`` calls
        this: the one place every ending is applied."""
        current = self.current
        if current is not None and not current.status.terminal:
            current.finish(ending.status, result=ending.result, error=ending.error, at=ending.at)
        self.touch(ending.at)
        if ending.final:
            self.status, self.result, self.error = ending.status, ending.result, ending.error
            self.finished.set()

    def record_with(self, ending: Ending) -> dict[str, Any]:
        """The stored record of this task once ``ending`` applies, leaving it as it is.

        The ending is applied to the record itself (one snapshot of the task,
        no decode and re-encode on the hot path), with exactly the fields
        ``end`` sets; a test holds the two to the same result.
        """
        record = self.to_record()
        result, error = result_record(ending.result), error_record(ending.error)
        attempts = record["attempts"]
        if attempts and not self.attempts[-1].status.terminal:
            attempts[-1].update(
                status=str(ending.status), result=result, error=error, ended_at=ending.at
            )
        if ending.final:
            record.update(status=str(ending.status), result=result, error=error)
        record["updated_at"] = ending.at
        return record

    def whole_record_with(self, ending: Ending) -> dict[str, Any] | None:
        """``record_with(ending)`` with each attempt's outputs in it (stored
        apart, never in the row): the task as a read of it would rebuild it
        once ``ending`` is stored.  None when an attempt has asks, whose stored
        rows may still settle as the attempt ends: a read tells those."""
        if any(attempt.asks for attempt in self.attempts):
            return None
        record = self.record_with(ending)
        for stored, attempt in zip(record["attempts"], self.attempts, strict=True):
            stored["tail"] = [event.to_record() for event in attempt.tail.events]
        return record

    @property
    def attempts_used(self) -> int:
        return self.attempt - self.interruptions

    def to_record(self) -> dict[str, Any]:
        """Everything needed to restore the task after a restart."""
        return {
            "id": self.id,
            "status": str(self.status),
            "agent": self.agent,
            "directive": self.directive,
            "system": self.system,
            "operator": self.operator.as_dict() if self.operator else None,
            "layers": list(self.layers),
            "kind": str(self.kind),
            "max_attempts": self.max_attempts,
            "parent_task_id": self.parent_task_id,
            "attempt": self.attempt,
            "result": result_record(self.result),
            "error": error_record(self.error),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "attempts": [a.to_record() for a in self.attempts],
            "cancel_reason": self.cancel_reason,
            "interruptions": self.interruptions,
            "callback": self.callback.to_record() if self.callback else None,
            "dues": self.dues,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Task:
        operator = rec["operator"]
        if operator is not None:
            operator = OperatorSpec(
                **{k: v for k, v in operator.items() if k != "kind"},
                kind=_kind_from(operator["kind"]) if "kind" in operator else None,
            )
        task = cls(
            agent=rec["agent"],
            directive=rec["directive"],
            system=rec["system"],
            operator=operator,
            layers=tuple(rec["layers"]),
            kind=_kind_from(rec["kind"]),
            max_attempts=int(rec["max_attempts"]),
            parent_task_id=rec["parent_task_id"],
            # Absent from records written before webhooks existed.
            callback=Callback.from_record(rec.get("callback")),
            id=rec["id"],
            status=TaskStatus(rec["status"]),
            attempt=int(rec["attempt"]),
            result=_result_from(rec["result"]),
            error=_error_from(rec["error"]),
            created_at=float(rec["created_at"]),
            updated_at=float(rec["updated_at"]),
            attempts=[AttemptRecord.from_record(a) for a in rec["attempts"]],
            cancel_reason=rec["cancel_reason"],
            interruptions=int(rec["interruptions"]),
            # Absent from records written before deadlines were stored.
            dues={str(k): dict(v) for k, v in (rec.get("dues") or {}).items()},
        )
        if task.status.terminal:
            task.finished.set()
        return task
