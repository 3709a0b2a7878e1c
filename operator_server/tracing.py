"""OpenTelemetry traces: one trace per task, across every hop (``[tracing]``).

Owns the tracer provider (built at start-up, flushed and shut down last on the
way down, ``app.py``) and every span the daemon makes:

* ``task`` — created (``POST /v1/tasks``, or taken back after a restart) to
  ended, its outcome as ``task.status`` (and the span's status ``ERROR`` with
  the error code for a failed or blocked task).  A ``traceparent`` header on the create
  makes it a child of the caller's span.
* ``attempt <n>`` — a child of its task, current in the task's run while the
  attempt is dispatched, so each operator request issued for it is its child.
* ``<kind>`` (``ask``, ``hook_before``, ``hook_after``, ``spawn``) — a request
  to an operator, issued to replied: kind, session, roles, who answered (a
  principal name) and by which path.  Never the question, the answer, the
  result or a credential: what events leave out, spans leave out.
* ``worker <verb>`` (``prompt``, ``ask``, ``result``) — an HTTP call from a
  sub-agent; a child of the ``traceparent`` it sends (the spawn's context, as
  the spawn frame and the prompt carry it), else of its attempt.
* ``store commit`` — one group commit of the store: a trace of its own (one
  commit serves many tasks), timed from the store's own clock.
* ``cluster call <method>`` — a call to the node that owns a task, and the
  owner's handling of it, joined by the context the call carries.

Spans live in memory, keyed by task id, attempt and ``req_id``: a restart loses
the spans in flight (a recovered task starts a new ``task`` span, marked
``task.recovered``).  Off (the default) is ``NoTracing``: no provider, no
exporter, and every hook returns at once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from operator_server.config import Settings, TracingSettings
from operator_server.errors import CodedError
from operator_server.logs import get_logger
from operator_server.wire.trace import MAX_TRACESTATE, TRACESTATE

log = get_logger(__name__)
PROPAGATOR = TraceContextTextMapPropagator()
# The OTLP/HTTP path of traces, added to an endpoint given as a bare host.
TRACES_PATH = "/v1/traces"
# Ends whose span is an ``ERROR``: the work was not done, for a reason (a
# cancel or a halt is somebody's decision, not an error).
_FAILED = frozenset({"failed", "blocked", "interrupted"})


def traces_url(endpoint: str) -> str:
    """``otlp_endpoint`` as the exporter's URL: ``http://host:4318`` gets
    ``/v1/traces`` (as ``OTEL_EXPORTER_OTLP_ENDPOINT`` does); a path is kept."""
    return endpoint.rstrip("/") + TRACES_PATH if urlsplit(endpoint).path in ("", "/") else endpoint


def build_provider(settings: Settings, processor: SpanProcessor | None = None) -> TracerProvider:
    """The SDK provider of ``[tracing]``: ``service.name`` and the node's id as
    resource attributes, ``ParentBased(TraceIdRatioBased(sampling_ratio))``, and
    ``processor`` (default: batches to the OTLP/HTTP exporter, which reads the
    ``OTEL_EXPORTER_OTLP_*`` variables for what the config leaves empty)."""
    conf: TracingSettings = settings.tracing
    resource = Resource.create(
        {
            "service.name": conf.service_name,
            "service.instance.id": settings.node_id,
            "operator_server.node_id": settings.node_id,
        }
    )
    provider = TracerProvider(
        resource=resource, sampler=ParentBased(TraceIdRatioBased(conf.sampling_ratio))
    )
    if processor is None:
        # Imported here: its protobuf and requests stack loads only when tracing is on.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = traces_url(conf.otlp_endpoint) if conf.otlp_endpoint else None
        processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))
    provider.add_span_processor(processor)
    return provider


def carrier_of(span: Span) -> dict[str, str] | None:
    """The W3C context (``traceparent``, ``tracestate``) that continues ``span``.
    A caller's ``tracestate`` longer than a frame carries (``MAX_TRACESTATE``)
    is left out, as W3C lets a participant drop it: kept, it would make every
    client refuse the frame, and the task would wait for an answer nobody read."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
    if len(carrier.get(TRACESTATE, "")) > MAX_TRACESTATE:
        del carrier[TRACESTATE]
    return carrier or None


def context_from(carrier: Mapping[str, str] | None) -> otel_context.Context | None:
    """The caller's context from W3C headers; None when they hold none that is valid."""
    if not carrier:
        return None
    found = PROPAGATOR.extract(carrier)
    return found if trace.get_current_span(found).get_span_context().is_valid else None


