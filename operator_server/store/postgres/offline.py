"""PostgreSQL for a command that works on the store itself, not through a
daemon: ``operator-server keys`` writes keys, ``operator-server audit``
reads the trail (``offline.py`` parses their options)."""

from __future__ import annotations

from typing import Any

import asyncpg

from operator_server.audit.chain import Anchor
from operator_server.audit.record import AuditRow
from operator_server.store.base import Audit, AuditQuery, KeyRecord, StoreError
from operator_server.store.postgres.audit import anchor, append_entries, page_sql, rows_of
from operator_server.store.postgres.keys import get_key, insert_key, list_keys, revoke_key
from operator_server.store.postgres.schema import migrate
from operator_server.store.postgres.writer import CONNECTION_ERRORS


class PostgresOffline:
    """A PostgreSQL store for a command that works on it directly (``keys``,
    ``audit``): a connection pool and the schema brought up to date, and
    nothing else (no heartbeat, no lease, no listener), so running one never
    looks like a node joining the cluster."""

    def __init__(self, url: str, node: str) -> None:
        self.url = url
        self.node = node  # what the audit rows it appends name as their node
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=2, timeout=10)
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        await migrate(self._pool)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _run(self, what: str, work: Any, *args: Any, audit: Audit = ()) -> Any:
        if self._pool is None:
            raise StoreError("the store is not open")
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                done = await work(conn, *args)
                # The act's audit entries commit with it, on the one chain.
                await append_entries(conn, self.node, list(audit))
                return done
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            raise StoreError(f"{what}: {exc}") from exc

    async def put_key(self, record: KeyRecord, audit: Audit = ()) -> None:
        await self._run(f"save key {record.id}", insert_key, record, audit=audit)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        found: KeyRecord | None = await self._run(f"read key {key_id}", get_key, key_id)
        return found

    async def list_keys(self) -> list[KeyRecord]:
        found: list[KeyRecord] = await self._run("list keys", list_keys)
        return found

    async def revoke_key(self, key_id: str, at: float, audit: Audit = ()) -> KeyRecord | None:
        found: KeyRecord | None = await self._run(
            f"revoke key {key_id}", revoke_key, key_id, at, self.node, audit=audit
        )
        return found

    async def audit_page(self, query: AuditQuery) -> list[AuditRow]:
        sql, args = page_sql(query)
        return rows_of(await self._run("read audit", lambda c: c.fetch(sql, *args)))

    async def audit_anchor(self) -> Anchor | None:
        found: Anchor | None = await self._run("read audit anchor", anchor)
        return found
