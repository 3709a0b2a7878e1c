"""Notifications in a cluster: real daemons on one real PostgreSQL, a receiver
the test runs standing in for a chat service.  What a node that was killed
still owed is sent by a survivor, once, with the key it was cut with; a
task for a covered role nobody holds waits on the node running it, and is
listed, answered and joined from the other."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from tests.notify.receivers import Receiver
from tests.notify.test_delivery import req_ids
from tests.store.test_cluster_requests import HOOKED, ended, listed, reply
from tests.store.test_cluster_routing import create, create_when_ready, mint, next_of
from tests.store.test_postgres_cluster import common, connect, daemons
from tests.test_daemon import Daemon, start_daemon
from tests.wsop import eventually

KEY = "X-Operator-Server-Delivery"
LEASE_S = 1.5


def chat_rule(tmp_path: Path, url: str, role: str = "main") -> Path:
    path = tmp_path / "notify.toml"
    path.write_text(
        "webhook_backoff_s = 0.2\n"
        "webhook_backoff_max_s = 0.4\n"
        "webhook_max_attempts = 100\n"
        f'[[notify]]\nchannel = "chat"\nurl = "{url}"\nroles = ["{role}*"]\nbatch_s = 0\n'
    )
    return path


async def node(pg_url: str, config: Path, name: str) -> Daemon:
    return await start_daemon(*common(pg_url, LEASE_S), "--config", str(config), "--node-id", name)


async def seats(pg_url: str) -> list[str]:
    """The stand-in seats stored, by the node each belongs to."""
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(
            "SELECT token_sha256 FROM operator_sessions "
            "WHERE token_sha256 LIKE 'stand-in:%' ORDER BY 1"
        )
    finally:
        await conn.close()
    return [str(row[0]) for row in rows]


async def eventually_async(condition: Callable[[], Awaitable[Any]], what: str) -> None:
    """Poll an async ``condition`` (a read of the store or of a node) until it holds."""
    for _ in range(1000):
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} did not happen")


async def tries_stored(pg_url: str, tries: int) -> bool:
    """A notification message's stored attempts reached ``tries``."""
    conn = await asyncpg.connect(pg_url)
    try:
        found = await conn.fetchval("SELECT max(attempts) FROM notice_messages")
    finally:
        await conn.close()
    return found is not None and found >= tries


def adopted(d: Daemon) -> int:
    """How many owed messages ``d`` adopted from stopped nodes (it has stopped)."""
    return sum(
        int(str(e["messages"]))
        for e in d.logs()
        if e.get("event") == "adopted the notifications of stopped nodes"
    )


async def test_a_message_a_killed_node_owed_is_delivered_by_one_survivor_with_its_key(
    tmp_path: Path, pg_url: str, aiohttp_server: Any
) -> None:
    receiver = Receiver(fail=1_000_000)  # down: every try of node A's fails
    service = await aiohttp_server(receiver.app())
    config = chat_rule(tmp_path, f"http://127.0.0.1:{service.port}/hook")
    a = await node(pg_url, config, "node-a")
    b = await node(pg_url, config, "node-b")
    c = await node(pg_url, config, "node-c")
    async with daemons(a, b, c), aiohttp.ClientSession() as http:
        op = await mint(http, a)
        ws = await connect(http, a, op)
        await create(http, a, HOOKED)
        hook = await next_of(ws, "hook_before")
        await eventually(lambda: receiver.tries >= 2, what="node A's failed tries")
        (key,) = set(receiver.keys)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        await ws.close()
        receiver.fail = 0

        def delivered(k: str) -> list[dict[str, Any]]:
            pairs = zip(receiver.bodies, receiver.headers, strict=True)
            return [sent for sent, headers in pairs if headers[KEY] == k]

        await eventually(lambda: delivered(key), within=30, what="node A's message, from B or C")
        (body,) = delivered(key)
        assert hook["req_id"] in json.dumps(body)
        # The survivor that takes the task over tells of its next attempt's
        # request in a message of its own: by then A's has gone only once.
        await eventually(
            lambda: any(h[KEY] != key for h in receiver.headers),
            within=30,
            what="the news of the task's next attempt",
        )
        assert len(delivered(key)) == 1
        for d in (b, c):
            d.proc.send_signal(signal.SIGTERM)
        assert [d.proc.wait(timeout=15) for d in (b, c)] == [0, 0]
        # Both heard that A stopped and looked for its rows; one took them.
        assert adopted(b) + adopted(c) == 1


