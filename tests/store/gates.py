"""Gates for races between a real daemon's transactions on a real PostgreSQL.

A gate is an advisory lock the test holds (``close``) and a trigger of the
test's own that waits for it (``gate``): a transaction reaching the trigger
stops there, with everything it did before (its snapshot, its locks) in place,
until the test lets the gate go (``open_``).  So a race the code must win
whatever the timing is run in the order that would lose it, every time, and
``waiting_at`` tells the test when a transaction has got there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg

# The first of the two int4 keys of every gate's lock.
GATES = 4242
# Each trigger waits until the test lets its gate go (a shared lock on it).
GATE_FUNCTION = f"""
    CREATE FUNCTION test_gate() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock_shared({GATES}, TG_ARGV[0]::int);
        RETURN NEW;
    END $$
"""
# Transactions of this database waiting for an advisory lock, by key.
WAITING = """
    SELECT count(*) FROM pg_locks
    WHERE locktype = 'advisory' AND NOT granted
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = $3
"""


async def gate(conn: asyncpg.Connection, number: int, trigger: str) -> None:
    """Gate ``number`` at ``trigger``: what follows ``CREATE TRIGGER <name>``
    up to ``EXECUTE``, e.g. ``BEFORE INSERT ON t FOR EACH ROW WHEN (...)``."""
    if not await conn.fetchval("SELECT 1 FROM pg_proc WHERE proname = 'test_gate'"):
        await conn.execute(GATE_FUNCTION)
    await conn.execute(
        f"CREATE TRIGGER test_gate_{number} {trigger} EXECUTE FUNCTION test_gate({number})"
    )


async def close(conn: asyncpg.Connection, number: int) -> None:
    """Hold gate ``number``: a transaction reaching its trigger waits there
    (until ``open_``, or until ``conn`` closes)."""
    await conn.execute("SELECT pg_advisory_lock($1, $2)", GATES, number)


async def open_(conn: asyncpg.Connection, number: int) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1, $2)", GATES, number)


async def waiting_at(conn: asyncpg.Connection, number: int) -> bool:
    """A transaction waits at gate ``number``."""
    return bool(await conn.fetchval(WAITING, GATES, number, 2))


async def waiting_for(conn: asyncpg.Connection, key: int) -> bool:
    """A transaction waits for the advisory lock of the one bigint ``key``."""
    return bool(await conn.fetchval(WAITING, key >> 32, key & 0xFFFF_FFFF, 1))


async def until(condition: Callable[[], Awaitable[bool]]) -> None:
    """Poll the database until ``condition`` holds."""
    for _ in range(750):
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the database never got there")
