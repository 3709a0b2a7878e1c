"""What one attempt's worker may pile up: asks, questions, results.

Everything a worker sends is kept with its attempt (the task JSON lists it, the
store holds it, every ask goes to the senior), so a worker handle with no bound
could grow one task without end: memory, every read of the task, the write of
its end.  Each attempt has a budget; a worker call that would take it past a
bound is refused before anything is kept (``AttemptFull``: a count is HTTP 429
``attempt_limit``, bytes are 413 ``attempt_too_large``), and the attempt goes
on.  Sizes are what is kept: the JSON of a question (with its answer form) or
of a result value.

The budget lives in memory only: an attempt a restart or a takeover cuts short
is never continued (the next attempt starts with a fresh budget).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from operator_server.config import Settings
from operator_server.errors import AttemptFull, Code
from operator_server.wire import json


@dataclass
class AttemptBudget:
    asks: int = 0
    ask_bytes: int = 0
    results: int = 0
    result_bytes: int = 0

    def take_ask(self, settings: Settings, question: Any, schema: Any) -> None:
        """Count one new ask, or raise ``AttemptFull`` and count nothing."""
        _count(self.asks, settings.max_asks_per_attempt, "asks", "max_asks_per_attempt")
        size = len(json.dumps_bytes(question)) + (
            0 if schema is None else len(json.dumps_bytes(schema))
        )
        _size(self.ask_bytes, size, settings.max_ask_bytes_per_attempt, "max_ask_bytes_per_attempt")
        self.asks += 1
        self.ask_bytes += size

    def take_result(self, settings: Settings, value: Any) -> None:
        """Count one posted result, or raise ``AttemptFull`` and count nothing."""
        _count(self.results, settings.max_results_per_attempt, "results", "max_results_per_attempt")
        size = len(json.dumps_bytes(value))
        _size(
            self.result_bytes,
            size,
            settings.max_result_bytes_per_attempt,
            "max_result_bytes_per_attempt",
        )
        self.results += 1
        self.result_bytes += size


def _count(used: int, limit: int, what: str, key: str) -> None:
    if used >= limit:
        raise AttemptFull(
            Code.ATTEMPT_LIMIT,
            f"this attempt already has {used} worker {what}, the most it may have ({key})",
            limit=key,
            max=limit,
        )


def _size(used: int, size: int, limit: int, key: str) -> None:
    if used + size > limit:
        raise AttemptFull(
            Code.ATTEMPT_TOO_LARGE,
            f"{size} more bytes would take this attempt to {used + size}, past its {limit} ({key})",
            limit=key,
            max=limit,
        )
