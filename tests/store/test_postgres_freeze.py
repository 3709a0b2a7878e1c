"""A node frozen (SIGSTOP) past its leases, then woken (SIGCONT): it writes
over nothing that was finished elsewhere."""

from __future__ import annotations

import asyncio

import pytest

from operator_server.store import Fenced
from tests.store.test_postgres import cut_off_pair, task_record


async def test_a_stale_writer_is_refused_after_the_task_ended_elsewhere_and_its_lease_went(
    pg_url: str,
) -> None:
    async with cut_off_pair(pg_url) as (a, b):
        await a.put_task(task_record("t-1", "running"))
        await asyncio.sleep(0.3)  # a is frozen: no renewal, the lease lapses
        assert [row.key for row in await b.take_over(at_start=False, limit=10)] == ["t-1"]
        await b.put_task(task_record("t-1", "running"))  # b writes at the epoch it took
        await b.put_task(task_record("t-1", "passed"))  # its end drops the lease row
        # a wakes and ends the task it no longer runs: no lease row to stop it,
        # but the task's epoch moved on when b took it.
        with pytest.raises(Fenced, match="taken over"):
            await a.put_task(task_record("t-1", "failed"))
        a.put_task_soon(task_record("t-1", "failed"))
        await a.flush()
        assert (await a.get_task("t-1")).value["status"] == "passed"  # type: ignore[union-attr]
