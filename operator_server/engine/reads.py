"""Reading tasks: live ones from memory (fresher than their rows), finished
ones from the store; waiting for one to end; a page of them."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from operator_server.engine.task_json import task_view
from operator_server.engine.tasks import Task, TaskStatus
from operator_server.logs import get_logger
from operator_server.wire import json

if TYPE_CHECKING:
    from operator_server.cluster.routing import Routing
    from operator_server.store import Row, Store

log = get_logger(__name__)


class TaskReads:
    def __init__(self, tasks: dict[str, Task], store: Store, routing: Routing) -> None:
        self.tasks = tasks  # the engine's live tasks
        self.store = store
        self.routing = routing

    async def find(self, task_id: str) -> Task | None:
        """The task, live or finished; None when unknown (or retained no longer)."""
        live = self.tasks.get(task_id)
        if live is not None:
            return live
        row = await self.store.get_task(task_id)
        return None if row is None else decode_row(row)

    async def wait_finished(self, task: Task, timeout: float) -> Task:
        """``task`` once it has ended, or as it is after ``timeout`` seconds.

        A task running here wakes its waiters as it ends; one another node runs
        (cluster mode) is read again each time the store announces it ended.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not task.status.terminal:
                    live = self.tasks.get(task.id)
                    if live is not None or not self.routing.shared:
                        await (live or task).finished.wait()
                        if (live or task).status.terminal or not self.routing.shared:
                            return live or task
                        continue  # let go here: follow it to the node that runs it
                    ended = self.routing.watch_ended(task.id)
                    try:
                        # Read after watching: an end committed in between is seen.
                        task = await self.find(task.id) or task
                        if not task.status.terminal:
                            await ended
                    finally:
                        self.routing.unwatch(task.id, ended)
        return task

    async def page(
        self, status: TaskStatus | None, after_seq: int, limit: int
    ) -> tuple[list[Task], int | None]:
        """One page of tasks in creation order, and the cursor after it (if more)."""
        stored = await self.store.list_tasks(
            None if status is None else str(status), after_seq, limit + 1
        )
        more = len(stored) > limit
        stored = stored[:limit]
        tasks = []
        for item in stored:
            # A live task's own object is fresher than its row (outputs so far).
            task = self.tasks.get(item.row.key) or decode_row(item.row)
            if task is not None:
                tasks.append(task)
        return tasks, (stored[-1].seq if more and stored else None)


def decode_row(row: Row) -> Task | None:
    """A stored task, or None (with a warning naming it) when its row is
    unusable for any reason — including one that loads but could not be
    served, which would otherwise fail every read of it."""
    try:
        if row.error is not None:
            raise ValueError(row.error)
        task = Task.from_record(row.value)
        json.dumps(task_view(task))
        return task
    except Exception as exc:  # whatever is wrong with the row, only it is skipped
        log.warning(
            "skipping a stored task that cannot be decoded", task_id=row.key, error=str(exc)
        )
        return None
