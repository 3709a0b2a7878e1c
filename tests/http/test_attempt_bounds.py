"""One worker handle cannot grow its attempt without end: asks, questions and
results are bounded per attempt, over real HTTP and a real operator socket."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from tests.conftest import Server, engine_of, wait_task
from tests.http.test_worker_ask import auth, post_ask, spawned
from tests.wsop import expect, no_frame


async def test_asks_past_max_asks_per_attempt_are_429_and_nobody_is_asked(
    server: Server,
) -> None:
    client = await server(max_asks_per_attempt=3)
    _, ws, task, spawn = await spawned(client)
    first = await post_ask(client, spawn, 202, question="q0", timeout_s=0, key="k0")
    for n in (1, 2):
        await post_ask(client, spawn, 202, question=f"q{n}", timeout_s=0)
    for _ in range(3):
        await expect(ws, "ask")

    refused = await post_ask(client, spawn, 429, question="one more", timeout_s=0)
    assert refused["error"]["code"] == "attempt_limit"
    assert refused["error"]["limit"] == "max_asks_per_attempt"
    assert refused["error"]["max"] == 3
    # A re-sent ask (same key) is the same ask, not a new one: never refused.
    again = await post_ask(client, spawn, 202, question="q0", timeout_s=0, key="k0")
    assert again["ask_id"] == first["ask_id"]
    await no_frame(ws)

    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "done"})
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed"
    assert [a["question"] for a in done["attempts"][0]["asks"]] == ["q0", "q1", "q2"]


async def test_questions_past_max_ask_bytes_per_attempt_are_413_and_smaller_ones_still_fit(
    server: Server,
) -> None:
    client = await server(max_ask_bytes_per_attempt=4096)
    _, ws, task, spawn = await spawned(client)
    await post_ask(client, spawn, 202, question="x" * 3000, timeout_s=0)
    await expect(ws, "ask")
    refused = await post_ask(client, spawn, 413, question="y" * 3000, timeout_s=0)
    assert refused["error"]["code"] == "attempt_too_large"
    assert refused["error"]["limit"] == "max_ask_bytes_per_attempt"
    await no_frame(ws)
    # Only what was kept counts: a question that fits in what is left is asked.
    await post_ask(client, spawn, 202, question="z" * 500, timeout_s=0)
    assert (await expect(ws, "ask"))["question"] == "z" * 500

    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "done"})
    done = await wait_task(client, task["id"])
    assert [len(a["question"]) for a in done["attempts"][0]["asks"]] == [3000, 500]


async def post_result(
    client: Any, spawn: dict[str, Any], status: int, value: Any, route: str = "result"
) -> dict[str, Any]:
    if route == "result":
        resp = await client.post("/v1/worker/result", json={"value": value}, headers=auth(spawn))
    else:
        resp = await client.post("/v1/worker/submit", data=value, headers=auth(spawn))
    assert resp.status == status, await resp.text()
    out: dict[str, Any] = await resp.json()
    return out


async def test_results_past_max_results_per_attempt_are_429_on_both_routes(
    server: Server,
) -> None:
    client = await server(max_results_per_attempt=2)
    _, ws, task, spawn = await spawned(client)
    await post_result(client, spawn, 200, "first")
    await post_result(client, spawn, 200, "second", route="submit")
    for route in ("result", "submit"):
        refused = await post_result(client, spawn, 429, "third", route=route)
        assert refused["error"]["code"] == "attempt_limit"
        assert refused["error"]["limit"] == "max_results_per_attempt"

    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "ack"})
    done = await wait_task(client, task["id"])
    # The last accepted result decides; the refused ones were never kept.
    assert done["status"] == "passed" and done["result"]["value"] == "second"
    outputs = done["attempts"][0]["outputs"]
    assert [(o["source"], o["value"]) for o in outputs] == [
        ("worker", "first"),
        ("worker", "second"),
        ("ack", "ack"),
    ]


async def test_results_past_max_result_bytes_per_attempt_are_413_and_the_attempt_goes_on(
    server: Server,
) -> None:
    client = await server(max_result_bytes_per_attempt=4096)
    _, ws, task, spawn = await spawned(client)
    await post_result(client, spawn, 200, {"big": "a" * 3000})
    refused = await post_result(client, spawn, 413, {"big": "b" * 3000})
    assert refused["error"]["code"] == "attempt_too_large"
    assert refused["error"]["limit"] == "max_result_bytes_per_attempt"
    refused = await post_result(client, spawn, 413, "c" * 3000, route="submit")
    assert refused["error"]["code"] == "attempt_too_large"

    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "ack"})
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed" and done["result"]["value"] == {"big": "a" * 3000}
    assert len(done["attempts"][0]["outputs"]) == 2  # the worker's one, and the ack


async def test_the_worker_routes_document_413_and_429(server: Server) -> None:
    client = await server()
    paths = (await (await client.get("/v1/openapi.json")).json())["paths"]
    for path in ("/v1/worker/ask", "/v1/worker/result", "/v1/worker/submit"):
        responses = paths[path]["post"]["responses"]
        assert "attempt_too_large" in responses["413"]["description"], path
        assert "attempt_limit" in responses["429"]["description"], path


async def test_an_ask_is_written_on_its_own_and_never_rewrites_its_task(
    server: Server, tmp_path: Path
) -> None:
    """Each ask used to rewrite the task's row with every ask before it (80
    asks of 200 KB: 16 MB of data, gigabytes written); the row must not grow."""
    db = tmp_path / "tasks.sqlite"
    client = await server(store__path=str(db))
    _, ws, task, spawn = await spawned(client)
    store = engine_of(client).store

    def row_size() -> int:
        with closing(sqlite3.connect(db)) as conn:
            found = conn.execute("SELECT length(data) FROM tasks WHERE id = ?", (task["id"],))
            size: int = found.fetchone()[0]
            return size

    sizes = []
    for n in range(4):
        await post_ask(client, spawn, 202, question=f"{n}" * 20_000, timeout_s=0)
        await expect(ws, "ask")
        await store.flush()
        sizes.append(row_size())
    assert max(sizes) - min(sizes) < 1000, sizes

    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "done"})
    done = await wait_task(client, task["id"])
    assert row_size() < 20_000  # the end is written without the asks too
    # ... and read back with them: the task JSON is what it always was.
    assert [a["question"][0] for a in done["attempts"][0]["asks"]] == ["0", "1", "2", "3"]
    assert [a["status"] for a in done["attempts"][0]["asks"]] == ["withdrawn"] * 4
    assert done == await (await client.get(f"/v1/tasks/{task['id']}")).json()


async def test_an_output_is_written_on_its_own_and_never_rewrites_its_task(
    server: Server, tmp_path: Path
) -> None:
    """An attempt's outputs were written inside the task's row at its end, and
    every later write (each end, each retry) rewrote all of them again; the
    row must hold none, and the task JSON still lists them."""
    db = tmp_path / "tasks.sqlite"
    client = await server(store__path=str(db))
    _, ws, task, spawn = await spawned(client)

    def row_size() -> int:
        with closing(sqlite3.connect(db)) as conn:
            found = conn.execute("SELECT length(data) FROM tasks WHERE id = ?", (task["id"],))
            size: int = found.fetchone()[0]
            return size

    # Three big results, then the small one that decides (the row keeps that).
    for n, size in enumerate((20_000, 20_000, 20_000, 10)):
        resp = await client.post(
            "/v1/worker/result", json={"value": f"{n}" * size}, headers=auth(spawn)
        )
        assert resp.status == 200, await resp.text()
        # Answered 200 once on disk: its own row is there already.
        with closing(sqlite3.connect(db)) as conn:
            stored = conn.execute(
                "SELECT count(*) FROM task_outputs WHERE task_id = ?", (task["id"],)
            ).fetchone()[0]
        assert stored == n + 1
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "ack"})
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed"
    assert row_size() < 20_000  # the end is written without the outputs
    outputs = done["attempts"][0]["outputs"]
    assert [(o["source"], o["value"][:1]) for o in outputs] == [
        ("worker", "0"),
        ("worker", "1"),
        ("worker", "2"),
        ("worker", "3"),
        ("ack", "a"),
    ]
    assert done["result"]["value"] == "3" * 10
    assert done == await (await client.get(f"/v1/tasks/{task['id']}")).json()
