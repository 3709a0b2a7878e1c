"""``operator-server keys create|list|revoke``: API keys, on the store itself.

For bootstrap: the first key is made before any daemon runs, or without one.
It opens the store the daemon's config names (``--config``, ``--store-path``,
``--store-url`` after the verb, as ``serve`` takes them): with SQLite only
while the daemon is stopped (one process holds the file; the message says
which one does), with PostgreSQL at any time — a revocation there reaches every
running node as it commits.  A running daemon's keys are also managed over
REST (``POST``/``GET /v1/keys``, ``DELETE /v1/keys/{id}``), with the same rules
(``auth/keys.py``).

``create`` prints the key's record as JSON, then the key itself on the last
line of stdout (``| tail -n1`` takes it); it is never shown again.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Protocol

from operator_server.offline import add_store_options, store_settings

# The parser is built for every command, ``--help`` included: what the verbs
# run is imported when they run (``cli.py`` keeps start-up light).
if TYPE_CHECKING:
    from operator_server.auth.keys import KeyBook
    from operator_server.config import Settings

    class _OpenBook(KeyBook, Protocol):
        async def open(self) -> None: ...

        async def close(self) -> None: ...


def cli_principal() -> str:
    """Who the audit trail says made or revoked a key from this command: the
    account at the machine (it held the store itself, no credential)."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return "cli"


def add_keys(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser(
        "keys",
        help="make, list or revoke API keys, on the store directly",
        description="API keys for the daemon, written to its store directly (SQLite: while "
        "the daemon is stopped; PostgreSQL: any time). A running daemon also manages them "
        "at /v1/keys.",
    )
    verbs = keys.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser(
        "create", help="make a key; its text is the last line of stdout, shown only once"
    )
    create.add_argument("--name", required=True, help="who or what holds it")
    create.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        required=True,
        metavar="SCOPE",
        help="a scope (repeatable): tasks:create, tasks:read, tasks:cancel, events:read, "
        "operate:<glob>, admin",
    )
    create.add_argument(
        "--expires-in-s", type=float, metavar="S", help="refused this many seconds from now"
    )
    create.add_argument("--note", default="", help="free text kept with the key")
    verbs.add_parser("list", help="every key as JSON, revoked ones too (never a secret)")
    revoke = verbs.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("id", help="the key's id (the part after osk_)")
    for verb in verbs.choices.values():
        add_store_options(verb)
    keys.set_defaults(func=keys_main)


def _book(settings: Settings) -> _OpenBook:
    from operator_server.config import ConfigError
    from operator_server.store import SQLiteStore

    if settings.store.url:
        # Imported here: asyncpg is loaded only for a PostgreSQL store.
        from operator_server.store.postgres.offline import PostgresOffline

        return PostgresOffline(settings.store.url, node="operator-server keys")
    if settings.store.path == ":memory:":
        raise ConfigError("store.path is :memory:, which forgets every key on exit")
    return SQLiteStore(settings.store.path)


async def _run(args: argparse.Namespace, book: _OpenBook) -> int:
    from operator_server.auth.keys import ApiKeys, key_view

    await book.open()
    try:
        keys = ApiKeys(book)
        if args.verb == "create":
            record, text = await keys.create(
                args.name, args.scopes, args.expires_in_s, args.note, by=cli_principal()
            )
            print(json.dumps(key_view(record), indent=2))
            print(text)
        elif args.verb == "list":
            print(json.dumps([key_view(r) for r in await keys.list()], indent=2))
        else:
            revoked = await keys.revoke(args.id, by=cli_principal())
            if revoked is None:
                print(f"operator-server: no API key {args.id!r}", file=sys.stderr)
                return 1
            print(json.dumps(key_view(revoked), indent=2))
    finally:
        await book.close()
    return 0


def keys_main(args: argparse.Namespace) -> int:
    import asyncio

    from operator_server.config import ConfigError
    from operator_server.errors import ApiError
    from operator_server.logs import configure_logging
    from operator_server.store import StoreError

    try:
        settings = store_settings(args)
        book = _book(settings)
    except ConfigError as exc:
        print(f"operator-server: config error: {exc}", file=sys.stderr)
        return 2
    # Stdout carries only the answer (and ``create``'s key last): logs go to stderr.
    configure_logging("warning", "console", stream=sys.stderr)
    try:
        return asyncio.run(_run(args, book))
    except ApiError as exc:
        print(f"operator-server: {exc.message}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"operator-server: {exc}", file=sys.stderr)
        return 1
