"""OpenTelemetry traces of a daemon started in this process (``tracing.py``).

The daemon's spans go to the SDK's in-memory exporter; the operators, the
senior and the sub-agent talk to it over real sockets, as they would to a
daemon anywhere.  ``tests/test_tracing_e2e.py`` does the same across processes,
exported over OTLP/HTTP.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from operator_server.app import build_app, listening_on
from operator_server.client import WorkerClient
from operator_server.client.errors import RequestFailed
from operator_server.client.mcp import BridgeOptions, OperatorBridge
from operator_server.client.operator import OperatorClient
from operator_server.config import ConfigError
from operator_server.logs import configure_logging, get_logger
from operator_server.tracing import Tracing, build_provider, traces_url
from tests.conftest import Server, create_task, engine_of, make_settings, wait_task
from tests.wsop import connect, eventually, expect, mint

# What a request, its reply and the work carry: none of it may reach a span.
PROMPT = "prompt-text-d5e1"
QUESTION = {"which": "question-text-7f3a"}
ANSWER = "answer-text-9a1b"
RESULT = "result-text-c44c"
# A caller's span (the W3C spec's own example ids).
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


def test_the_tracing_config_names_what_is_wrong_and_a_bare_endpoint_gets_the_traces_path() -> None:
    assert make_settings().tracing.enabled is False
    with pytest.raises(ConfigError, match=r"tracing\.otlp_endpoint"):
        make_settings(tracing__otlp_endpoint="localhost:4318")
    with pytest.raises(ConfigError, match=r"tracing\.sampling_ratio"):
        make_settings(tracing__sampling_ratio=1.5)
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("https://vendor.example/otlp/v1/traces") == (
        "https://vendor.example/otlp/v1/traces"
    )


Traced = Callable[..., Awaitable[tuple[TestClient[Any, Any], InMemorySpanExporter]]]


@pytest.fixture
def traced(aiohttp_client: Any) -> Traced:
    """``await traced(**settings)`` -> a client bound to a running daemon with
    ``[tracing] enabled``, and the exporter its spans end in."""

    async def start(**overrides: Any) -> tuple[TestClient[Any, Any], InMemorySpanExporter]:
        settings = make_settings(tracing__enabled=True, **overrides)
        spans = InMemorySpanExporter()
        tracing = Tracing(build_provider(settings, SimpleSpanProcessor(spans)))
        app = build_app(settings, tracing=tracing)
        client: TestClient[Any, Any] = await aiohttp_client(app)
        listening_on(app, base(client))
        return client, spans

    return start


def base(client: TestClient[Any, Any]) -> str:
    return str(client.make_url("")).rstrip("/")


def named(spans: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    """Finished spans by name (the store's commits left out: there are many)."""
    return {s.name: s for s in spans.get_finished_spans() if s.name != "store commit"}


def parent_name(span: ReadableSpan, by_name: dict[str, ReadableSpan]) -> str | None:
    if span.parent is None:
        return None
    return next(
        (n for n, s in by_name.items() if s.context.span_id == span.parent.span_id), "<unknown>"
    )


def everything_said(spans: InMemorySpanExporter) -> str:
    """Every name, attribute and event of every span, as one text."""
    said = []
    for span in spans.get_finished_spans():
        said.append(span.name)
        said.append(json.dumps(dict(span.attributes or {}), default=str))
        said.extend(json.dumps(dict(e.attributes or {}), default=str) for e in span.events)
        said.append(str(span.status.description))
    return "\n".join(said)


async def test_a_task_with_hook_spawn_worker_ask_and_result_is_one_trace_of_the_expected_shape(
    traced: Traced, tmp_path: Path
) -> None:
    client, spans = await traced(store__path=str(tmp_path / "t.sqlite"))
    main_sid, main_token = await mint(client, ["main"])
    senior_sid, senior_token = await mint(client, ["senior"])
    main = await connect(client, main_sid, main_token)
    senior = await connect(client, senior_sid, senior_token)
    task = await create_task(
        client,
        agent="shell",
        directive=PROMPT,
        operator={"backend": "main", "spawn_hook": "main", "senior_bridge": "senior"},
    )
    hook = await expect(main, "hook_before")
    assert hook["trace"]["traceparent"].startswith("00-")
    await main.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    spawn = await expect(main, "spawn")
    # The sub-agent, given the spawn's context as the terminal operator gives it.
    async with WorkerClient(base(client), spawn["worker_handle"], trace=spawn["trace"]) as worker:
        prompt = await worker.prompt()
        assert prompt["trace"] == spawn["trace"]
        asking = asyncio.ensure_future(worker.ask(QUESTION, timeout_s=5))
        ask = await expect(senior, "ask")
        assert ask["trace"]["traceparent"] != spawn["trace"]["traceparent"]
        await senior.send_json({"type": "answer", "req_id": ask["req_id"], "value": ANSWER})
        assert await asking == ANSWER
        await worker.result(RESULT)
    await main.send_json({"type": "spawn_ack", "req_id": spawn["req_id"]})
    await expect(main, "hook_after")
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed", done
    await eventually(lambda: {"task", "hook_after"} <= set(named(spans)), what="the task's spans")

    by_name = named(spans)
    shape = {name: parent_name(span, by_name) for name, span in by_name.items()}
    assert shape == {
        "task": None,
        "attempt 1": "task",
        "hook_before": "attempt 1",
        "spawn": "attempt 1",
        "worker prompt": "spawn",
        "worker ask": "spawn",
        "ask": "worker ask",
        "worker result": "spawn",
        "hook_after": "attempt 1",
    }
    assert {s.context.trace_id for s in by_name.values()} == {by_name["task"].context.trace_id}
    # The frames' contexts are the spans themselves.
    assert f"{by_name['spawn'].context.span_id:016x}" in spawn["trace"]["traceparent"]
    assert f"{by_name['ask'].context.span_id:016x}" in ask["trace"]["traceparent"]

    assert by_name["task"].attributes["task.status"] == "passed"
    assert by_name["attempt 1"].attributes["attempt.status"] == "passed"
    spawned = by_name["spawn"].attributes
    assert spawned["operator.session"] == main_sid
    assert tuple(spawned["operator.roles"]) == ("main",)
    assert spawned["reply.kind"] == "spawn_ack"
    assert spawned["reply.via"] == "socket"
    assert spawned["reply.principal"]  # who minted the session that answered
    assert spawned["request.outcome"] == "replied"
    assert by_name["ask"].attributes["operator.session"] == senior_sid
    assert by_name["worker result"].attributes["worker.call"] == "result"

    # Each commit of the SQLite store is a span, a trace of its own.
    commits = [s for s in spans.get_finished_spans() if s.name == "store commit"]
    assert commits and all(s.parent is None for s in commits)
    assert commits[0].attributes["db.system"] == "sqlite"

    said = everything_said(spans)
    secrets = [PROMPT, QUESTION["which"], ANSWER, RESULT, spawn["worker_handle"]]
    secrets += [spawn["capability_token"], main_token, senior_token]
    assert [s for s in secrets if s in said] == []


async def test_a_failed_tasks_spans_are_errors_naming_the_code_and_not_the_reason(
    traced: Traced,
) -> None:
    client, spans = await traced()
    sid, token = await mint(client, ["main"])
    main = await connect(client, sid, token)
    task = await create_task(client, agent="shell", operator={"role": "main"})
    hook = await expect(main, "hook_before")
    reason = "reason-text-0b7e"
    await main.send_json(
        {"type": "hook_ack", "req_id": hook["req_id"], "ok": False, "reason": reason}
    )
    assert (await wait_task(client, task["id"]))["status"] == "failed"
    await eventually(lambda: "task" in named(spans), what="the task's span")
    for name in ("task", "attempt 1"):
        span = named(spans)[name]
        assert span.status.status_code is StatusCode.ERROR, name
        assert span.attributes["error.code"] == "spawn_rejected"
    assert reason not in everything_said(spans)


async def test_a_refused_worker_call_is_an_error_span_that_says_its_code_and_nothing_else(
    traced: Traced,
) -> None:
    client, spans = await traced()
    sid, token = await mint(client, ["main"])
    main = await connect(client, sid, token)
    task = await create_task(client, agent="shell", operator={"backend": "main"})  # no senior
    spawn = await expect(main, "spawn")
    async with WorkerClient(base(client), spawn["worker_handle"]) as worker:
        with pytest.raises(RequestFailed) as refused:
            await worker.ask(QUESTION, timeout_s=1)
    assert refused.value.code == "no_senior"
    await main.send_json({"type": "spawn_ack", "req_id": spawn["req_id"]})
    await wait_task(client, task["id"])
    await eventually(lambda: "task" in named(spans), what="the task's span")
    asked = named(spans)["worker ask"]
    assert asked.status.status_code is StatusCode.ERROR
    assert asked.status.description == "no_senior"
    assert asked.events == ()  # no exception event: its message is not the span's to keep


async def test_a_traceparent_on_post_tasks_makes_the_task_a_child_of_the_callers_span(
    traced: Traced,
) -> None:
    client, spans = await traced()
    header = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
    resp = await client.post("/v1/tasks", json={"agent": "echo", "directive": "x"}, headers=header)
    assert resp.status == 202
    assert (await wait_task(client, (await resp.json())["id"]))["status"] == "passed"
    await eventually(lambda: "task" in named(spans), what="the task's span")
    task = named(spans)["task"]
    assert task.context.trace_id == int(CALLER_TRACE, 16)
    assert task.parent is not None and task.parent.is_remote
    assert task.parent.span_id == int(CALLER_SPAN, 16)
    assert named(spans)["attempt 1"].parent.span_id == task.context.span_id


async def test_a_tracestate_too_long_for_a_frame_is_dropped_and_the_operator_still_reads_it(
    traced: Traced,
) -> None:
    """W3C lets a tracestate run past what a frame carries; passed on whole,
    the client would refuse the spawn and the task wait for nobody."""
    client, spans = await traced()

    async def on_spawn(frame: dict[str, Any]) -> Any:
        async with WorkerClient(base(client), frame["worker_handle"]) as worker:
            await worker.result("done")
        return None

    op = OperatorClient(base(client), roles=["main"], on_spawn=on_spawn)
    await op.start()
    state = ",".join(f"k{n}={'v' * 60}" for n in range(20))  # 1,289 characters
    header = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": state}
    try:
        body = {"agent": "shell", "directive": "x", "operator": {"backend": "main"}}
        resp = await client.post("/v1/tasks", json=body, headers=header)
        assert resp.status == 202
        done = await wait_task(client, (await resp.json())["id"], wait=10)
        assert done["status"] == "passed", done
    finally:
        await op.close()
    await eventually(lambda: "task" in named(spans), what="the task's span")
    assert named(spans)["task"].context.trace_id == int(CALLER_TRACE, 16)


async def test_a_sampling_ratio_of_zero_records_nothing_and_says_so_downstream(
    traced: Traced,
) -> None:
    """``sampling_ratio = 0`` (no caller's decision to follow): no span is
    exported, and the frames tell the operator the trace is not sampled."""
    client, spans = await traced(tracing__sampling_ratio=0.0)
    sid, token = await mint(client, ["main"])
    ws = await connect(client, sid, token)
    task = await create_task(client, agent="echo", directive="x", operator={"spawn_hook": "main"})
    hook = await expect(ws, "hook_before")
    flags = int(hook["trace"]["traceparent"].rsplit("-", 1)[1], 16)
    assert flags & 1 == 0, hook["trace"]  # W3C: the "sampled" bit is off
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    assert (await wait_task(client, task["id"]))["status"] == "passed"
    await ws.close()
    assert spans.get_finished_spans() == ()


async def test_the_service_name_is_the_resource_every_span_carries(traced: Traced) -> None:
    client, spans = await traced(tracing__service_name="ops-eu", node_id="node-7")
    task = await create_task(client, agent="echo", directive="x")
    assert (await wait_task(client, task["id"]))["status"] == "passed"
    await eventually(lambda: "task" in named(spans), what="the task's span")
    resource = dict(named(spans)["task"].resource.attributes)
    assert resource["service.name"] == "ops-eu", resource
    assert "node-7" in resource.values(), resource


async def test_a_malformed_traceparent_is_ignored_and_the_task_starts_its_own_trace(
    traced: Traced,
) -> None:
    client, spans = await traced()
    header = {"traceparent": "00-not-a-trace-01"}
    resp = await client.post("/v1/tasks", json={"agent": "echo", "directive": "x"}, headers=header)
    assert resp.status == 202  # W3C: an unusable traceparent is dropped, not refused
    await wait_task(client, (await resp.json())["id"])
    await eventually(lambda: "task" in named(spans), what="the task's span")
    assert named(spans)["task"].parent is None


async def test_operator_client_runs_a_spawn_handler_in_the_spawns_trace(traced: Traced) -> None:
    """A handler's ``WorkerClient``, given no context, sends the spawn's back."""
    client, spans = await traced()

    async def on_spawn(frame: dict[str, Any]) -> Any:
        async with WorkerClient(base(client), frame["worker_handle"]) as worker:
            await worker.result("done")
        return None

    op = OperatorClient(base(client), roles=["main"], on_spawn=on_spawn)
    await op.start()
    try:
        task = await create_task(client, agent="shell", operator={"backend": "main"})
        assert (await wait_task(client, task["id"]))["status"] == "passed"
    finally:
        await op.close()
    await eventually(lambda: "task" in named(spans), what="the task's span")
    by_name = named(spans)
    assert parent_name(by_name["worker result"], by_name) == "spawn"


async def test_worker_client_continues_the_context_of_its_environment_or_else_its_prompt(
    traced: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, spans = await traced()
    sid, token = await mint(client, ["main"])
    main = await connect(client, sid, token)
    task = await create_task(client, agent="shell", operator={"backend": "main"})
    spawn = await expect(main, "spawn")
    handle = spawn["worker_handle"]
    # A sub-agent started with TRACEPARENT (as ``operator --exec`` starts one).
    monkeypatch.setenv("TRACEPARENT", spawn["trace"]["traceparent"])
    async with WorkerClient(base(client), handle) as worker:
        await worker.prompt()
    # One given nothing: its first call is the attempt's, then it follows the prompt.
    monkeypatch.delenv("TRACEPARENT")
    async with WorkerClient(base(client), handle) as worker:
        await worker.prompt()
        await worker.result("done")
    await main.send_json({"type": "spawn_ack", "req_id": spawn["req_id"]})
    assert (await wait_task(client, task["id"]))["status"] == "passed"
    await eventually(lambda: "task" in named(spans), what="the task's span")
    by_name = named(spans)
    parents = [
        (s.name, parent_name(s, by_name))
        for s in spans.get_finished_spans()
        if s.name.startswith("worker ")
    ]
    assert parents == [
        ("worker prompt", "spawn"),
        ("worker prompt", "attempt 1"),
        ("worker result", "spawn"),
    ]


async def test_tracing_is_off_by_default_and_nothing_carries_a_context(server: Server) -> None:
    client = await server()
    assert engine_of(client).tracing.enabled is False
    # Nothing installed process-wide either: the API's default, not an SDK provider.
    assert not isinstance(trace.get_tracer_provider(), SdkTracerProvider)
    sid, token = await mint(client, ["main"])
    main = await connect(client, sid, token)
    await create_task(client, agent="shell", operator={"backend": "main"})
    spawn = await expect(main, "spawn")
    assert "trace" not in spawn
    async with WorkerClient(base(client), spawn["worker_handle"]) as worker:
        assert "trace" not in await worker.prompt()


async def test_shutdown_flushes_the_spans_still_batched_to_the_exporter(
    aiohttp_client: Any,
) -> None:
    settings = make_settings(tracing__enabled=True)
    spans = InMemorySpanExporter()
    # Batched as the OTLP exporter is, and never sent on a timer: only a flush sends.
    batched = BatchSpanProcessor(spans, schedule_delay_millis=3_600_000)
    client = await aiohttp_client(
        build_app(settings, tracing=Tracing(build_provider(settings, batched)))
    )
    task = await create_task(client, agent="echo")
    assert (await wait_task(client, task["id"]))["status"] == "passed"
    assert spans.get_finished_spans() == ()
    await client.close()  # the app's shutdown
    assert {"task", "attempt 1"} <= set(named(spans))


async def test_the_mcp_bridge_shows_the_context_and_its_worker_tools_continue_it(
    traced: Traced,
) -> None:
    client, spans = await traced()
    bridge = OperatorBridge(BridgeOptions(url=base(client), roles=["main"]))
    bridge.open()
    try:
        await eventually(
            lambda: bridge.client is not None and bridge.client.connected.is_set(),
            what="the bridge's seat",
        )
        task = await create_task(client, agent="coder", operator={"role": "main"})
        hook = await bridge.call("next_request", {"timeout_s": 5})
        assert hook["trace"]["traceparent"]  # an agent sees what it would pass on
        await bridge.call("approve", {"req_id": hook["req_id"]})
        spawn = await bridge.call("next_request", {"timeout_s": 5})
        handle = spawn["worker_handle"]
        await bridge.call("worker_prompt", {"worker_handle": handle})
        await bridge.call("worker_result", {"worker_handle": handle, "value": "hi"})
        await bridge.call("spawn_ack", {"req_id": spawn["req_id"]})
        assert (await wait_task(client, task["id"]))["status"] == "passed"
    finally:
        await bridge.close()
    await eventually(lambda: "task" in named(spans), what="the task's span")
    by_name = named(spans)
    assert parent_name(by_name["worker prompt"], by_name) == "spawn"
    assert parent_name(by_name["worker result"], by_name) == "spawn"


@pytest.fixture
def traced_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The daemon's JSON lines with ``[tracing] enabled``, into a buffer."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    configure_logging("info", "json", trace_ids=True)
    try:
        yield out
    finally:
        structlog.reset_defaults()


async def test_log_lines_carry_the_trace_and_span_of_the_task_they_speak_of(
    traced: Traced, traced_logs: io.StringIO
) -> None:
    client, spans = await traced()
    task = await create_task(client, agent="echo")
    await wait_task(client, task["id"])
    await eventually(lambda: "task" in named(spans), what="the task's span")
    span = named(spans)["task"]
    lines = [json.loads(line) for line in traced_logs.getvalue().splitlines()]
    [finished] = [line for line in lines if line["event"] == "task finished"]
    assert finished["trace_id"] == f"{span.context.trace_id:032x}"
    assert finished["span_id"] == f"{span.context.span_id:016x}"
    # A line outside any span carries neither.
    get_logger("test").info("outside any span")
    [outside] = [json.loads(line) for line in traced_logs.getvalue().splitlines()[len(lines) :]]
    assert "trace_id" not in outside and "span_id" not in outside
