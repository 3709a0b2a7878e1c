"""What a command that works on the store itself, not through a daemon, takes.

``operator-server keys …`` and ``operator-server audit …`` open the store the
daemon's config names: ``--config``, ``--store-path`` and ``--store-url`` after
the verb, as ``serve`` takes them.  Declared once here so the two read alike;
light on imports, since every command's parser is built on each start.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from operator_server.config import Settings

# (argparse dest, the setting it sets)
_STORE_OPTIONS = (("store_path", "store.path"), ("store_url", "store.url"))


def add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", help="TOML config file")
    parser.add_argument("--store-path", metavar="PATH", help="the SQLite file (store.path)")
    parser.add_argument("--store-url", metavar="URL", help="the PostgreSQL URL (store.url)")


def store_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the options name, for ``load_settings(flags=...)``."""
    return {key: value for dest, key in _STORE_OPTIONS if (value := getattr(args, dest, None))}


def store_settings(args: argparse.Namespace) -> Settings:
    """The settings the options name; ``ConfigError`` if they are wrong.

    No ``secret`` is asked for: it signs worker credentials, which these
    commands neither make nor check (a key's hash does not depend on it), so
    the check that a cluster's nodes share one is not theirs to make."""
    from operator_server.config import load_settings

    return load_settings(file=args.config, flags=store_flags(args), overrides={"secret": "-"})
