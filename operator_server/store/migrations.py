"""The one migration runner both stores use: forward migrations, numbered.

``MIGRATIONS[n]`` takes a schema from version ``n`` to ``n + 1``.  The runner
owns the rule (a newer schema than this server knows is refused, never
touched; each missing step runs in order, and the version moves on with it)
and says what it did; each store supplies its dialect: how it locks the
schema, where it keeps the version, and how one step runs with its version
write (SQLite: statement by statement in the open transaction, ``PRAGMA
user_version``; PostgreSQL: one transaction per step under an advisory lock,
``operator_server_schema``).  SQLite runs it on its own thread, PostgreSQL on
the event loop: hence a generator of steps, which either can drive.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from operator_server.logs import get_logger
from operator_server.store.base import StoreError

log = get_logger(__name__)


def steps(
    schema: str,
    version: int,
    migrations: Sequence[str],
    refuse: type[Exception] = StoreError,
) -> Iterator[tuple[int, str]]:
    """The steps from ``version`` to ``len(migrations)``: ``(new version, SQL)``,
    each to be run (with its version write) before the next is asked for.
    ``refuse``: what a newer schema raises, in the store's own terms."""
    if version > len(migrations):
        raise refuse(
            f"database schema version {version} is newer than this server knows "
            f"({len(migrations)}); refusing to touch it"
        )
    for target in range(version, len(migrations)):
        yield target + 1, migrations[target]
        log.info(f"migrated the {schema} schema", version=target + 1)
