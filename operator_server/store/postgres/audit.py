"""The audit SQL: appending a batch's entries to the one chain, pages, pruning.

One chain for the cluster at no cost of its own: a batch's entries are chained
as it ends, under ``EVENTS_LOCK`` — which the batch already holds when it
stored events (almost every batch that decides something does) — so the head
read here is the newest committed by any node, and no other node appends until
this commit.  A run rolled back appends nothing; the next reads the head again.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from operator_server.audit.chain import Anchor
from operator_server.audit.record import (
    GENESIS,
    AuditEntry,
    AuditRow,
    chained_columns,
    from_columns,
)
from operator_server.store.base import Audit, AuditQuery
from operator_server.store.postgres.tasks import AUDIT_COLUMNS, AUDIT_TYPES, EVENTS_LOCK
from operator_server.store.postgres.writer import GroupCommitWriter, Op, nothing

INSERT_AUDIT = (
    f"INSERT INTO audit_log ({AUDIT_COLUMNS}) SELECT * FROM unnest("
    + ", ".join(f"${i}::{t}[]" for i, t in enumerate(AUDIT_TYPES, 1))
    + ")"
)
HEAD = "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"
ANCHOR = "SELECT seq, hash FROM audit_pruned"


async def chain_audit(c: asyncpg.Connection, node: str, done: list[Op]) -> list[Any]:
    """The audit rows of the batch's operations that succeeded, in queue
    order, chained after the head (``EVENTS_LOCK`` taken first if the batch
    has no events to take it): their columns, as arrays, for the batch's last
    statement to insert (``STORE_EVENTS_AND_TELL``); none without entries."""
    entries = [entry for op in done for entry in op.audit]
    if not entries:
        return []
    # ``number_events`` holds the lock already when the batch has events.
    return await chained(c, node, entries, locked=any(op.given for op in done))


async def chained(
    c: asyncpg.Connection, node: str, entries: list[AuditEntry], *, locked: bool
) -> list[Any]:
    """``entries`` chained after the head, as column arrays; ``locked``: the
    transaction holds the lock event ids are drawn under (which orders writers)."""
    if not locked:
        await c.execute("SELECT pg_advisory_xact_lock($1)", EVENTS_LOCK)
    head = await c.fetchrow(HEAD) or await c.fetchrow(ANCHOR)
    seq, prev = (int(head[0]), str(head[1])) if head is not None else (0, GENESIS)
    rows = chained_columns(seq + 1, node, entries, prev)
    return [list(column) for column in zip(*rows, strict=True)]


async def append_entries(
    c: asyncpg.Connection, node: str, entries: list[AuditEntry], *, locked: bool = False
) -> None:
    """Chain ``entries`` after the head and insert them, in the open transaction."""
    if not entries:
        return
    await c.execute(INSERT_AUDIT, *await chained(c, node, entries, locked=locked))


def page_sql(query: AuditQuery) -> tuple[str, list[Any]]:
    where: list[str] = ["seq > $1"]
    args: list[Any] = [query.after]
    for column, value in (
        ("task_id", query.task_id),
        ("principal", query.principal),
        ("action", query.action),
        ("at", query.since),
    ):
        if value is not None:
            args.append(value)
            where.append(f"{column} {'>=' if column == 'at' else '='} ${len(args)}")
    args.append(query.limit)
    sql = (
        f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE {' AND '.join(where)} "
        f"ORDER BY seq LIMIT ${len(args)}"
    )
    return sql, args


def rows_of(found: list[asyncpg.Record]) -> list[AuditRow]:
    return [from_columns(tuple(r)) for r in found]


async def anchor(c: asyncpg.Connection) -> Anchor | None:
    found = await c.fetchrow(ANCHOR)
    return None if found is None else Anchor(int(found[0]), str(found[1]))


async def prune(c: asyncpg.Connection, before: float) -> int:
    """Remove the prefix older than ``before``, never the head; under the
    chain's lock, so no node appends meanwhile."""
    await c.execute("SELECT pg_advisory_xact_lock($1)", EVENTS_LOCK)
    head = await c.fetchrow(HEAD)
    if head is None:
        return 0
    # Walked from the oldest row: it reads the prefix it removes, no more.
    first_new = await c.fetchval(
        "SELECT seq FROM audit_log WHERE at >= $1 ORDER BY seq LIMIT 1", float(before)
    )
    keep = min(int(first_new), int(head[0])) if first_new is not None else int(head[0])
    last = await c.fetchrow(
        "SELECT seq, hash FROM audit_log WHERE seq < $1 ORDER BY seq DESC LIMIT 1", keep
    )
    if last is None:
        return 0
    gone = await c.fetchval(
        "WITH gone AS (DELETE FROM audit_log WHERE seq < $1 RETURNING 1) SELECT count(*) FROM gone",
        keep,
    )
    await c.execute("DELETE FROM audit_pruned")
    await c.execute("INSERT INTO audit_pruned VALUES ($1, $2)", int(last[0]), str(last[1]))
    return int(gone)


class AuditOps(GroupCommitWriter):
    """The PostgreSQL store's audit operations, a mixin (``Store``'s audit
    contract): appends ride the writer's queue, reads the pool."""

    async def append_audit(self, entries: Audit) -> None:
        await self._call(nothing, "save audit", audit=list(entries))

    async def audit_page(self, query: AuditQuery) -> list[AuditRow]:
        sql, args = page_sql(query)
        found = await self._read(lambda c: c.fetch(sql, *args), "read audit")
        return rows_of(found)

    async def audit_anchor(self) -> Anchor | None:
        found: Anchor | None = await self._read(anchor, "read audit anchor")
        return found

    async def prune_audit(self, before: float) -> int:
        gone: int = await self._call(lambda c: prune(c, before), "prune audit")
        return gone
