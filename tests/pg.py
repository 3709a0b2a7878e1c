"""A throwaway PostgreSQL for the tests, started by the suite itself.

One server per test session (``postgres``): ``initdb`` into a fresh temporary
directory, ``pg_ctl start`` on a free port on 127.0.0.1 with its unix socket in
that directory, ``fsync=off`` (a test database need not survive power loss),
stopped and removed at the end.  PostgreSQL refuses to run as root, so when the
tests do, the server runs as ``nobody``, which then owns the directory.

Each test that wants a database gets its own (``pg_url``): a fresh
``CREATE DATABASE``, so tests never see each other's rows.

Where PostgreSQL is not installed the tests that need it are skipped, except
under ``CI=true``, where that is a failure: CI installs it (``.ci/run``), so a
missing server there means the cluster tests silently stopped running.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

RUN_AS = "nobody"
_databases = itertools.count(1)


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"


def find_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: Debian keeps them off the PATH."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    return Path(versions[-1]).parent if versions else None


def _version_key(path: str) -> int:
    version = Path(path).parent.parent.name
    return int(version) if version.isdigit() else 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _as_server_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", RUN_AS, "--", *argv] if os.geteuid() == 0 else argv


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(
        _as_server_user(argv), capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stdout}{done.stderr}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    bindir = find_bindir()
    if bindir is None:
        message = "PostgreSQL is not installed (no initdb); .ci/run installs it"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="operator-server-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, RUN_AS)
    data, log = root / "data", root / "server.log"
    _run(
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ],
        "initdb",
    )
    port = free_port()
    options = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        "-c max_connections=200"
    )
    _run(
        [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"],
        f"pg_ctl start (log: {log})",
    )
    try:
        yield Postgres("127.0.0.1", port)
    finally:
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], "stop")
        shutil.rmtree(root, ignore_errors=True)


async def new_database(postgres: Postgres) -> str:
    """The URL of a new, empty database on ``postgres``."""
    name = f"test_{os.getpid()}_{next(_databases)}"
    conn = await asyncpg.connect(postgres.url())
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return postgres.url(name)


@pytest.fixture
async def pg_url(postgres: Postgres) -> str:
    """A new, empty database on the session's server."""
    return await new_database(postgres)
