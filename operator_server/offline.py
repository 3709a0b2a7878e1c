"""What a command that works on the store itself, not through a daemon, takes.

``operator-server keys …`` and ``operator-server audit …`` open the store the
daemon's config names: ``--config``, ``--store-path`` and ``--store-url`` after
the verb, as ``serve`` takes them.  Declared once here so the two read alike;
light on imports, since every command's parser is built on each start.
"""

from __future__ import annotations

import argparse
from typing import Any

# (argparse dest, the setting it sets)
_STORE_OPTIONS = (("store_path", "store.path"), ("store_url", "store.url"))


def add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", help="TOML config file")
    parser.add_argument("--store-path", metavar="PATH", help="the SQLite file (store.path)")
    parser.add_argument("--store-url", metavar="URL", help="the PostgreSQL URL (store.url)")


def store_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the options name, for ``load_settings(flags=...)``."""
    return {key: value for dest, key in _STORE_OPTIONS if (value := getattr(args, dest, None))}
