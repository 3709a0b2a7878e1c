"""structlog set-up: JSON lines for daemons, readable lines for a terminal.

Context (``task_id``, ``attempt``, ``sid``, ``req_id``) travels in contextvars, so
every line logged while serving a task carries it without being passed around.
The ``_redact`` processor is a last line of defence: values under secret-looking
keys are replaced before rendering, so a token cannot reach the log even by a
careless ``log.info(..., token=...)``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
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


def _trace_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``trace_id`` and ``span_id`` of the span current where the line is
    logged (``[tracing]`` on), so a line and its trace find each other."""
    # Imported here: only a tracing daemon loads the API for its log lines.
    from opentelemetry.trace import get_current_span

    context = get_current_span().get_span_context()
    if context.is_valid:
        event["trace_id"] = format(context.trace_id, "032x")
        event["span_id"] = format(context.span_id, "016x")
    return event


def _json_line(event: MutableMapping[str, Any], **_: Any) -> str:
    """One JSON line by orjson (the daemon writes one per task; the standard
    library took several times as long).  What orjson refuses (an integer past
    64 bits, deep nesting) and any non-ASCII text go through the standard
    library, which escapes to ASCII so a line never depends on stdout's encoding."""
    try:
        text = orjson.dumps(event, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(event, default=repr)
    return text if text.isascii() else json.dumps(event, default=repr)


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    *,
    once: bool = False,
    trace_ids: bool = False,
) -> None:
    """``stream`` defaults to stdout (the daemon's); a process whose stdout is a
    protocol channel (``operator-server mcp``) passes stderr.

    ``once``: this process never configures logging again (the daemon), so each
    logger is built on first use and kept, instead of on every call — four log
    calls per task, most of them filtered ``debug``.  Tests reconfigure, so
    they keep the default.

    ``trace_ids``: each line carries the current span's ``trace_id`` and
    ``span_id`` (the daemon with ``[tracing] enabled``); off, no line pays
    for the look-up."""
    out = sys.stdout if stream is None else stream
    json_lines = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json_line)
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    tracing = [_trace_ids] if trace_ids else []
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *tracing,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=once,
    )
    # aiohttp reports its own trouble through the standard library.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
