"""A worker's call that lands on the node not running its task: the call to
the owner node is in the task's trace, on both nodes (two real daemons on one
real PostgreSQL, exporting to the stand-in collector of ``test_tracing_e2e``)."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.store.test_cluster_routing import spawned, two_nodes
from tests.store.test_postgres_cluster import daemons
from tests.test_tracing_e2e import Collector, collector

__all__ = ["collector"]  # the fixture, used by name


async def test_a_worker_call_passed_to_the_owner_node_is_one_trace_across_both_nodes(
    pg_url: str, collector: tuple[Collector, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    found, collector_url = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector_url)
    a, b = await two_nodes(pg_url, 10, "--tracing-enabled", "true")
    async with daemons(a, b), aiohttp.ClientSession() as http:
        ws, task_id, spawn, auth = await spawned(http, socket_on=a, task_on=a)
        # The worker posts to B, with the spawn's context; A runs the attempt.
        headers = {**auth, "traceparent": spawn["trace"]["traceparent"]}
        result = {"task_id": task_id, "value": "v", "ok": True}
        async with http.post(f"{b.base}/v1/worker/result", json=result, headers=headers) as resp:
            assert resp.status == 200
        await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"]})
        async with http.get(f"{b.base}/v1/tasks/{task_id}?wait=15") as resp:
            assert (await resp.json())["status"] == "passed"
        await ws.close()
        for node in (a, b):  # each flushes its spans on the way down
            node.proc.send_signal(signal.SIGTERM)
        for node in (a, b):
            assert await asyncio.to_thread(node.proc.wait, 30) == 0

    trace_id = bytes.fromhex(spawn["trace"]["traceparent"].split("-")[1])
    ours = [s for s in found.spans if s.trace_id == trace_id]
    by_id = {s.span_id: s for s in ours}

    def where(span: Span) -> tuple[str, str, str | None]:
        up = by_id.get(span.parent_span_id)
        return (span.name, found.node_of[span.span_id], up.name if up is not None else None)

    calls = {where(s) for s in ours if s.name in ("worker result", "cluster call worker_result")}
    assert calls == {
        ("worker result", "node-b", "spawn"),
        ("cluster call worker_result", "node-b", "worker result"),
        ("cluster call worker_result", "node-a", "cluster call worker_result"),
    }
    [served] = [
        s for s in ours if s.name == "cluster call worker_result" and s.kind == s.SPAN_KIND_SERVER
    ]
    assert found.node_of[served.span_id] == "node-a"


async def test_a_rest_reply_on_another_node_reaches_the_issuer_inside_the_tasks_trace(
    pg_url: str, collector: tuple[Collector, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task runs on A (its operator's socket is there); the spawn is
    answered over REST on B, which passes the reply to A as a child of the
    request's span (the frame's context), not as a trace of its own.  (The
    collector is named by ``--tracing-otlp-endpoint`` here, where the other
    tests use ``OTEL_EXPORTER_OTLP_ENDPOINT``.)"""
    found, collector_url = collector
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    endpoint = ("--tracing-otlp-endpoint", collector_url)
    a, b = await two_nodes(pg_url, 10, "--tracing-enabled", "true", *endpoint)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        ws, task_id, spawn, auth = await spawned(http, socket_on=a, task_on=a)
        result = {"task_id": task_id, "value": "v", "ok": True}
        async with http.post(f"{a.base}/v1/worker/result", json=result, headers=auth) as resp:
            assert resp.status == 200
        reply = {"type": "spawn_ack"}
        url = f"{b.base}/v1/requests/{spawn['req_id']}/reply"
        async with http.post(url, json=reply) as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(f"{a.base}/v1/tasks/{task_id}?wait=15") as resp:
            assert (await resp.json())["status"] == "passed"
        await ws.close()
        for node in (a, b):
            node.proc.send_signal(signal.SIGTERM)
        for node in (a, b):
            assert await asyncio.to_thread(node.proc.wait, 30) == 0

    trace_id = bytes.fromhex(spawn["trace"]["traceparent"].split("-")[1])
    ours = [s for s in found.spans if s.trace_id == trace_id]
    by_id = {s.span_id: s for s in ours}
    hops = {
        (
            found.node_of[s.span_id],
            by_id[s.parent_span_id].name if s.parent_span_id in by_id else None,
        )
        for s in ours
        if s.name == "cluster call operator_reply"
    }
    assert hops == {("node-b", "spawn"), ("node-a", "cluster call operator_reply")}, hops
