"""One worker handle cannot grow its attempt without end: asks, questions and
results are bounded per attempt, over real HTTP and a real operator socket."""

from __future__ import annotations

from typing import Any

from tests.conftest import Server, wait_task
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
