"""A throwaway PostgreSQL for the tests, started by the suite itself.

One server per test session (``postgres``), from the launcher ``make cluster``
uses (``operator_server.localcluster.throwaway_postgres``): ``initdb`` into a
fresh temporary directory, a free port on 127.0.0.1 with its unix socket in
that directory, ``fsync=off`` (a test database need not survive power loss),
run as ``nobody`` when the tests run as root, stopped and removed at the end.

Each test that wants a database gets its own (``pg_url``): a fresh
``CREATE DATABASE``, so tests never see each other's rows, dropped after it.

Where PostgreSQL is not installed the tests that need it are skipped (tests/needs.py), except
under ``CI=true``, where that is a failure: CI installs it (``.ci/run``), so a
missing server there means the cluster tests silently stopped running.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from operator_server.localcluster import Postgres, find_bindir, throwaway_postgres
from tests.needs import unavailable

_databases = itertools.count(1)


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
async def pg_url(postgres: Postgres) -> AsyncIterator[str]:
    """A new, empty database on the session's server, dropped after the test."""
    url = await new_database(postgres)
    yield url
    # Dropped now (a few ms) rather than left for the end of the session, where
    # removing a hundred databases' files took 5-10 s before the run could end.
    # FORCE: a daemon the test started may still be connected; it is stopped
    # right after. A server the test left stopped keeps the database instead.
    with contextlib.suppress(OSError, asyncpg.PostgresError):
        conn = await asyncpg.connect(postgres.url())
        try:
            await conn.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
        finally:
            await conn.close()
