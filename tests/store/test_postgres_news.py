"""What a PostgreSQL node's batches cost the server besides their writes: the
news they broadcast as they commit (``cluster/bus.py``) and the connection
reset between them (``store/postgres/store.py``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import asyncpg

from operator_server.cluster.bus import ALL
from operator_server.cluster.messages import EventsStored, TasksEnded, decode
from operator_server.store import PostgresStore
from tests.conftest import Server, create_task, engine_of, wait_task
from tests.http.sse import next_block, parse
from tests.store.test_postgres import event, task_record

MARKER = "test_marker"


@contextlib.asynccontextmanager
async def listening(url: str) -> AsyncIterator[tuple[asyncpg.Connection, asyncio.Queue[str]]]:
    """A connection of our own listening on the channel every node hears, and
    on ``MARKER``: notifications reach it in commit order, whatever the channel."""
    heard: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(url)
    try:
        for name in (ALL, MARKER):
            await conn.add_listener(
                name, lambda _c, _p, chan, body: heard.put_nowait(f"{chan} {body}")
            )
        yield conn, heard
    finally:
        await conn.close()


async def broadcasts_so_far(conn: asyncpg.Connection, heard: asyncio.Queue[str]) -> list[str]:
    """The kinds of what every node heard before now: a marker sent now comes
    after every notification of a transaction that committed before it."""
    await conn.execute("SELECT pg_notify($1, 'now')", MARKER)
    kinds = []
    while (item := await heard.get()) != f"{MARKER} now":
        sender, message = decode(item.split(" ", 1)[1])
        kinds.append(f"{type(message).__name__} from {sender}")
    return kinds


async def test_a_lone_node_broadcasts_no_batch_news_yet_acts_on_it_and_tells_a_second_node(
    pg_url: str,
) -> None:
    a = PostgresStore(pg_url)
    a.lease_tasks("node-a", 10, ["running"])
    await a.open()
    own: asyncio.Queue[str] = asyncio.Queue()
    a.bus.on(EventsStored, lambda node, _m: own.put_nowait(f"EventsStored from {node}"))
    a.bus.on(TasksEnded, lambda node, m: own.put_nowait(f"TasksEnded {m.ids} from {node}"))
    try:
        async with listening(pg_url) as (conn, heard):
            await a.put_task(task_record("t-1", "running"), [event("t-1", "created")])
            await a.put_task(task_record("t-1", "passed"), [event("t-1", "status")])
            assert await broadcasts_so_far(conn, heard) == []
            # Its own handlers still hear what it told nobody: handed to them
            # as each batch committed, before its writer was answered.
            seen = [own.get_nowait() for _ in range(own.qsize())]
            assert seen == [
                "EventsStored from node-a",
                "EventsStored from node-a",
                "TasksEnded ['t-1'] from node-a",
            ]
            b = PostgresStore(pg_url)
            b.lease_tasks("node-b", 10, ["running"])
            await b.open()  # its heartbeat row is there: node-a tells again
            try:
                await a.put_task(task_record("t-2", "passed"), [event("t-2", "created")])
                assert await broadcasts_so_far(conn, heard) == [
                    "EventsStored from node-a",
                    "TasksEnded from node-a",
                ]
            finally:
                await b.close()
    finally:
        await a.close()


async def test_a_connection_back_in_the_pool_is_not_reset_by_another_round_trip(
    pg_url: str,
) -> None:
    """A connection goes back to the pool after each batch and each read; its
    last statement is the read's own, not asyncpg's default reset after it."""
    store = PostgresStore(pg_url)
    store.lease_tasks("node-a", 10, ["running"])
    await store.open()
    try:
        await store.put_task(task_record("t-1", "running"), [event("t-1", "created")])
        await store.get_task("t-1")
        conn = await asyncpg.connect(pg_url)
        try:
            last = await conn.fetch(
                "SELECT query FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()
        statements = [row["query"] for row in last]
        # The read's last statement (its task's outputs): the pool's connection.
        assert any("FROM task_outputs" in q for q in statements), statements
        assert not [q for q in statements if "RESET ALL" in q]
    finally:
        await store.close()


async def test_a_node_with_no_stream_reads_no_events_back_and_a_later_stream_misses_none(
    server: Server, pg_url: str
) -> None:
    """Events reach a node's streams by its tail reading them back from the
    store, as other nodes' batches announce them; with no stream open nothing
    is read (nobody to publish to), only the published id moves on."""
    a = await server(store__url=pg_url, node_id="node-a")
    b = await server(store__url=pg_url, node_id="node-b")
    first = [await create_task(a, agent="echo", directive=n) for n in range(3)]
    for task in first:
        assert (await wait_task(a, task["id"]))["status"] == "passed"
    newest = max(e.id for e in await engine_of(a).store.load_events(0, None, 1000))
    for node in (a, b):  # each heard every batch's news: the published id is there
        await until(lambda node=node: engine_of(node).published_event_id == newest)
        assert engine_of(node).fanout.last_id == 0  # nothing was read back to publish
    # A stream opened now on B catches up from the store, then follows live.
    resp = await b.get("/v1/events", headers={"Last-Event-ID": "0"})
    assert resp.status == 200
    later = await create_task(a, agent="echo", directive="later")
    seen: dict[str, list[str]] = {}
    while seen.get(later["id"], [])[-1:] != ["status:passed"]:
        block = await next_block(resp, 10)
        assert block is not None
        event = parse(block)
        if event is None:
            continue
        kind = event.type + (f":{event.data['status']}" if event.type == "status" else "")
        seen.setdefault(event.data["task_id"], []).append(kind)
    assert {task["id"] for task in first} <= set(seen)
    assert all(kinds[0] == "created" for kinds in seen.values())
    resp.close()


async def until(check: Callable[[], bool], timeout: float = 5) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
