"""Two hundred requests of each kind that ends differently at its deadline (a
hook_before fails, an ask is declined), each raced by whatever can end or
move it at once: a socket reply, a REST reply, a reassignment and its own
deadline.  Whoever wins, every request ends exactly once (one counted reply,
or its deadline's outcome, never both), every task ends, and the audit trail
tells the same story as the task records (and, for an ask, as what its
worker was told).  Nothing here measures time: the replies are spread across
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


# Asks end the other way at their deadline: declined (as an operator's
# decline), not failed.  Raced in larger batches than the hooks: each batch
# waits for its deadline once.
ASK_RACES = 200
ASK_BATCH = 50
ASKING = {
    "role": "main",
    "deadlines": {"ask": {"deadline_s": DEADLINE, "on_timeout": "decline"}},
}


class AskSeat(Seat):
    """An operator socket that approves every hook at once and holds every
    spawn (its worker asks from it); the asks it is sent wait to be raced."""

    def __init__(self, ws: ClientWebSocketResponse) -> None:
        super().__init__(ws)
        self.spawns: dict[str, dict[str, Any]] = {}
        self.spawned = asyncio.Condition()
        self.asks: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def read(self) -> None:
        while not self.ws.closed:
            try:
                frame = await recv(self.ws, timeout=60)
            except (TypeError, ConnectionError, asyncio.CancelledError):
                return
            kind = frame["type"]
            if kind == "hook_before":
                await self.ws.send_json({"type": "hook_ack", "req_id": frame["req_id"], "ok": True})
            elif kind == "spawn":
                async with self.spawned:
                    self.spawns[frame["task_id"]] = frame
                    self.spawned.notify_all()
            elif kind == "ask":
                await self.asks.put(frame)
            elif kind in ("cancel", "error") and frame.get("req_id"):
                self.told.setdefault(frame["req_id"], []).append(
                    frame.get("reason") or frame["code"]
                )

    async def spawn_of(self, task_id: str) -> dict[str, Any]:
        async with self.spawned:
            await asyncio.wait_for(self.spawned.wait_for(lambda: task_id in self.spawns), 5)
            return self.spawns[task_id]


async def _race_ask(
    client: TestClient[Any, Any], main: Seat, key: str, i: int, req_id: str
) -> dict[str, Any]:
    """As ``_race``, on an ask: the socket and REST replies answer it with a
    value of their own, or decline it (some of each).  An ask whose deadline
    came while its batch was still being set up (a slow machine) is not
    raced: its deadline won alone."""
    resp = await client.get(f"/v1/requests/{req_id}", headers=ADMIN)
    if resp.status == 404:
        return {}
    assert resp.status == 200, await resp.text()
    deadline_at = datetime.fromisoformat((await resp.json())["deadline_at"]).timestamp()
    delay = max(0.0, deadline_at + SPREAD[i % len(SPREAD)] - time.time())

    def answer(by: str) -> dict[str, Any]:
        if i % 5 == (0 if by == "socket" else 1):
            return {"type": "answer", "req_id": req_id, "value": None, "error": f"{by} says no"}
        return {"type": "answer", "req_id": req_id, "value": f"{by}-{i}"}

    async def by_socket() -> str:
        await asyncio.sleep(delay)
        if not main.ws.closed:
            await main.ws.send_json(answer("socket"))
        return "sent"

    async def by_rest() -> int:
        await asyncio.sleep(delay)
        status, _ = await post_reply(client, req_id, answer("rest"), key)
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


async def _worker_ask(client: TestClient[Any, Any], spawn: dict[str, Any]) -> dict[str, Any]:
    """The spawn's worker asks its senior and waits for what the engine decides."""
    resp = await client.post(
        "/v1/worker/ask",
        json={"question": "which branch?", "timeout_s": 30},
        headers={"Authorization": f"Bearer {spawn['worker_handle']}"},
    )
    assert resp.status == 200, await resp.text()
    settled: dict[str, Any] = await resp.json()
    return settled


