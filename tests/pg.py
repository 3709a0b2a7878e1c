"""A throwaway PostgreSQL for the tests, started by the suite itself.

One server per test session (``postgres``), from the launcher ``make cluster``
uses (``operator_server.localcluster.throwaway_postgres``): ``initdb`` into a
fresh temporary directory, a free port on 127.0.0.1 with its unix socket in
that directory, ``fsync=off`` (a test database need not survive power loss),
run as ``nobody`` when the tests run as root, stopped and removed at the end.

Each test that wants a database gets its own (``pg_url``): a fresh
``CREATE DATABASE``, so tests never see each other's rows, dropped after the
test (``drop_test_databases``).

Where PostgreSQL is not installed the tests that need it are skipped (tests/needs.py), except
under ``CI=true``, where that is a failure: CI installs it (``.ci/run``), so a
missing server there means the cluster tests silently stopped running.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
from collections.abc import Iterator

import asyncpg
import pytest

from operator_server.localcluster import Postgres, find_bindir, throwaway_postgres
from tests.needs import unavailable

_databases = itertools.count(1)
# The databases made during the current test (``new_database``), dropped after it.
_made: list[tuple[Postgres, str]] = []


def require_postgres() -> None:
    """Skip the calling test where PostgreSQL is not installed (fail under CI=true)."""
    if find_bindir() is None:
        unavailable("PostgreSQL is not installed (no initdb); .ci/run installs it")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    require_postgres()
    with throwaway_postgres() as pg:
        yield pg


async def new_database(postgres: Postgres) -> str:
    """The URL of a new, empty database on ``postgres``."""
    name = f"test_{os.getpid()}_{next(_databases)}"
    _made.append((postgres, name))
    conn = await asyncpg.connect(postgres.url())
    try:
        # FILE_COPY copies the empty template's files (0.09 s here) instead of
        # writing them all through the WAL, PostgreSQL 15's default (0.14 s);
        # before 15 it was the only way, and the option did not exist.
        copy = " STRATEGY = FILE_COPY" if conn.get_server_version().major >= 15 else ""
        await conn.execute(f'CREATE DATABASE "{name}"{copy}')
    finally:
        await conn.close()
    return postgres.url(name)


@pytest.fixture
async def pg_url(postgres: Postgres) -> str:
    """A new, empty database on the session's server."""
    return await new_database(postgres)


@pytest.fixture(autouse=True)
def drop_test_databases() -> Iterator[None]:
    """Each database a test made is dropped once the test is over: a few ms,
    rather than leaving a hundred (7.5 MB each) for the end of the session,
    where removing their files made each worker's last teardown seconds long."""
    yield
    if _made:
        made = list(_made)
        _made.clear()
        # In a thread: asyncio.run here would replace the test loop's
        # bookkeeping in this one.
        dropping = threading.Thread(target=asyncio.run, args=(_drop(made),))
        dropping.start()
        dropping.join()


async def _drop(made: list[tuple[Postgres, str]]) -> None:
    # FORCE: a daemon the test started may still be connected; it is stopped
    # right after. A server the test left stopped keeps its databases (they go
    # with its directory at the end).
    for postgres, name in made:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            conn = await asyncpg.connect(postgres.url())
            try:
                await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            finally:
                await conn.close()
