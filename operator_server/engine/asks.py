"""Worker asks: a sub-agent stops and asks the task's senior for judgement.

Plain data owned by the engine, kept on the attempt (``AttemptRecord.asks``)
so the task JSON lists them, and stored each on its own beside the task
(``Store.put_ask_soon``) so a restart keeps them and one ask costs one small
write, not a rewrite of the task with every ask before it.  The live parts — the
event a waiting worker sleeps on and the background run that holds the
senior's ``ask`` — exist only in memory: an answer waits here for whoever
picks it up, however often, so a worker whose HTTP call dropped loses nothing
and nothing is asked twice.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from operator_server.errors import AttemptFailed
from operator_server.wire.times import iso


class AskStatus(StrEnum):
    PENDING = "pending"
    ANSWERED = "answered"  # ``answer`` holds the senior's value
    DECLINED = "declined"  # the senior refused (an ``answer`` with ``error``)
    FAILED = "failed"  # nobody answered: operator timeout, unavailable, deleted
    WITHDRAWN = "withdrawn"  # the attempt ended first

    @property
    def settled(self) -> bool:
        return self is not AskStatus.PENDING


def new_ask_id() -> str:
    return f"ask-{secrets.token_hex(12)}"


@dataclass
class WorkerAsk:
    question: Any
    schema: dict[str, Any] | None
    parent_req_id: str | None
    # The worker's own name for this ask: the same key again is the same ask.
    key: str | None = None
    ask_id: str = field(default_factory=new_ask_id)
    req_id: str | None = None
    status: AskStatus = AskStatus.PENDING
    answer: Any = None
    declined: str | None = None
    error: AttemptFailed | None = None
    answered_by: str | None = None
    asked_at: float = field(default_factory=time.time)
    answered_at: float | None = None
    # Live only: set once the ask is settled; the run holding the senior's ask;
    # the number of the attempt it belongs to (it is stored under it).
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)
    runner: asyncio.Task[None] | None = field(default=None, repr=False, compare=False)
    attempt: int = field(default=0, repr=False, compare=False)

    def settle(
        self,
        status: AskStatus,
        *,
        answer: Any = None,
        declined: str | None = None,
        error: AttemptFailed | None = None,
        by: str | None = None,
    ) -> bool:
        """Record the outcome once; False (and nothing changes) when already settled."""
        if self.status.settled:
            return False
        self.status, self.answer, self.declined, self.error = status, answer, declined, error
        self.answered_by = by
        self.answered_at = time.time()
        self.done.set()
        return True

    def as_dict(self) -> dict[str, Any]:
        return {
            "ask_id": self.ask_id,
            "req_id": self.req_id,
            "parent_req_id": self.parent_req_id,
            "question": self.question,
            "answer_schema": self.schema,
            "status": str(self.status),
            "answer": self.answer,
            "declined": self.declined,
            "error": None if self.error is None else self.error.as_dict(),
            "answered_by": self.answered_by,
            "asked_at": iso(self.asked_at),
            "answered_at": iso(self.answered_at),
        }

    def to_record(self) -> dict[str, Any]:
        return {
            "ask_id": self.ask_id,
            "key": self.key,
            "req_id": self.req_id,
            "parent_req_id": self.parent_req_id,
            "question": self.question,
            "schema": self.schema,
            "status": str(self.status),
            "answer": self.answer,
            "declined": self.declined,
            "error": None if self.error is None else self.error.as_dict(),
            "answered_by": self.answered_by,
            "asked_at": self.asked_at,
            "answered_at": self.answered_at,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> WorkerAsk:
        error = rec["error"]
        ask = cls(
            question=rec["question"],
            schema=rec["schema"],
            parent_req_id=rec["parent_req_id"],
            key=rec["key"],
            ask_id=rec["ask_id"],
            req_id=rec["req_id"],
            status=AskStatus(rec["status"]),
            answer=rec["answer"],
            declined=rec["declined"],
            error=None
            if error is None
            else AttemptFailed(
                error["code"],
                error["message"],
                **{k: v for k, v in error.items() if k not in ("code", "message")},
            ),
            answered_by=rec["answered_by"],
            asked_at=float(rec["asked_at"]),
            answered_at=rec["answered_at"],
        )
        if ask.status.settled:
            ask.done.set()
        return ask
