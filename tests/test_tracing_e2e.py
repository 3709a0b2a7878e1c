"""One task traced across processes: a real daemon exports its spans over
OTLP/HTTP, the terminal operator runs an ``--exec`` sub-agent, and the trace
they make together is read back from the wire.

The receiver below stands in for an OpenTelemetry collector: it is a plain
aiohttp server on ``/v1/traces`` that keeps each ``ExportTraceServiceRequest``
it is sent, decoded with the OpenTelemetry proto package as a collector would.
"""

from __future__ import annotations

import asyncio
import gzip
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from operator_server.client import TaskClient
from operator_server.client.operator import OperatorClient
from operator_server.client.tracecontext import continued
from tests.processes import started
from tests.test_daemon import free_port, start_daemon

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
ANSWER = "squash it"

# The sub-agent, as a script in any language would be: it reads TRACEPARENT and
# sends it back with each call (plain HTTP, no client library), asks the senior
# mid-work, posts its result, and prints the context it was given.
SUB_AGENT = """
import json, os, urllib.request

def call(method, path, body):
    req = urllib.request.Request(
        os.environ["BASE_URL"] + path, data=json.dumps(body).encode(), method=method
    )
    req.add_header("Authorization", "Bearer " + os.environ["WORKER_HANDLE"])
    req.add_header("Content-Type", "application/json")
    req.add_header("traceparent", os.environ["TRACEPARENT"])
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())

answer = call("POST", "/v1/worker/ask", {"question": "merge or squash?", "timeout_s": 20})
call("POST", "/v1/worker/result", {"value": answer["value"]})
print(os.environ["TRACEPARENT"])
"""


class Collector:
    """What the daemon exported, span by span."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.resources: list[dict[str, Any]] = []
        self.node_of: dict[bytes, str] = {}  # span id -> the node_id that exported it

    async def traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            self.resources.append(resource)
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
                for span in scope_spans.spans:
                    self.node_of[span.span_id] = resource["operator_server.node_id"]
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, str]]:
    found = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", found.traces)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield found, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_one_task_is_one_trace_from_its_caller_through_an_exec_sub_agent_and_back(
    collector: tuple[Collector, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found, collector_url = collector
    # The standard variable, as an operator sets it for any OpenTelemetry SDK;
    # ``otlp_endpoint`` is left empty.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector_url)
    daemon = await start_daemon(
        *("--secret", "s", "--log-format", "json"),
        *("--store-path", str(tmp_path / "d.sqlite")),
        *("--tracing-enabled", "true", "--node-id", "node-e2e"),
    )

    async def answer(frame: dict[str, Any]) -> Any:
        return ANSWER

    senior = OperatorClient(daemon.base, roles=["senior"], on_ask=answer)
    await senior.start()
    script = tmp_path / "agent.py"
    script.write_text(SUB_AGENT)
    terminal = started(
        await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "operator_server", "operator", "--url", daemon.base),
            *("--role", "main", "--approve", "all", "--exec", f"{sys.executable} {script}"),
            *("--state-file", str(tmp_path / "op.json")),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    )
    assert terminal.stdout is not None
    assert b"waiting for work" in await asyncio.wait_for(terminal.stdout.readline(), 30)

    # The task's caller, a program that traces: its span is current when it
    # creates the task, and TaskClient sends it as the traceparent.
    caller = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
    async with TaskClient(daemon.base) as tasks:
        with continued(caller):
            task = await tasks.create(
                agent="shell",
                directive="tidy the branch",
                operator={"backend": "main", "spawn_hook": "main", "senior_bridge": "senior"},
            )
        done = await tasks.get(task["id"], wait=30)
    assert done["status"] == "passed", done
    given = done["result"]["value"].strip()  # the TRACEPARENT the sub-agent saw

    terminal.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(terminal.wait(), 30) == 0
    await senior.close()
    daemon.proc.send_signal(signal.SIGTERM)  # its provider flushes every span on the way down
    # Off the loop: the collector here must answer the export while it exits.
    logs = await asyncio.to_thread(daemon.logs)
    assert daemon.proc.returncode == 0

    assert {"service.name": "operator-server"}.items() <= found.resources[0].items()
    assert found.resources[0]["operator_server.node_id"] == "node-e2e"
    ours = [s for s in found.spans if s.trace_id.hex() == CALLER_TRACE]
    by_id = {s.span_id: s for s in ours}

    def parent(span: Span) -> str | None:
        if span.parent_span_id.hex() == CALLER_SPAN:
            return "caller"
        up = by_id.get(span.parent_span_id)
        return up.name if up is not None else None

    shape = {(s.name, parent(s)) for s in ours}
    assert shape == {
        ("task", "caller"),
        ("attempt 1", "task"),
        ("hook_before", "attempt 1"),
        ("spawn", "attempt 1"),
        # The terminal operator's own calls (prompt; the command's stdout as
        # the result) and the sub-agent's, all with the spawn's context.
        ("worker prompt", "spawn"),
        ("worker ask", "spawn"),
        ("ask", "worker ask"),
        ("worker result", "spawn"),
        ("hook_after", "attempt 1"),
    }
    [spawn] = [s for s in ours if s.name == "spawn"]
    assert given == f"00-{CALLER_TRACE}-{spawn.span_id.hex()}-01"
    assert sum(s.name == "worker result" for s in ours) == 2  # the sub-agent's, the terminal's
    # The daemon's log line of the task's end joins the same trace.
    [finished] = [line for line in logs if line.get("event") == "task finished"]
    assert finished["trace_id"] == CALLER_TRACE
