"""The W3C trace context as it travels in frames, prompts and headers.

Declared once for the server and the clients: a ``spawn``, ``ask``,
``hook_before`` or ``hook_after`` frame, and a worker's prompt, may carry
``trace: {"traceparent": ..., "tracestate"?: ...}`` — the context of the
request (or spawn) it belongs to, so whoever does the work continues the
task's trace.  The values are the W3C Trace Context header values
(https://www.w3.org/TR/trace-context/); a process given one passes it on as
the ``traceparent`` / ``tracestate`` headers of its own HTTP calls, and a
sub-agent sees it as ``TRACEPARENT`` / ``TRACESTATE`` in its environment.
Absent when the server does not trace.
"""

from __future__ import annotations

from collections.abc import Mapping

from marshmallow import Schema, fields, validate

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# The environment of a sub-agent started by ``operator-server operator --exec``.
ENV_OF = {TRACEPARENT: "TRACEPARENT", TRACESTATE: "TRACESTATE"}
# W3C: 55 characters for version 00; later versions may append fields.
MAX_TRACEPARENT = 512
MAX_TRACESTATE = 512


class TraceContextSchema(Schema):
    traceparent = fields.String(required=True, validate=validate.Length(min=1, max=MAX_TRACEPARENT))
    tracestate = fields.String(validate=validate.Length(max=MAX_TRACESTATE))


def trace_env(carrier: Mapping[str, str] | None) -> dict[str, str]:
    """A frame's ``trace`` as the environment variables a sub-agent reads."""
    if not carrier:
        return {}
    return {ENV_OF[key]: value for key, value in carrier.items() if key in ENV_OF and value}


def trace_headers(carrier: Mapping[str, str] | None) -> dict[str, str]:
    """The W3C context in ``carrier`` (a frame's ``trace``, or HTTP headers,
    looked up as given: aiohttp's are case-insensitive) as HTTP headers."""
    if not carrier:
        return {}
    return {key: value for key in ENV_OF if (value := carrier.get(key))}
