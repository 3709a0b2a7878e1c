"""The per-attempt bounds hold when a worker's calls reach the node that does
not run its attempt: two real daemons on one real PostgreSQL."""

from __future__ import annotations

import aiohttp

from tests.store.test_cluster_routing import next_of, spawned, two_nodes
from tests.store.test_postgres_cluster import daemons


async def test_a_bound_is_answered_429_through_the_node_that_does_not_run_the_attempt(
    pg_url: str,
) -> None:
    limits = ("--max-asks-per-attempt", "1", "--max-results-per-attempt", "1")
    a, b = await two_nodes(pg_url, 10, *limits)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        ws, task_id, _, auth = await spawned(http, socket_on=a, task_on=a)
        ask = {"task_id": task_id, "question": "which?", "timeout_s": 0}
        async with http.post(f"{b.base}/v1/worker/ask", json=ask, headers=auth) as resp:
            assert resp.status == 202
        await next_of(ws, "ask")
        # A, which runs the attempt, refuses; B answers what A said.
        async with http.post(f"{b.base}/v1/worker/ask", json=ask, headers=auth) as resp:
            assert resp.status == 429, await resp.text()
            error = (await resp.json())["error"]
        assert error["code"] == "attempt_limit"
        assert (error["limit"], error["max"]) == ("max_asks_per_attempt", 1)
        result = {"task_id": task_id, "value": "v", "ok": True}
        async with http.post(f"{b.base}/v1/worker/result", json=result, headers=auth) as resp:
            assert resp.status == 200
        async with http.post(f"{b.base}/v1/worker/result", json=result, headers=auth) as resp:
            assert resp.status == 429, await resp.text()
            assert (await resp.json())["error"]["limit"] == "max_results_per_attempt"
        await ws.close()
