"""The action links' SQL (``notify/links.py``): the signing key every node
shares when no ``secret`` is set, and each link's one use, claimed by the
first node whose insert commits."""

from __future__ import annotations

import asyncpg

from operator_server.store.base import LINK_USE_COLUMNS, LinkUse
from operator_server.store.postgres.writer import GroupCommitWriter

CLAIM_LINK = (
    f"INSERT INTO link_uses ({LINK_USE_COLUMNS}) VALUES ($1, $2, $3, $4, $5) "
    "ON CONFLICT (link_id) DO NOTHING RETURNING link_id"
)
GET_LINK_USE = f"SELECT {LINK_USE_COLUMNS} FROM link_uses WHERE link_id = $1"


def _use(row: asyncpg.Record | None) -> LinkUse | None:
    return None if row is None else LinkUse(*tuple(row))


async def link_key(conn: asyncpg.Connection, candidate: str) -> str:
    await conn.execute(
        "INSERT INTO link_keys (id, key) VALUES (1, $1) ON CONFLICT (id) DO NOTHING", candidate
    )
    return str(await conn.fetchval("SELECT key FROM link_keys WHERE id = 1"))


async def claim_link(conn: asyncpg.Connection, use: LinkUse) -> LinkUse | None:
    added = await conn.fetchval(
        CLAIM_LINK, use.link_id, use.req_id, use.action, use.principal, float(use.at)
    )
    if added is not None:
        return None
    return await link_use(conn, use.link_id)


async def link_use(conn: asyncpg.Connection, link_id: str) -> LinkUse | None:
    return _use(await conn.fetchrow(GET_LINK_USE, link_id))


class LinkOps(GroupCommitWriter):
    """The PostgreSQL store's link operations, a mixin: every one through the
    writer, so a claim is committed before its decision is made."""

    async def link_key(self, candidate: str) -> str:
        found: str = await self._call(lambda c: link_key(c, candidate), "read the links' key")
        return found

    async def claim_link(self, use: LinkUse) -> LinkUse | None:
        found: LinkUse | None = await self._call(
            lambda c: claim_link(c, use), f"claim link {use.link_id}"
        )
        return found

    async def release_link(self, link_id: str) -> None:
        await self._call(
            lambda c: c.execute("DELETE FROM link_uses WHERE link_id = $1", link_id),
            f"release link {link_id}",
        )

    async def link_use(self, link_id: str) -> LinkUse | None:
        found: LinkUse | None = await self._read(
            lambda c: link_use(c, link_id), f"read link {link_id}"
        )
        return found
