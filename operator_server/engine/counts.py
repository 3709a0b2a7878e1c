"""How many tasks are in each status, kept as tasks move."""

from __future__ import annotations

from collections import Counter

from operator_server.engine.tasks import TaskStatus


class StatusCounts(Counter[str]):
    """How many tasks are in each status, kept as tasks move (healthz reads
    this instead of scanning); started from the store at start-up."""

    def moved(self, old: TaskStatus | None, new: TaskStatus) -> None:
        if old is not None:
            self[str(old)] -= 1
        self[str(new)] += 1

    def removed(self, status: str, n: int) -> None:
        self[status] -= n

    def view(self) -> dict[str, int]:
        return {status: n for status, n in self.items() if n > 0}