class Tracing:
    """Every span the daemon makes, keyed by what it is about."""

    enabled = True

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("operator_server")
        self._tasks: dict[str, Span] = {}
        self._attempts: dict[str, Span] = {}  # task id -> its current attempt's span
        self._requests: dict[str, Span] = {}  # req_id -> its span, issued to replied
        self._spawns: dict[str, str] = {}  # task id -> the req_id of its open spawn

    # -- tasks and attempts ------------------------------------------------

    def task_created(
        self,
        task_id: str,
        agent: str,
        kind: str,
        parent: Mapping[str, str] | None = None,
        *,
        recovered: bool = False,
    ) -> None:
        """``parent``: the creator's W3C headers (``traceparent``, ``tracestate``)."""
        if task_id in self._tasks:
            return
        attributes: dict[str, Any] = {"task.id": task_id, "task.agent": agent, "task.kind": kind}
        if recovered:
            attributes["task.recovered"] = True
        self._tasks[task_id] = self.tracer.start_span(
            "task", context=context_from(parent) or otel_context.Context(), attributes=attributes
        )

    def task_ended(self, task_id: str, status: object, error: CodedError | None) -> None:
        """``status``: how it ended (a ``TaskStatus``); ``error``: why, if it failed."""
        span = self._tasks.pop(task_id, None)
        if span is not None:
            _outcome(span, "task.status", status, error)
            span.end()

    def task_let_go(self, task_id: str) -> None:
        """Another node runs the task now: its spans here end, saying so."""
        for spans in (self._attempts, self._tasks):
            span = spans.pop(task_id, None)
            if span is not None:
                span.set_attribute("task.let_go", True)
                span.end()

    @contextlib.contextmanager
    def running(self, task_id: str) -> Iterator[None]:
        """The task's span is current in its run (its log lines carry its ids)."""
        span = self._tasks.get(task_id)
        if span is None:
            yield
            return
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield
        finally:
            otel_context.detach(token)

    @contextlib.contextmanager
    def attempt(self, task_id: str, number: int) -> Iterator[None]:
        """Start attempt ``number``'s span and make it current while the
        attempt is dispatched (the caller's task, for what it awaits and spawns);
        ``attempt_ended`` ends it once its end is applied."""
        parent = self._tasks.get(task_id)
        span = self.tracer.start_span(
            f"attempt {number}",
            context=trace.set_span_in_context(parent) if parent else None,
            attributes={"task.id": task_id, "attempt": number},
        )
        previous = self._attempts.pop(task_id, None)
        if previous is not None:  # never ended (its end was not applied): close it
            previous.end()
        self._attempts[task_id] = span
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield
        finally:
            otel_context.detach(token)

    def attempt_ended(self, task_id: str, status: object, error: CodedError | None) -> None:
        span = self._attempts.pop(task_id, None)
        if span is not None:
            _outcome(span, "attempt.status", status, error)
            span.end()

    # -- operator requests -------------------------------------------------

    def request_issued(
        self, kind: str, req_id: str, task_id: str, sid: str, roles: list[str]
    ) -> dict[str, str] | None:
        """A request to an operator is issued (a child of the current context:
        the attempt, or the worker call that asked); the W3C context its frame
        carries so the operator continues the trace."""
        span = self.tracer.start_span(
            kind,
            kind=SpanKind.PRODUCER,
            attributes={
                "request.kind": kind,
                "request.id": req_id,
                "task.id": task_id,
                "operator.session": sid,
                "operator.roles": list(roles),
            },
        )
        self._requests[req_id] = span
        if kind == "spawn":
            self._spawns[task_id] = req_id
        return carrier_of(span)

    def request_replied(self, req_id: str, kind: str, principal: str, via: str) -> None:
        """Who answered (a principal's name) and by which path: never the answer."""
        span = self._requests.get(req_id)
        if span is not None:
            span.set_attributes(
                {"reply.kind": kind, "reply.principal": principal, "reply.via": str(via)}
            )

    def request_ended(self, req_id: str, task_id: str, outcome: str) -> None:
        """``outcome``: replied, timed_out, cancelled, or failed."""
        span = self._requests.pop(req_id, None)
        if self._spawns.get(task_id) == req_id:
            del self._spawns[task_id]
        if span is not None:
            span.set_attribute("request.outcome", outcome)
            if outcome == "failed":
                span.set_status(Status(StatusCode.ERROR, outcome))
            span.end()

    # -- worker calls --------------------------------------------------------

    def work_context(self, task_id: str) -> dict[str, str] | None:
        """What a sub-agent's prompt carries: the task's open spawn, else its attempt."""
        span = self._requests.get(self._spawns.get(task_id, "")) or self._attempts.get(task_id)
        return carrier_of(span) if span is not None else None

    @contextlib.contextmanager
    def worker_call(
        self, verb: str, task_id: str, attempt: int, headers: Mapping[str, str]
    ) -> Iterator[None]:
        """A sub-agent's call, current while it is served: a child of the
        ``traceparent`` it sent (the prompt's context: its spawn, or its own
        span under it), else of its attempt — a worker that sends none is
        still in the task's trace."""
        parent = context_from(headers)
        if parent is None:
            span = self._attempts.get(task_id)
            parent = trace.set_span_in_context(span) if span is not None else None
        with self._failing_as_code(
            f"worker {verb}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"worker.call": verb, "task.id": task_id, "attempt": attempt},
        ):
            yield

    # -- the store and the cluster -----------------------------------------

    def store_committed(self, seconds: float, store: str) -> None:
        """One group commit, from the store's thread: a root span of its own,
        timed after the fact."""
        end = time.time_ns()
        span = self.tracer.start_span(
            "store commit",
            context=otel_context.Context(),
            kind=SpanKind.CLIENT,
            attributes={"db.system": store},
            start_time=end - int(seconds * 1e9),
        )
        span.end(end_time=end)

    def call_context(self) -> dict[str, str] | None:
        """The current context, for a message to another node."""
        span = trace.get_current_span()
        return carrier_of(span) if span.get_span_context().is_valid else None

    @contextlib.contextmanager
    def cluster_call(
        self,
        method: str,
        node: str,
        carrier: Mapping[str, str] | None = None,
        *,
        parent: Mapping[str, str] | None = None,
    ) -> Iterator[None]:
        """A call to ``node`` (``carrier`` None: made here, as a child of the
        current span or of ``parent``), or one served here for it (``carrier``:
        the caller's context, from its message)."""
        serving = carrier is not None
        with self._failing_as_code(
            f"cluster call {method}",
            context=context_from(carrier if serving else parent),
            kind=SpanKind.SERVER if serving else SpanKind.CLIENT,
            attributes={"cluster.method": method, "cluster.peer": node},
        ):
            yield

    @contextlib.contextmanager
    def _failing_as_code(self, name: str, **how: Any) -> Iterator[None]:
        """A current span whose failure says its error code, never the
        exception's message or traceback (a message may quote a worker's
        question or value)."""
        with self.tracer.start_as_current_span(
            name, record_exception=False, set_status_on_exception=False, **how
        ) as span:
            try:
                yield
            except Exception as exc:
                code = exc.code if isinstance(exc, CodedError) else type(exc).__name__
                span.set_status(Status(StatusCode.ERROR, str(code)))
                raise

    # -- lifecycle -----------------------------------------------------------

    def shutdown(self) -> None:
        """End what is still open (the process stops: a restart starts them
        anew), then flush every span to the exporter."""
        for spans in (self._requests, self._attempts, self._tasks):
            for span in spans.values():
                span.set_attribute("shutdown", True)
                span.end()
            spans.clear()
        self._spawns.clear()
        self.provider.shutdown()


