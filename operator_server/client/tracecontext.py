"""The clients' side of tracing: continue the trace a frame or a prompt carries.

Only the OpenTelemetry API's W3C propagator, never the SDK (nor anything of
the server): a program that installs its own SDK gets its spans into the
task's trace, and one that does not still passes the context on unchanged —
the ``traceparent`` it was given is the one its HTTP calls send back, so the
server's spans of those calls join the task's trace either way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

from opentelemetry import context, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from operator_server.wire.trace import ENV_OF, trace_headers

_PROPAGATOR = TraceContextTextMapPropagator()


@contextlib.contextmanager
def continued(carrier: Mapping[str, str] | None) -> Iterator[None]:
    """Make the W3C context in ``carrier`` (a frame's ``trace``) current: a
    task created meanwhile (a handler) runs in it."""
    if not carrier:
        yield
        return
    token = context.attach(_PROPAGATOR.extract(carrier))
    try:
        yield
    finally:
        context.detach(token)


def from_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``TRACEPARENT`` / ``TRACESTATE`` (what ``operator --exec`` gives its
    command) as a carrier; empty when unset."""
    env = os.environ if env is None else env
    return {key: env[name] for key, name in ENV_OF.items() if env.get(name)}


def outgoing(given: Mapping[str, str] | None = None) -> dict[str, str]:
    """The headers an HTTP call sends: the current span's context if there
    is one (the caller traces, or runs in a frame's context), else ``given``,
    else the environment's."""
    if trace.get_current_span().get_span_context().is_valid:
        headers: dict[str, str] = {}
        _PROPAGATOR.inject(headers)
        return headers
    return trace_headers(given) or from_env()
