"""Start-up recovery: bring stored sessions and live tasks back before serving.

Sessions come first, so that a task re-dispatched here resolves its operator;
the operator then sees the new attempt's requests when it reconnects (they wait
``reconnect_grace_s`` for it).  Only tasks that were pending or running are
loaded: finished ones stay in the store, where reads find them, so start-up
time and memory do not grow with history.  A row that cannot be decoded — for
any reason: bad JSON, too deep, a missing or mistyped field, a value that could
not be served back — is skipped with a warning naming it.  One bad row never
stops the server.

With a store many nodes share (PostgreSQL), a node takes only the live tasks
no live node owns: those whose lease lapsed or was let go (``Store.take_over``)
— at start-up, and then every ``cluster.lease_s / 6`` (``take_over_lapsed``),
which is how a surviving node picks up a dead or stopped node's work.  Their
cut attempts are interruptions, exactly as after a restart.
"""

from __future__ import annotations

import time
from typing import Any

from operator_server.engine import Engine
from operator_server.engine.reads import decode_row
from operator_server.logs import get_logger
from operator_server.operators.directory import OperatorDirectory
from operator_server.store import Store

log = get_logger(__name__)
# Tasks taken over per store round trip.
TAKE_OVER_BATCH = 500


async def recover(engine: Engine, directory: OperatorDirectory, store: Store) -> dict[str, Any]:
    now = time.time()
    restored = dropped = skipped = 0
    for row in await store.load_sessions():
        if row.error is not None:
            log.warning(
                "skipping a stored session that cannot be decoded", sid=row.key, error=row.error
            )
            skipped += 1
            continue
        try:
            back = directory.restore(row.value, now)
        except Exception as exc:  # a bad row must not stop start-up
            log.warning(
                "skipping a stored session that cannot be restored", sid=row.key, error=str(exc)
            )
            skipped += 1
            continue
        if back:
            restored += 1
        else:
            await store.delete_session(row.key)
            dropped += 1
    await engine.load_counts()
    tasks, redispatched, bad = await _take_over(engine, store, at_start=True)
    skipped += bad
    summary = {
        "sessions": restored,
        "sessions_dropped": dropped,
        "tasks": tasks,
        "redispatched": redispatched,
        "skipped_rows": skipped,
    }
    log.info("recovered stored state", **summary)
    return summary


async def _take_over(engine: Engine, store: Store, *, at_start: bool) -> tuple[int, int, int]:
    """Recover every task the store hands this node: (tasks, re-dispatched, skipped)."""
    tasks = redispatched = skipped = 0
    while True:
        rows = await store.take_over(at_start=at_start, limit=TAKE_OVER_BATCH)
        for row in rows:
            task = decode_row(row)
            if task is None:
                skipped += 1
                continue
            was_open = not task.status.terminal
            await engine.recover_task(task)
            tasks += 1
            redispatched += was_open and not task.status.terminal
        # One process hands everything over at once; a shared store in batches.
        if not store.shared or len(rows) < TAKE_OVER_BATCH:
            return tasks, redispatched, skipped


async def take_over_lapsed(engine: Engine, store: Store) -> int:
    """Take the tasks whose node stopped renewing their leases; how many."""
    tasks, redispatched, _ = await _take_over(engine, store, at_start=False)
    if tasks:
        log.info("took over tasks from another node", tasks=tasks, redispatched=redispatched)
    return tasks
