"""Two hundred requests, each raced by whatever can end or move it at once: a
socket reply, a REST reply, a reassignment and its own deadline.  Whoever
wins, every request ends exactly once (one counted reply, or one timeout,
never both), every task ends, and the audit trail tells the same story as
the task records.  Nothing here measures time: the replies are spread across
the deadline only so that some land just before it and some just after."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

from aiohttp import ClientWebSocketResponse
from aiohttp.test_utils import TestClient

from tests.auth.test_keys import BOOT, make_key
from tests.conftest import Server
from tests.http.sse import read_all
from tests.operators.test_requests_rest import audit, mint, post_reply, wait_task
from tests.wsop import connect, recv

ADMIN = {"Authorization": f"Bearer {BOOT}"}
RACES = 200
BATCH = 20  # issued together, then raced together
DEADLINE = 0.4
# When the racers start, in seconds from the request's deadline: a few well
# before it (their replies win), most within milliseconds of it, one after.
SPREAD = (-DEADLINE, -0.2, -0.01, -0.005, -0.002, -0.001, 0.0, 0.0, 0.001, 0.003, 0.05)
# A hook_before fails closed at its deadline; spawns keep the config's.
OPERATOR = {
    "role": "main",
    "deadlines": {"hook_before": {"deadline_s": DEADLINE, "on_timeout": "fail"}},
}


class Seat:
    """One operator socket and the frames it was sent; it approves every
    spawn at once, so an approved hook ends its task as passed."""

    def __init__(self, ws: ClientWebSocketResponse) -> None:
        self.ws = ws
        self.hooks: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.told: dict[str, list[str]] = {}

    async def read(self) -> None:
        while not self.ws.closed:
            try:
                frame = await recv(self.ws, timeout=60)
            except (TypeError, ConnectionError, asyncio.CancelledError):
                return
            kind = frame["type"]
            if kind == "hook_before":
                await self.hooks.put(frame)
            elif kind == "spawn":
                await self.ws.send_json(
                    {"type": "spawn_ack", "req_id": frame["req_id"], "value": "done"}
                )
            elif kind in ("cancel", "error") and frame.get("req_id"):
                self.told.setdefault(frame["req_id"], []).append(
                    frame.get("reason") or frame["code"]
                )


async def _race(
    client: TestClient[Any, Any], main: Seat, key: str, i: int, req_id: str
) -> dict[str, Any]:
    """Race on ``req_id``: which racers run depends on ``i``; they start at an
    offset from the request's own ``deadline_at``, most within milliseconds."""
    resp = await client.get(f"/v1/requests/{req_id}", headers=ADMIN)
    if resp.status == 404:
        # On a busy machine its deadline can come before this look: nothing is
        # left to race, and the checks after the races still hold it to one end.
        return {}
    assert resp.status == 200, await resp.text()
    deadline_at = datetime.fromisoformat((await resp.json())["deadline_at"]).timestamp()
    delay = max(0.0, deadline_at + SPREAD[i % len(SPREAD)] - time.time())

    async def by_socket() -> str:
        await asyncio.sleep(delay)
        if not main.ws.closed:
            await main.ws.send_json({"type": "hook_ack", "req_id": req_id, "ok": i % 2 == 0})
        return "sent"

    async def by_rest() -> int:
        await asyncio.sleep(delay)
        reply = {"type": "hook_ack", "ok": i % 3 != 0, "reason": "rest"}
        status, _ = await post_reply(client, req_id, reply, key)
        return status

    async def by_reassign() -> int:
        await asyncio.sleep(delay * 0.9)
        resp = await client.post(
            f"/v1/requests/{req_id}/reassign", json={"role": "alt"}, headers=ADMIN
        )
        return resp.status

    racers: dict[str, Any] = {}
    if i % 4 != 3:
        racers["socket"] = by_socket()
    if i % 4 != 2:
        racers["rest"] = by_rest()
    if i % 2 == 0 or i % 4 == 3:
        racers["reassign"] = by_reassign()
    results = await asyncio.gather(*racers.values())
    return dict(zip(racers, results, strict=True))


async def test_two_hundred_races_of_socket_rest_reassign_and_deadline_end_each_request_once(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    key = (await make_key(client, "operate:*", name="racer"))["key"]
    seats = []
    for role in ("main", "alt"):
        sid, token = await mint(client, [role])
        seats.append(Seat(await connect(client, sid, token)))
    main, alt = seats
    readers = [asyncio.ensure_future(seat.read()) for seat in seats]

    made: list[tuple[str, str]] = []  # (task_id, req_id) of each raced hook_before
    outcomes: dict[str, dict[str, Any]] = {}
    for start in range(0, RACES, BATCH):
        batch = []
        for _ in range(BATCH):
            resp = await client.post(
                "/v1/tasks",
                json={"agent": "coder", "directive": "x", "operator": OPERATOR},
                headers=ADMIN,
            )
            assert resp.status == 202, await resp.text()
            batch.append((await resp.json())["id"])
        hooks = {}
        while len(hooks) < BATCH:
            hook = await asyncio.wait_for(main.hooks.get(), 5)
            hooks[hook["task_id"]] = hook["req_id"]
        assert set(hooks) == set(batch)
        pairs = [(task_id, hooks[task_id]) for task_id in batch]
        made += pairs
        raced = await asyncio.gather(
            *(_race(client, main, key, start + n, req_id) for n, (_, req_id) in enumerate(pairs))
        )
        for (_, req_id), result in zip(pairs, raced, strict=True):
            outcomes[req_id] = result
            assert result.get("rest", 200) in (200, 404, 409), result
            assert result.get("reassign", 200) in (200, 404, 409), result

    # Every task ends: no request hangs on a reply that was lost.
    tasks = {task_id: await wait_task(client, task_id, wait=30) for task_id, _ in made}
    for task in tasks.values():
        assert task["status"] in ("passed", "failed"), task
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)

    counted = {"reply": 0, "timeout": 0}
    for task_id, req_id in made:
        task = tasks[task_id]
        events = await read_all(await client.get(f"/v1/tasks/{task_id}/events", headers=ADMIN))
        replies = [e.data for e in events if e.type == "reply" and e.data["req_id"] == req_id]
        timed_out = (task["error"] or {}).get("code") == "operator_timeout"
        rows = [e for e in await audit(client, task_id=task_id) if e.get("req_id") == req_id]
        decided = [e for e in rows if e["action"] in ("hook.approved", "hook.rejected")]
        moves = [e for e in rows if e["action"] == "request.reassigned"]
        where = (req_id, outcomes[req_id], task["status"], task["error"], replies, decided)
        # Ended exactly once: one counted reply, or its deadline, never both.
        assert len(replies) + timed_out == 1, where
        # The audit agrees: one deciding row for a reply, none for a timeout.
        assert len(decided) == len(replies), where
        if decided:
            approved = decided[0]["action"] == "hook.approved"
            assert task["status"] == ("passed" if approved else "failed"), where
            counted["reply"] += 1
        else:
            assert task["status"] == "failed", where
            counted["timeout"] += 1
        # One reassigned row for each move that was granted, and only those.
        granted = outcomes[req_id].get("reassign") == 200
        assert len(moves) == granted, where
        # A REST reply that counted is the one deciding row, by the key.
        if outcomes[req_id].get("rest") == 200:
            assert decided and decided[0]["principal"] == "key:racer", where
    # Both ways of ending were raced: early replies win, lone moves time out.
    assert counted["reply"] and counted["timeout"], counted
    await main.ws.close()
    await alt.ws.close()
