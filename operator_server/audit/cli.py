"""``operator-server audit verify|export``: the trail, read from the store itself.

Both open the store named by the usual config and flags (``--config``,
``--store-path``, ``--store-url`` after the verb, as ``serve`` takes them),
without a daemon: an auditor checks what is on disk, not what a server says.
A SQLite store is held by one process, so with SQLite run them while the
daemon is stopped (or read ``GET /v1/audit`` from the running one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol, TextIO

from operator_server.audit.chain import Verdict, verify
from operator_server.audit.record import AuditRow
from operator_server.offline import add_store_options, store_settings
from operator_server.wire.times import parse_instant

if TYPE_CHECKING:  # the store is loaded only when a verb runs
    from operator_server.audit.chain import Anchor
    from operator_server.store.base import AuditQuery


class AuditRows(Protocol):
    """What reading the trail needs of a store: every ``Store``, and the
    commands' own PostgreSQL store (``store/postgres/offline.py``)."""

    async def audit_page(self, query: AuditQuery) -> list[AuditRow]: ...

    async def audit_anchor(self) -> Anchor | None: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...


# Rows read per store round trip while walking the chain.
PAGE = 1000


def add_audit(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``audit verify`` and ``audit export`` on the top-level parser."""
    audit = sub.add_parser(
        "audit",
        help="check or export the audit trail",
        description="Check the audit trail's hash chain, or export it as JSON Lines, "
        "reading the store directly.",
    )
    verbs = audit.add_subparsers(dest="verb", required=True)
    check = verbs.add_parser(
        "verify",
        help="walk the hash chain; exit 1 naming the first row that does not fit",
    )
    export = verbs.add_parser("export", help="print audit rows as JSON Lines, oldest first")
    export.add_argument(
        "--since",
        metavar="WHEN",
        help="only rows at or after WHEN (ISO 8601, e.g. 2026-12-01T00:00:00Z, or epoch seconds)",
    )
    for parser in (check, export):
        add_store_options(parser)
    audit.set_defaults(func=audit_main)


def audit_main(args: argparse.Namespace) -> int:
    from operator_server.config import ConfigError
    from operator_server.logs import configure_logging
    from operator_server.store import StoreError, open_store

    since = None
    try:
        if getattr(args, "since", None) is not None:
            since = parse_instant(args.since)
        settings = store_settings(args)
    except (ConfigError, ValueError) as exc:
        print(f"operator-server audit: {exc}", file=sys.stderr)
        return 2
    # Store chatter (migrations) goes to stderr: stdout is the report or the export.
    configure_logging("warning", "console", once=True)

    async def run() -> int:
        store: AuditRows
        if settings.store.url:
            # Not the daemon's store: reading the trail must not join the
            # cluster (a heartbeat row, a listener) as a node would.
            from operator_server.store.postgres.offline import PostgresOffline

            store = PostgresOffline(settings.store.url, node="operator-server audit")
        else:
            store = open_store(settings)
        await store.open()
        try:
            if args.verb == "verify":
                return report(await verify_store(store), sys.stdout)
            await export(store, since, sys.stdout)
            return 0
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except StoreError as exc:
        print(f"operator-server audit: {exc}", file=sys.stderr)
        return 1


async def rows_of(store: AuditRows, since: float | None = None) -> AsyncIterator[AuditRow]:
    """Every audit row of ``store``, in seq order, a page at a time."""
    from operator_server.store.base import AuditQuery

    after = 0
    while True:
        page = await store.audit_page(AuditQuery(after=after, since=since, limit=PAGE))
        for row in page:
            yield row
        if len(page) < PAGE:
            return
        after = page[-1].seq


async def verify_store(store: AuditRows) -> Verdict:
    """Walk ``store``'s chain from its start, or from where retention pruned it."""
    return await verify(rows_of(store), await store.audit_anchor())


def report(verdict: Verdict, out: TextIO) -> int:
    """Say what ``verify`` found; the exit status (1: the chain is broken)."""
    if verdict.pruned_through is not None:
        print(
            f"started from seq {verdict.first_seq or verdict.pruned_through + 1}: retention "
            f"pruned every row up to seq {verdict.pruned_through}",
            file=out,
        )
    if not verdict.ok:
        print(f"audit chain broken at seq {verdict.broken_at}: {verdict.why}", file=out)
        return 1
    if verdict.head_seq is None:
        print("audit chain ok: no rows", file=out)
    else:
        print(
            f"audit chain ok: {verdict.checked} rows, seq {verdict.first_seq} to "
            f"{verdict.head_seq}; head hash {verdict.head_hash}",
            file=out,
        )
    return 0


async def export(store: AuditRows, since: float | None, out: TextIO) -> None:
    """Every row at or after ``since``, one JSON object a line."""
    async for row in rows_of(store, since):
        out.write(json.dumps(row.view(), ensure_ascii=False) + "\n")
