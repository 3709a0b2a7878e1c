"""A node frozen (SIGSTOP) past its leases, then woken (SIGCONT), after the node
that took its tasks over has finished them: the woken node shows the operator
nothing of its stale runs and writes over nothing that was finished.  Buried
meanwhile, it takes back the sockets it still holds."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from operator_server.store import Fenced, TaskEvent
from operator_server.wire.frames import REPLACED_CLOSE_CODE, UNSTORED_CLOSE_CODE
from tests.store.gates import close, gate, open_, until, waiting_at
from tests.store.test_cluster_routing import create_when_ready, until_pong
from tests.store.test_postgres import cut_off_pair, task_record
from tests.store.test_postgres_cluster import common, connect, daemons
from tests.test_daemon import Daemon, start_daemon

TASKS = 5
LEASE_S = 1.5
FREEZE_S = 3 * LEASE_S
# Longer than the freeze: the woken node still waits on the hooks it issued,
# and hears the replies the operator sent meanwhile (so it would go on to
# spawn).  The spawn timeout is short: a stale spawn would time out (and end
# its task) soon after the wake.
HOOK_TIMEOUT_S = 4 * FREEZE_S
SPAWN_TIMEOUT_S = LEASE_S
Seen = list[tuple[float, dict[str, Any]]]


async def hooks_waiting(http: aiohttp.ClientSession, node: Daemon, op: dict[str, Any]) -> list[str]:
    """``TASKS`` tasks on ``node`` for ``op``'s role, each waiting for its first
    ``hook_before`` (shown on the operator's socket there, not answered)."""
    body = {"agent": "coder", "directive": "x", "operator": {"role": "main"}, "max_attempts": 1}
    ids = []
    for _ in range(TASKS):
        async with http.post(f"{node.base}/v1/tasks", json=body) as resp:
            assert resp.status == 202
            ids.append((await resp.json())["id"])
    headers = {"Authorization": f"Bearer {op['token']}"}
    url = f"{node.base}/v1/operators/{op['sid']}/pending"
    for _ in range(200):
        async with http.get(url, headers=headers) as resp:
            pending = (await resp.json())["pending"]
        if len(pending) == TASKS:
            return ids
        await asyncio.sleep(0.05)
    raise AssertionError(f"the hooks were not all issued: {pending}")


async def play_operator(ws: aiohttp.ClientWebSocketResponse, ids: list[str], seen: Seen) -> None:
    """Approve every hook (the frozen node's, replayed here, too) and acknowledge
    the spawn of each task's second attempt, until all of those were sent;
    record every frame with when it came."""
    left = set(ids)
    while left:
        frame = json.loads((await asyncio.wait_for(ws.receive(), 30)).data)
        seen.append((time.monotonic(), frame))
        if frame["type"] == "hook_before":
            await ws.send_json({"type": "hook_ack", "req_id": frame["req_id"], "ok": True})
        elif frame["type"] == "spawn" and frame["attempt"] > 1:
            ack = {"type": "spawn_ack", "req_id": frame["req_id"], "value": frame["task_id"]}
            await ws.send_json(ack)
            left.discard(frame["task_id"])


async def watch(ws: aiohttp.ClientWebSocketResponse, seen: Seen, seconds: float) -> None:
    """Record what the operator is sent for ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            async for msg in ws:
                seen.append((time.monotonic(), json.loads(msg.data)))
    except TimeoutError:
        pass


async def all_passed(http: aiohttp.ClientSession, node: Daemon, ids: list[str]) -> None:
    for task_id in ids:
        async with http.get(f"{node.base}/v1/tasks/{task_id}?wait=15") as resp:
            task = await resp.json()
        assert task["status"] == "passed", task


async def status_events(pg_url: str) -> dict[str, list[str]]:
    """Every task's stored ``status`` events, in order."""
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT id, task_id, data FROM task_events ORDER BY id")
    finally:
        await conn.close()
    found: dict[str, list[str]] = {}
    for row in rows:
        event = TaskEvent.from_stored(row["id"], row["task_id"], json.loads(row["data"]))
        if event.type == "status":
            found.setdefault(event.task_id, []).append(event.status)
    return found


async def test_a_node_woken_after_its_tasks_were_taken_over_and_finished_sends_and_writes_nothing(
    pg_url: str,
) -> None:
    flags = (
        *common(pg_url, LEASE_S),
        "--hook-timeout-s", str(HOOK_TIMEOUT_S),
        "--spawn-timeout-s", str(SPAWN_TIMEOUT_S),
        "--reconnect-grace-s", "60",
    )  # fmt: skip
    a = await start_daemon(*flags, "--node-id", "node-a")
    b = await start_daemon(*flags, "--node-id", "node-b")
    async with daemons(a, b), aiohttp.ClientSession() as http:
        async with http.post(f"{a.base}/v1/operators", json={"roles": ["main"]}) as resp:
            op = await resp.json()
        # Seated on A, so the tasks run there (a task whose operator has no
        # socket anywhere would wait for one, and go where it attaches).
        ws_a = await connect(http, a, op)
        ids = await hooks_waiting(http, a, op)
        a.proc.send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        try:
            # At once, before B buries A: B replays A's hooks and the operator
            # approves them (the replies wait for A in its listener's queue).
            ws = await connect(http, b, op)
            seen: Seen = []
            await asyncio.wait_for(play_operator(ws, ids, seen), 30)
            await all_passed(http, b, ids)
            await asyncio.sleep(max(0.0, frozen + FREEZE_S - time.monotonic()))
        finally:
            a.proc.send_signal(signal.SIGCONT)
        woke = time.monotonic()
        # A's first lease rounds, and past the spawn timeout of any spawn it sent.
        await watch(ws, seen, 2 * LEASE_S + SPAWN_TIMEOUT_S)
        stale = [f for at, f in seen if at >= woke and f["type"] in ("spawn", "hook_before", "ask")]
        assert stale == []  # nothing of A's runs is shown again: no work done twice
        for node in (a, b):
            for task_id in ids:
                async with http.get(f"{node.base}/v1/tasks/{task_id}") as resp:
                    task = await resp.json()
                assert task["status"] == "passed", task
                first, second = task["attempts"]
                assert first["error"]["code"] == "interrupted"
                assert second["status"] == "passed"
                assert task["result"]["value"] == task_id
        for socket in (ws, ws_a):
            await socket.close()
    statuses = await status_events(pg_url)
    for task_id in ids:
        assert statuses[task_id][-1] == "passed", statuses[task_id]  # nothing after the end
        assert statuses[task_id].count("passed") == 1, statuses[task_id]


async def test_a_stale_writer_is_refused_after_the_task_ended_elsewhere_and_its_lease_went(
    pg_url: str,
) -> None:
    async with cut_off_pair(pg_url) as (a, b):
        await a.put_task(task_record("t-1", "running"))
        await asyncio.sleep(0.3)  # a is frozen: no renewal, the lease lapses
        assert [row.key for row in await b.take_over(at_start=False, limit=10)] == ["t-1"]
        await b.put_task(task_record("t-1", "running"))  # b writes at the epoch it took
        await b.put_task(task_record("t-1", "passed"))  # its end drops the lease row
        # a wakes and ends the task it no longer runs: no lease row to stop it,
        # but the task's epoch moved on when b took it.
        with pytest.raises(Fenced, match="taken over"):
            await a.put_task(task_record("t-1", "failed"))
        a.put_task_soon(task_record("t-1", "failed"))
        await a.flush()
        assert (await a.get_task("t-1")).value["status"] == "passed"  # type: ignore[union-attr]


async def stored_socket_node(pg_url: str, sid: str) -> tuple[str | None, bool]:
    """Where the store says ``sid``'s socket is, and whether node A is alive there."""
    conn = await asyncpg.connect(pg_url)
    try:
        node = await conn.fetchval("SELECT socket_node FROM operator_sessions WHERE sid = $1", sid)
        alive = await conn.fetchval(
            "SELECT count(*) FROM cluster_nodes WHERE node_id = 'node-a' AND expires_at > now()"
        )
    finally:
        await conn.close()
    return node, alive == 1


async def until_stored(pg_url: str, sid: str, want: tuple[str | None, bool], what: str) -> None:
    for _ in range(300):
        if await stored_socket_node(pg_url, sid) == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: {await stored_socket_node(pg_url, sid)}")


# Backends of the test's database (not this query's) inside a transaction or
# a statement: a node frozen with one keeps its locks (an "active" one, frozen
# between the messages of a statement, for as long as it is frozen).
BUSY = """
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
      AND state IN ('active', 'idle in transaction')
"""


async def freeze_quiet(db: asyncpg.Connection, node: Daemon, sid: str) -> None:
    """SIGSTOP ``node`` once the attach of ``sid``'s socket there is stored, with
    what follows it (the session's touch, audited), at a moment no transaction
    is open: what a test means by a node frozen between its writes (one frozen
    holding a row is another test's, with gates)."""
    resumed = "SELECT count(*) FROM audit_log WHERE action = 'session.resumed' AND session_id = $1"
    await until(lambda: db.fetchval(resumed, sid))
    for _ in range(500):
        if await db.fetchval(BUSY) == 0:
            node.proc.send_signal(signal.SIGSTOP)
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the nodes never stopped writing")


@dataclasses.dataclass
class Pair:
    """Nodes A and B, an operator minted on A, the test's HTTP client, and a
    connection of its own to the database (for gates)."""

    a: Daemon
    b: Daemon
    op: dict[str, Any]
    http: aiohttp.ClientSession
    db: asyncpg.Connection


@contextlib.asynccontextmanager
async def pair(pg_url: str) -> AsyncIterator[Pair]:
    a = await start_daemon(*common(pg_url, LEASE_S), "--node-id", "node-a")
    b = await start_daemon(*common(pg_url, LEASE_S), "--node-id", "node-b")
    db = await asyncpg.connect(pg_url)
    try:
        async with daemons(a, b), aiohttp.ClientSession() as http:
            async with http.post(f"{a.base}/v1/operators", json={"roles": ["main"]}) as resp:
                op = await resp.json()
            yield Pair(a, b, op, http, db)
    finally:
        await db.close()


@contextlib.asynccontextmanager
async def buried(pg_url: str, p: Pair) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """The operator's socket attached on A, then A frozen and buried by B (its
    sockets unplugged, as a dead node's are) for the block, woken after it."""
    ws = await connect(p.http, p.a, p.op)
    await until_stored(pg_url, p.op["sid"], ("node-a", True), "the socket attached on A")
    await freeze_quiet(p.db, p.a, p.op["sid"])
    try:
        await until_stored(pg_url, p.op["sid"], (None, False), "A buried")
        yield ws
    finally:
        p.a.proc.send_signal(signal.SIGCONT)


async def test_a_node_woken_after_it_was_buried_takes_back_the_sockets_it_holds(
    pg_url: str,
) -> None:
    async with pair(pg_url) as p:
        b, op, http = p.b, p.op, p.http
        async with buried(pg_url, p) as ws:
            pass
        # A beats again, and its socket, open all along, is its again: the
        # store, whose word every node goes by, says so.
        await until_stored(pg_url, op["sid"], ("node-a", True), "the socket back on A")
        async with http.get(
            f"{b.base}/v1/operators/{op['sid']}",
            headers={"Authorization": f"Bearer {op['token']}"},
        ) as resp:
            view = await resp.json()
        assert (view["connected"], view["node"]) == (True, "node-a"), view
        await reaches(http, b, ws)
        await ws.close()


async def reaches(
    http: aiohttp.ClientSession, node: Daemon, ws: aiohttp.ClientWebSocketResponse
) -> dict[str, Any]:
    """Work created on ``node`` for the operator reaches the socket ``ws``: its
    ``hook_before``."""
    body = {"agent": "coder", "directive": "x", "operator": {"role": "main"}}
    task_id = await create_when_ready(http, node, body)
    async with asyncio.timeout(10):
        while (frame := json.loads((await ws.receive()).data)).get("task_id") != task_id:
            pass
    assert frame["type"] == "hook_before"
    return frame


# A's write of the session's row as its socket attaches waits here, in its
# transaction, holding the row: the attach itself (its socket is on A once it
# commits), or the touch that follows a committed attach.
ATTACHING_ON_A = (
    "AFTER UPDATE OF socket_epoch ON operator_sessions FOR EACH ROW "
    "WHEN (NEW.socket_node = 'node-a')"
)
TOUCHED_ON_A = (
    "AFTER UPDATE OF last_seen_at ON operator_sessions FOR EACH ROW "
    "WHEN (NEW.socket_node = 'node-a')"
)


async def touching_the_session(p: Pair) -> aiohttp.ClientWebSocketResponse:
    """A's socket attached, and A's transaction recording it holds the session's row."""
    await gate(p.db, 1, TOUCHED_ON_A)
    await close(p.db, 1)
    return await connect(p.http, p.a, p.op)


async def finishing_a_request(p: Pair) -> aiohttp.ClientWebSocketResponse:
    """A's transaction writing a request answered holds the request's row."""
    ws = await connect(p.http, p.a, p.op)
    await until_pong(ws, "attached")
    hook = await reaches(p.http, p.a, ws)
    await gate(p.db, 1, "AFTER DELETE ON pending_requests FOR EACH ROW")
    await close(p.db, 1)
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": False})
    return ws


@pytest.mark.parametrize("holding", [touching_the_session, finishing_a_request])
async def test_a_node_frozen_holding_a_row_is_buried_and_takes_its_socket_back(
    pg_url: str, holding: Any
) -> None:
    async with pair(pg_url) as p:
        a, b, op, http, db = p.a, p.b, p.op, p.http, p.db
        ws = await holding(p)
        await until(lambda: waiting_at(db, 1))
        a.proc.send_signal(signal.SIGSTOP)
        try:
            # Not waited for: B buries A, its own rounds going on, though
            # A's open transaction holds a row the burial would write.
            buried = "SELECT count(*) = 0 FROM cluster_nodes WHERE node_id = 'node-a'"
            await until(lambda: db.fetchval(buried))
            b_beats = "SELECT expires_at > now() FROM cluster_nodes WHERE node_id = 'node-b'"
            assert await db.fetchval(b_beats)
        finally:
            await open_(db, 1)
            a.proc.send_signal(signal.SIGCONT)
        await until_stored(pg_url, op["sid"], ("node-a", True), "the socket back on A")
        await reaches(http, b, ws)
        await ws.close()


async def closed(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """The close code ``ws`` gets (what it is sent before is skipped)."""
    async with asyncio.timeout(10):
        while (msg := await ws.receive()).type is aiohttp.WSMsgType.TEXT:
            pass
    assert msg.type is aiohttp.WSMsgType.CLOSE, msg
    return ws.close_code


LAPSED = (
    "beating again after this node's leases lapsed; re-reading what changed",
    "leases lapsed; let every run go to whichever node takes it",
)


async def never_lapsed(node: Daemon) -> bool:
    """Stop ``node``: its leases never lapsed, by its own log."""
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(timeout=15) == 0
    return not [e for e in node.logs() if e.get("event") in LAPSED]


async def test_a_node_frozen_mid_attach_holds_another_nodes_attach_up_for_a_lease_at_most(
    pg_url: str,
) -> None:
    async with pair(pg_url) as p:
        a, b, op, http, db = p.a, p.b, p.op, p.http, p.db
        await gate(db, 1, ATTACHING_ON_A)
        await close(db, 1)
        ws_a = await connect(http, a, op)
        await until(lambda: waiting_at(db, 1))
        a.proc.send_signal(signal.SIGSTOP)
        try:
            # A's attach goes on to wait for A itself, which is frozen: its
            # transaction holds the session's row, idle.
            await open_(db, 1)
            # The operator tries B: its attach waits for that row only until
            # PostgreSQL ends the frozen node's transaction (after lease_s).
            ws_b = await connect(http, b, op)
            await until_pong(ws_b, "attached on B")
            await until_stored(pg_url, op["sid"], ("node-b", False), "the socket on B")
        finally:
            a.proc.send_signal(signal.SIGCONT)
        # Woken, A finds its attach was never stored, and has the client try
        # again rather than keep a socket no other node could reach (or take
        # the session back from B's, which may be newer).
        assert await closed(ws_a) == UNSTORED_CLOSE_CODE
        await until_stored(pg_url, op["sid"], ("node-b", True), "A back, the socket on B")
        await reaches(http, a, ws_b)
        await ws_b.close()
        # B renewed on time all along, though its writer waited on A's row.
        assert await never_lapsed(b)


async def test_a_socket_attached_elsewhere_while_its_node_was_buried_stays_the_sessions(
    pg_url: str,
) -> None:
    async with pair(pg_url) as p:
        a, b, op, http = p.a, p.b, p.op, p.http
        async with buried(pg_url, p) as ws_a:
            # The store names no node for the socket: B's attach tells A nothing.
            ws_b = await connect(http, b, op)
            await until_pong(ws_b, "attached on B")
        # Woken, A finds a newer socket than its own stored, and closes its
        # own as replaced, rather than take the session back from it.
        assert await closed(ws_a) == REPLACED_CLOSE_CODE
        await until_stored(pg_url, op["sid"], ("node-b", True), "A back, the socket on B")
        await reaches(http, a, ws_b)
        await ws_b.close()


WAITING_ON_A_LOCK = """
    SELECT count(*) > 0 FROM pg_stat_activity
    WHERE datname = current_database() AND wait_event_type = 'Lock'
"""


async def test_a_node_whose_writes_wait_on_a_lock_for_longer_than_a_lease_renews_on_time(
    pg_url: str,
) -> None:
    async with pair(pg_url) as p:
        a, op, http, db = p.a, p.op, p.http, p.db
        # The test holds the session's row, as a frozen node's transaction
        # would (for longer than a lease, which PostgreSQL lets no node do).
        held = db.transaction()
        await held.start()
        try:
            await db.execute("SELECT 1 FROM operator_sessions WHERE sid = $1 FOR UPDATE", op["sid"])
            ws = await connect(http, a, op)  # its attach, in A's writer, waits
            beating = "SELECT expires_at > now() FROM cluster_nodes WHERE node_id = 'node-a'"
            look = await asyncpg.connect(pg_url)
            try:
                await until(lambda: look.fetchval(WAITING_ON_A_LOCK))
                waited = asyncio.get_running_loop().time() + 2 * LEASE_S
                while asyncio.get_running_loop().time() < waited:
                    assert await look.fetchval(beating)
                    await asyncio.sleep(0.1)
            finally:
                await look.close()
        finally:
            await held.rollback()
        await until_pong(ws, "attached")
        await reaches(http, a, ws)
        await ws.close()
        assert await never_lapsed(a)


async def test_a_socket_that_replaces_one_still_attaching_is_attached_once_that_attach_ends(
    pg_url: str,
) -> None:
    async with pair(pg_url) as p:
        a, op, http, db = p.a, p.op, p.http, p.db
        await gate(db, 1, ATTACHING_ON_A)
        await close(db, 1)
        first = await connect(http, a, op)
        await until(lambda: waiting_at(db, 1))
        # The operator connects again while the first attach still reads: the
        # two replays take turns, not overlap (each holds frames while it reads).
        second = await connect(http, a, op)
        await asyncio.sleep(0.2)
        await open_(db, 1)
        assert await closed(first) == REPLACED_CLOSE_CODE
        await until_pong(second, "attached")
        await until_stored(pg_url, op["sid"], ("node-a", True), "the second socket on A")
        await reaches(http, a, second)
        await second.close()


async def test_a_dead_nodes_tasks_are_taken_over_while_its_burial_cannot_finish(
    pg_url: str,
) -> None:
    async with pair(pg_url) as p:
        a, b, op, http, db = p.a, p.b, p.op, p.http, p.db
        ws = await connect(http, a, op)
        task_id = (await reaches(http, a, ws))["task_id"]  # its attempt runs on A
        a.proc.kill()
        a.proc.wait()
        # A's heartbeat row held, as a node frozen mid-statement would hold it:
        # B's burials fail (their lock waits are bounded) until it goes.
        held = db.transaction()
        await held.start()
        try:
            await db.execute("SELECT 1 FROM cluster_nodes WHERE node_id = 'node-a' FOR UPDATE")
            for _ in range(150):
                async with http.get(f"{b.base}/v1/tasks/{task_id}") as resp:
                    if len((await resp.json())["attempts"]) == 2:
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("B did not take the dead node's task over")
            assert await db.fetchval("SELECT count(*) FROM cluster_nodes WHERE node_id = 'node-a'")
        finally:
            await held.rollback()
        await ws.close()
