"""The API key SQL, and the key book ``operator-server keys`` opens on a
database without becoming a node of its cluster.

A revocation is one transaction with its notice: every node hears of it
(``KeyRevoked`` on the bus) as the row commits, and forgets what it cached of
the key (``auth/authenticator.py``).  The CLI revokes through the same
statement, so a key revoked there is refused at once by every running node.
"""

from __future__ import annotations

import asyncpg

from operator_server.cluster.bus import ALL
from operator_server.cluster.messages import KeyRevoked
from operator_server.store.base import (
    KEY_COLUMNS,
    Audit,
    KeyRecord,
    decode_key_row,
    decode_key_rows,
    key_row,
)
from operator_server.store.postgres.writer import GroupCommitWriter

INSERT_KEY = f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
GET_KEY = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"
LIST_KEYS = f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
REVOKE_KEY = (
    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 "
    f"RETURNING {KEY_COLUMNS}"
)


async def insert_key(conn: asyncpg.Connection, record: KeyRecord) -> None:
    await conn.execute(INSERT_KEY, *key_row(record))


async def get_key(conn: asyncpg.Connection, key_id: str) -> KeyRecord | None:
    row = await conn.fetchrow(GET_KEY, key_id)
    return decode_key_row(row)


async def list_keys(conn: asyncpg.Connection) -> list[KeyRecord]:
    return decode_key_rows(tuple(row) for row in await conn.fetch(LIST_KEYS))


async def revoke_key(
    conn: asyncpg.Connection, key_id: str, at: float, from_node: str
) -> KeyRecord | None:
    """Revoke, and notify every node in the same transaction (sent at its commit)."""
    row = await conn.fetchrow(REVOKE_KEY, key_id, float(at))
    if row is None:
        return None
    await conn.execute("SELECT pg_notify($1, $2)", ALL, KeyRevoked(key_id).encode(from_node))
    return decode_key_row(row)


class KeyOps(GroupCommitWriter):
    """The PostgreSQL store's key operations, a mixin: writes through the
    group-commit writer, reads on the pool."""

    _node_id: str

    async def put_key(self, record: KeyRecord, audit: Audit = ()) -> None:
        await self._call(lambda c: insert_key(c, record), f"save key {record.id}", audit=audit)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        found: KeyRecord | None = await self._read(
            lambda c: get_key(c, key_id), f"read key {key_id}"
        )
        return found

    async def list_keys(self) -> list[KeyRecord]:
        found: list[KeyRecord] = await self._read(list_keys, "list keys")
        return found

    async def revoke_key(self, key_id: str, at: float, audit: Audit = ()) -> KeyRecord | None:
        found: KeyRecord | None = await self._call(
            lambda c: revoke_key(c, key_id, at, self._node_id), f"revoke key {key_id}", audit=audit
        )
        return found