class NoTracing(Tracing):
    """``[tracing] enabled = false``: nothing installed, and every hook does
    nothing (the hot path pays one call that returns)."""

    enabled = False

    def __init__(self) -> None:
        pass

    def task_created(self, *_: Any, **__: Any) -> None:
        return None

    def task_ended(self, *_: Any) -> None:
        return None

    def task_let_go(self, *_: Any) -> None:
        return None

    @contextlib.contextmanager
    def running(self, *_: Any) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def attempt(self, *_: Any) -> Iterator[None]:
        yield

    def attempt_ended(self, *_: Any) -> None:
        return None

    def request_issued(self, *_: Any) -> dict[str, str] | None:
        return None

    def request_replied(self, *_: Any) -> None:
        return None

    def request_ended(self, *_: Any) -> None:
        return None

    def work_context(self, *_: Any) -> dict[str, str] | None:
        return None

    @contextlib.contextmanager
    def worker_call(self, *_: Any) -> Iterator[None]:
        yield

    def store_committed(self, *_: Any) -> None:
        return None

    def call_context(self) -> dict[str, str] | None:
        return None

    @contextlib.contextmanager
    def cluster_call(self, *_: Any, **__: Any) -> Iterator[None]:
        yield

    def shutdown(self) -> None:
        return None


def start_tracing(settings: Settings) -> Tracing:
    """The daemon's tracing: ``NoTracing`` unless ``[tracing] enabled``."""
    if not settings.tracing.enabled:
        return NoTracing()
    provider = build_provider(settings)
    log.info("tracing on", service_name=settings.tracing.service_name)
    return Tracing(provider)


def _outcome(span: Span, key: str, status: object, error: CodedError | None) -> None:
    """The end's status, its error code (never its message: it may quote the
    worker), and ``ERROR`` for an end that did not do the work."""
    text = str(status)
    span.set_attribute(key, text)
    code = None if error is None else str(error.code)
    if code is not None:
        span.set_attribute("error.code", code)
    if text in _FAILED:
        span.set_status(Status(StatusCode.ERROR, code or text))
