"""Reading tasks: live ones from memory (fresher than their rows), finished
ones from the store; waiting for one to end; a page of them.

A task this node created and handed to another node (cluster placement) is
kept here as it was created (``away``) until this node hears it end: a
long-poll on it then waits for the end without reading it first, and reads
it once, as it ended.  Behind a round-robin balancer that is every other
task's ``GET ?wait``: two store reads of three saved (each three statements,
after a flush of the writer's queue).  A plain read still reads the store:
the kept copy is as created, not as it runs."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from operator_server.engine.task_json import task_view
from operator_server.engine.tasks import Task, TaskStatus
from operator_server.logs import get_logger
from operator_server.store.base import decode_task_row
from operator_server.wire import json

if TYPE_CHECKING:
    from operator_server.cluster.routing import Routing
    from operator_server.store import Row, Store

log = get_logger(__name__)
# Tasks handed away kept at most: beyond, the oldest is read from the store
# again (a long-poll on it reads before it waits, as for any other node's).
AWAY_KEPT = 4096


class TaskReads:
    def __init__(self, tasks: dict[str, Task], store: Store, routing: Routing) -> None:
        self.tasks = tasks  # the engine's live tasks
        self.store = store
        self.routing = routing
        # Handed to another node, as created: the task and a watch set when
        # this node hears it end (or must look again: a resync).
        self._away: dict[str, tuple[Task, asyncio.Future[str | None]]] = {}

    def handed_away(self, task: Task) -> None:
        """``task``, created here, now runs on another node: kept until this
        node hears it end."""
        ended = self.routing.watch_ended(task.id)
        self._away[task.id] = (task, ended)
        ended.add_done_callback(lambda _done: self._forget(task.id, ended))
        while len(self._away) > AWAY_KEPT:
            oldest = next(iter(self._away))
            self._forget(oldest, self._away[oldest][1])

    def came_back(self, task_id: str) -> None:
        """``task_id`` runs here now (taken over, say): memory has it."""
        entry = self._away.get(task_id)
        if entry is not None:
            self._forget(task_id, entry[1])

    def _forget(self, task_id: str, ended: asyncio.Future[str | None]) -> None:
        entry = self._away.get(task_id)
        if entry is not None and entry[1] is ended:
            del self._away[task_id]
        self.routing.unwatch(task_id, ended)
        ended.cancel()  # unheard yet: nobody waits on it any more

    def _unheard(self, task_id: str) -> Task | None:
        """The task as created here, handed away, when its end is not heard yet."""
        entry = self._away.get(task_id)
        return entry[0] if entry is not None and not entry[1].done() else None

    def kept(self, task: Task) -> bool:
        """``task`` is the copy of a task handed away kept as created."""
        entry = self._away.get(task.id)
        return entry is not None and entry[0] is task

    async def find_to_wait(self, task_id: str) -> Task | None:
        """As ``find``, but a task handed away whose end is not heard yet is
        the copy kept as created (no read): for a long-poll, which reads it
        when it ends (``wait_finished``)."""
        if task_id not in self.tasks and (kept := self._unheard(task_id)) is not None:
            return kept
        return await self.find(task_id)

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
        (cluster mode) is read again each time the store announces it ended,
        and once more at ``timeout`` if it is still the copy kept as created.
        """
        kept = task if self.kept(task) else None
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
                        # Read after watching: an end committed in between is
                        # seen.  Not needed while a task handed away from here
                        # has not been heard to end: this watch will hear it.
                        if self._unheard(task.id) is None:
                            task = await self.find(task.id) or task
                        if not task.status.terminal and (told := await ended) is not None:
                            # The news carried it as it ended: no read.
                            task = decode_row(decode_task_row(task.id, told)) or task
                    finally:
                        self.routing.unwatch(task.id, ended)
        if task is kept:  # still as created (the wait ran out): read it as it is
            task = await self.find(task.id) or task
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