async def test_asks_declined_at_their_deadline_race_replies_and_moves_and_each_ends_once(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    key = (await make_key(client, "operate:*", name="racer"))["key"]
    sid, token = await mint(client, ["main"])
    main = AskSeat(await connect(client, sid, token))
    sid, token = await mint(client, ["alt"])
    alt = AskSeat(await connect(client, sid, token))
    readers = [asyncio.ensure_future(seat.read()) for seat in (main, alt)]

    made: list[tuple[str, str]] = []  # (task_id, req_id) of each raced ask
    outcomes: dict[str, dict[str, Any]] = {}
    seen: dict[str, dict[str, Any]] = {}  # req_id -> what the worker was told
    for start in range(0, ASK_RACES, ASK_BATCH):
        batch = []
        for _ in range(ASK_BATCH):
            resp = await client.post(
                "/v1/tasks",
                json={"agent": "coder", "directive": "x", "operator": ASKING},
                headers=ADMIN,
            )
            assert resp.status == 202, await resp.text()
            batch.append((await resp.json())["id"])
        spawns = {task_id: await main.spawn_of(task_id) for task_id in batch}
        workers = {
            task_id: asyncio.ensure_future(_worker_ask(client, spawn))
            for task_id, spawn in spawns.items()
        }
        asks = {}
        while len(asks) < ASK_BATCH:
            ask = await asyncio.wait_for(main.asks.get(), 5)
            asks[ask["task_id"]] = ask["req_id"]
        assert set(asks) == set(batch)
        pairs = [(task_id, asks[task_id]) for task_id in batch]
        made += pairs
        raced = await asyncio.gather(
            *(
                _race_ask(client, main, key, start + n, req_id)
                for n, (_, req_id) in enumerate(pairs)
            )
        )
        for (task_id, req_id), result in zip(pairs, raced, strict=True):
            outcomes[req_id] = result
            assert result.get("rest", 200) in (200, 404, 409), result
            assert result.get("reassign", 200) in (200, 404, 409), result
            seen[req_id] = await workers[task_id]
            # The worker has its answer: its work ends, and so does the task.
            done = {"type": "spawn_ack", "req_id": spawns[task_id]["req_id"], "value": "done"}
            await main.ws.send_json(done)

    tasks = {task_id: await wait_task(client, task_id, wait=30) for task_id, _ in made}
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)

    counted = {"answered": 0, "declined": 0, "timeout": 0}
    for task_id, req_id in made:
        task = tasks[task_id]
        assert task["status"] == "passed", task  # a declined ask fails nothing
        events = await read_all(await client.get(f"/v1/tasks/{task_id}/events", headers=ADMIN))
        replies = [e.data for e in events if e.type == "reply" and e.data["req_id"] == req_id]
        [recorded] = task["attempts"][0]["asks"]
        timed_out = recorded["status"] == "declined" and recorded["declined"].endswith(
            "(on_timeout: decline)"
        )
        rows = [e for e in await audit(client, task_id=task_id) if e.get("req_id") == req_id]
        decided = [e for e in rows if e["action"] in ("ask.answered", "ask.declined")]
        moves = [e for e in rows if e["action"] == "request.reassigned"]
        told = seen[req_id]
        where = (req_id, outcomes[req_id], recorded, told, replies, decided)
        # Ended exactly once: one counted reply, or its deadline's decline, never both.
        assert len(replies) + timed_out == 1, where
        # The audit agrees: one deciding row for a reply, of its kind; none for the deadline.
        assert len(decided) == len(replies), where
        # What the worker was told is what the task records.
        if recorded["status"] == "answered":
            assert told == {"ask_id": recorded["ask_id"], "value": recorded["answer"]}, where
            assert [e["action"] for e in decided] == ["ask.answered"], where
            counted["answered"] += 1
        else:
            assert recorded["status"] == "declined", where
            assert told == {"ask_id": recorded["ask_id"], "declined": recorded["declined"]}, where
            if timed_out:
                counted["timeout"] += 1
            else:
                assert [e["action"] for e in decided] == ["ask.declined"], where
                assert recorded["declined"] == decided[0]["reason"], where
                counted["declined"] += 1
        # One reassigned row for each move that was granted, and only those.
        assert len(moves) == (outcomes[req_id].get("reassign") == 200), where
        if outcomes[req_id].get("rest") == 200:
            assert decided and decided[0]["principal"] == "key:racer", where
    # Every way of ending was raced: answers, operators' declines, deadlines.
    assert all(counted.values()), counted
    await main.ws.close()
    await alt.ws.close()