async def test_a_task_for_a_covered_role_nobody_holds_waits_on_its_node_and_is_served_from_another(
    tmp_path: Path, pg_url: str, aiohttp_server: Any
) -> None:
    receiver = Receiver()
    service = await aiohttp_server(receiver.app())
    config = chat_rule(tmp_path, f"http://127.0.0.1:{service.port}/hook", role="approver")
    a = await node(pg_url, config, "node-a")
    b = await node(pg_url, config, "node-b")
    async with daemons(a, b), aiohttp.ClientSession() as http:
        body = {**HOOKED, "operator": {"role": "approver"}}
        first = await create(http, a, body)  # run on A; nobody holds "approver"

        async def pending_on_b() -> list[str]:
            return await listed(http, b.base)

        await eventually_async(pending_on_b, what="the request, listed on B")
        (req_id,) = await pending_on_b()
        # Its seat is no session to open on another node (nor a holder of the role).
        seat = req_id.rsplit("-", 6)[0]
        headers = {"Authorization": "Bearer not-a-token"}
        async with http.get(f"{b.base}/v1/operators/{seat}", headers=headers) as resp:
            assert resp.status == 404, await resp.text()
        await eventually(lambda: receiver.bodies, what="the notification")
        rejected = {"type": "hook_ack", "ok": False, "reason": "from node b"}
        status, _ = await reply(http, b.base, req_id, rejected)
        assert status == 200
        task = await ended(http, b.base, first)
        assert task["status"] == "failed" and "from node b" in task["error"]["message"]

        # The next one waits on A until a session with the role joins on B.
        second = await create(http, a, body)
        await eventually(lambda: len(receiver.bodies) == 2, what="the second notification")
        (waiting_id,) = await pending_on_b()
        async with http.post(f"{b.base}/v1/operators", json={"roles": ["approver"]}) as resp:
            assert resp.status == 201
            op = await resp.json()
        ws = await connect(http, b, op)
        hook = await next_of(ws, "hook_before")
        assert (hook["task_id"], hook["req_id"]) == (second, waiting_id)
        await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": False})
        assert (await ended(http, a.base, second))["status"] == "failed"
        await ws.close()
        # Each request told once, by the node that issued it.
        told = [r for body in receiver.bodies for r in req_ids(body)]
        assert told == [req_id, hook["req_id"]]
        assert await seats(pg_url) == []  # the seat went when its role was held

        # A seat of a node that stops goes with it; the task's next attempt,
        # on the node that takes it over, waits on a seat of that node's.
        third = await create(http, a, {**HOOKED, "operator": {"role": "approver-2"}})
        await eventually_async(pending_on_b, what="the third request")
        (on_a,) = await pending_on_b()
        assert await seats(pg_url) == ["stand-in:node-a"]
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(timeout=15) == 0

        async def reissued_on_b() -> bool:
            listed_now = await pending_on_b()
            return len(listed_now) == 1 and listed_now != [on_a]

        await eventually_async(reissued_on_b, what="the next attempt's request")
        assert await seats(pg_url) == ["stand-in:node-b"]
        async with http.get(f"{b.base}/v1/tasks/{third}") as resp:
            assert len((await resp.json())["attempts"]) == 2


async def test_a_node_frozen_past_its_heartbeat_does_not_send_what_a_live_node_adopted(
    tmp_path: Path, pg_url: str, aiohttp_server: Any
) -> None:
    receiver = Receiver(fail=1_000_000)
    service = await aiohttp_server(receiver.app())
    config = chat_rule(tmp_path, f"http://127.0.0.1:{service.port}/hook")
    a = await node(pg_url, config, "node-a")
    b = await node(pg_url, config, "node-b")
    async with daemons(a, b), aiohttp.ClientSession() as http:
        op = await mint(http, a)
        ws = await connect(http, a, op)
        await create(http, a, HOOKED)
        await next_of(ws, "hook_before")
        await eventually(lambda: receiver.tries >= 2, what="node A's failed tries")
        (key,) = set(receiver.keys)
        # Frozen once its second try is stored, while it waits out its backoff:
        # not in the middle of writing that try, whose open transaction would
        # hold the message's row locked, and B's adoption of it waiting, until
        # A woke (seen in CI about once in three runs).
        await eventually_async(lambda: tries_stored(pg_url, 2), what="node A's second try stored")
        a.proc.send_signal(signal.SIGSTOP)  # its message stays due in its memory
        # A try of A's in flight as it stopped fails too; B's tries (it
        # adopted the message) come after, and the first to succeed is B's.
        stopped_at = receiver.tries
        await eventually(lambda: receiver.tries >= stopped_at + 2, within=30, what="B's tries")
        receiver.fail = 0
        await eventually(lambda: key in sent_keys(receiver), within=30, what="B's delivery")

        a.proc.send_signal(signal.SIGCONT)
        # Its next news is told after it woke and looked at what it had due.
        later = await create_when_ready(http, a, HOOKED)
        hook = await next_of(ws, "hook_before")
        while hook["task_id"] != later:
            hook = await next_of(ws, "hook_before")
        await eventually(
            lambda: any(hook["req_id"] in json.dumps(body) for body in receiver.bodies),
            within=30,
            what="A's news after it woke",
        )
        await ws.close()
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(timeout=15) == 0
        logs = a.logs()
        refused = [
            e
            for e in logs
            if e.get("event") == "notification adopted by another node; not sent here"
        ]
        assert len(refused) == 1
        assert sent_keys(receiver).count(key) == 1


def sent_keys(receiver: Receiver) -> list[str]:
    """The idempotency keys of the messages the receiver took, in order."""
    return [h[KEY] for h in receiver.headers]
