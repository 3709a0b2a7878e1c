"""The one place background tasks are created.

Every asyncio task the server starts outside a request handler — a task's
dispatch run, a socket's writer, a fire-and-forget hook, the periodic sweep —
is started through ``Background.spawn``: it is named, kept in a set until it
ends, its crash is logged, and ``close()`` cancels and awaits whatever is left
at shutdown.

The one exception is a store's own writer (a thread for SQLite, a task for
PostgreSQL): it lives exactly as long as the store is open, and the store's
``close()`` drains and stops it last of all, after this set is empty — so
every state change made on the way down is still written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from operator_server.logs import get_logger

T = TypeVar("T")
log = get_logger(__name__)


class Background:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        if self._closed:
            coro.close()
            raise RuntimeError(f"background is closed; cannot start {name}")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("background task crashed", task=task.get_name(), exc_info=exc)

    async def close(self, reason: str = "server shutting down") -> None:
        """Cancel every task still running and wait for all of them to end."""
        self._closed = True
        while self._tasks:
            pending = list(self._tasks)
            for task in pending:
                task.cancel(reason)
            await asyncio.gather(*pending, return_exceptions=True)
