"""structlog set-up: JSON lines for daemons, readable lines for a terminal.

Context (``task_id``, ``attempt``, ``sid``, ``req_id``) travels in contextvars, so
every line logged while serving a task carries it without being passed around.
The ``_redact`` processor is a last line of defence: values under secret-looking
keys are replaced before rendering, so a token cannot reach the log even by a
careless ``log.info(..., token=...)``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

SECRET_KEYS = frozenset(
    {
        "token",
        "api_token",
        "secret",
        "capability",
        "capability_token",
        "worker_handle",
        "handle",
        "authorization",
    }
)


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in SECRET_KEYS.intersection(event):
        event[key] = "[redacted]"
    return event


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """``stream`` defaults to stdout (the daemon's); a process whose stdout is a
    protocol channel (``operator-server mcp``) passes stderr."""
    out = sys.stdout if stream is None else stream
    json_lines = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # aiohttp reports its own trouble through the standard library.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
