"""``GET /metrics``: every metric present, with the values a scripted run implies."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server, create_task, directory_of, engine_of, wait_task
from tests.wsop import connect, eventually, expect, mint

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

NAMED = [
    "operator_server_tasks_created_total",
    "operator_server_tasks_finished_total",
    "operator_server_tasks",
    "operator_server_attempt_duration_seconds",
    "operator_server_operator_sessions",
    "operator_server_pending_requests",
    "operator_server_request_wait_seconds",
    "operator_server_frames_total",
    "operator_server_error_frames_total",
    "operator_server_http_requests_total",
    "operator_server_http_request_duration_seconds",
    "operator_server_store_commit_seconds",
    "operator_server_slow_peer_disconnects_total",
    "operator_server_node_info",
]


async def scrape(client: TestClient[Any, Any], **headers: str) -> tuple[Samples, set[str]]:
    resp = await client.get("/metrics", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    samples: Samples = {}
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.add(sample.name)
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, names


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_a_scripted_run_shows_in_every_metric(server: Server, tmp_path: Path) -> None:
    client = await server(**{"store.path": str(tmp_path / "s.sqlite")})

    for _ in range(3):  # 3 passed
        task = await create_task(client, agent="echo")
        assert (await wait_task(client, task["id"]))["status"] == "passed"
    gone = await create_task(client, agent="coder", operator={"sid": "op-nobody"})  # 1 failed
    assert (await wait_task(client, gone["id"]))["status"] == "failed"

    sid, token = await mint(client)
    await mint(client)  # a second session, never connected
    ws = await connect(client, sid, token)
    delegated = {"agent": "coder", "operator": {"sid": sid}, "layers": ["operator_delegate"]}
    blocked = await create_task(client, **delegated)
    spawn = await expect(ws, "spawn")
    await ws.send_str("not json")  # one bad frame
    assert (await expect(ws, "error"))["code"] == "bad_json"
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": 0, "ok": False})
    assert (await wait_task(client, blocked["id"]))["status"] == "blocked"  # 1 blocked
    await create_task(client, **delegated)  # left running, its spawn pending
    await expect(ws, "spawn")
    assert (await client.get("/no/such/route")).status == 404

    samples, names = await scrape(client)
    for name in NAMED:
        assert any(n == name or n.startswith(name + "_") for n in names), name

    assert value(samples, "operator_server_tasks_created_total") == 6
    finished = "operator_server_tasks_finished_total"
    assert value(samples, finished, status="passed") == 3
    assert value(samples, finished, status="failed") == 1
    assert value(samples, finished, status="blocked") == 1
    assert value(samples, finished, status="cancelled") == 0
    assert value(samples, "operator_server_tasks", status="passed") == 3
    assert value(samples, "operator_server_tasks", status="running") == 1
    assert value(samples, "operator_server_tasks", status="cancelled") == 0
    assert value(samples, "operator_server_attempt_duration_seconds_count") == 5
    assert value(samples, "operator_server_operator_sessions", connected="true") == 1
    assert value(samples, "operator_server_operator_sessions", connected="false") == 1
    assert value(samples, "operator_server_pending_requests", face="backend") == 1
    assert value(samples, "operator_server_pending_requests", face="senior_bridge") == 0
    assert value(samples, "operator_server_pending_requests", face="spawn_hook") == 0
    assert value(samples, "operator_server_request_wait_seconds_count", face="backend") == 1
    frames = "operator_server_frames_total"
    assert value(samples, frames, direction="out", type="spawn") == 2
    assert value(samples, frames, direction="out", type="error") == 1
    assert value(samples, frames, direction="in", type="spawn_ack") == 1
    assert value(samples, frames, direction="in", type="invalid") == 1
    assert value(samples, "operator_server_error_frames_total", code="bad_json") == 1
    http = "operator_server_http_requests_total"
    assert value(samples, http, route="/v1/tasks", status="202") == 6
    assert value(samples, http, route="/v1/tasks/{task_id}", status="200") == 5
    assert value(samples, http, route="/v1/operators", status="201") == 2
    assert value(samples, http, route="unmatched", status="404") == 1
    duration = "operator_server_http_request_duration_seconds_count"
    assert value(samples, duration, route="/v1/tasks") == 6
    # Label values are route patterns, never ids or raw paths.
    assert not [k for k in samples if any("t-" in v or "op-" in v for _, v in k[1])]
    assert value(samples, "operator_server_slow_peer_disconnects_total") == 0
    # Commits are grouped, so the run's count is not fixed; a quiet store's
    # flush is exactly one more, and the histogram's sum is real time.
    commits = value(samples, "operator_server_store_commit_seconds_count")
    assert commits >= 1
    await engine_of(client).store.flush()
    after, _ = await scrape(client)
    assert value(after, "operator_server_store_commit_seconds_count") == commits + 1
    assert value(after, "operator_server_store_commit_seconds_sum") > 0
    await ws.close()


async def test_a_peer_past_the_queue_cap_counts_as_a_slow_peer_disconnect(
    server: Server,
) -> None:
    client = await server(outbound_queue_max=10)
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    bridge: Any = engine_of(client).resolution.get(sid)
    session = directory_of(client).sessions[sid]
    callers = [asyncio.create_task(bridge.ask(f"t-{i}", i)) for i in range(50)]
    await eventually(lambda: not session.connected, what="cap disconnect")
    samples, _ = await scrape(client)
    assert value(samples, "operator_server_slow_peer_disconnects_total") == 1
    assert value(samples, "operator_server_pending_requests", face="senior_bridge") == 50
    for caller in callers:
        caller.cancel()
    await asyncio.gather(*callers, return_exceptions=True)
    await ws.close()


async def test_metrics_token_guards_the_scrape_when_set(server: Server) -> None:
    client = await server(metrics_token="scrape-me")
    assert (await client.get("/metrics")).status == 401
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    samples, _ = await scrape(client, Authorization="Bearer scrape-me")
    assert value(samples, "operator_server_tasks_created_total") == 0


async def test_each_app_counts_only_its_own_work(server: Server) -> None:
    first = await server()
    second = await server()
    await wait_task(first, (await create_task(first, agent="echo"))["id"])
    assert value((await scrape(first))[0], "operator_server_tasks_created_total") == 1
    assert value((await scrape(second))[0], "operator_server_tasks_created_total") == 0


async def test_metrics_turned_off_count_nothing_and_the_scrape_answers_404(
    server: Server,
) -> None:
    client = await server(metrics=False, metrics_token="scrape-me")
    await wait_task(client, (await create_task(client, agent="echo"))["id"])
    resp = await client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    # Nothing was counted, not merely hidden.
    assert "tasks_created_total 1.0" not in engine_of(client).metrics.exposition().decode()


async def test_a_task_cancelled_before_its_first_attempt_counts_as_finished(
    server: Server,
) -> None:
    client = await server()
    engine = engine_of(client)
    task = await engine.submit(agent="echo", directive="x")
    # Nothing has yielded to the loop since the task was adopted: its run has
    # not taken its first step, so the cancel ends it before any attempt.
    assert await engine.cancel(task.id, "changed my mind")
    done = await wait_task(client, task.id)
    assert done["status"] == "cancelled" and done["attempts"] == []

    samples, _ = await scrape(client)
    finished = "operator_server_tasks_finished_total"
    assert value(samples, finished, status="cancelled") == 1
    assert value(samples, "operator_server_tasks", status="cancelled") == 1
    assert value(samples, "operator_server_tasks", status="pending") == 0
