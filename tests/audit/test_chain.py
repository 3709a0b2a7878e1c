"""The hash chain in every store: appended with the writes it records, read
back in pages, and checked by verify after a row is edited, deleted or moved
behind the store's back (the SQLite file and the PostgreSQL tables edited
directly), and after retention pruned its start."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from operator_server.audit.chain import Verdict
from operator_server.audit.cli import verify_store
from operator_server.audit.record import Action, AuditEntry, key_act
from operator_server.store import MemoryStore, PostgresStore, SessionRecord, SQLiteStore, Store
from operator_server.store.base import AuditQuery
from tests.pg import new_database


def task_record(task_id: str, status: str = "pending") -> dict[str, Any]:
    return {"id": task_id, "status": status, "created_at": 1.0, "updated_at": 1.0, "attempts": []}


async def fill(store: Store, n_tasks: int = 3) -> None:
    """Decisions through every kind of write that carries audit entries."""
    for i in range(n_tasks):
        task_id = f"t-{i}"
        entry = AuditEntry(Action.TASK_CREATED, "key:ci", task_id=task_id, at=100.0 + i)
        await store.put_task(task_record(task_id), audit=[entry])
    await store.put_session(
        SessionRecord("op-1", "h", ["main"], "", 1.0, 1.0),
        audit=[AuditEntry(Action.SESSION_MINTED, "key:ops", session_id="op-1", at=110.0)],
    )
    store.put_events_soon(
        (),
        audit=[
            AuditEntry(
                Action.HOOK_REJECTED,
                "key:ops",
                task_id="t-0",
                req_id="op-1-hb-1",
                session_id="op-1",
                reason="too risky",
                at=111.0,
            )
        ],
    )
    await store.put_output(
        "t-1",
        1,
        ["final", 1.0, "worker", True, "x"],
        audit=[AuditEntry(Action.WORKER_RESULT, "worker", task_id="t-1", outcome="ok", at=112.0)],
    )
    await store.delete_session(
        "op-1",
        audit=[AuditEntry(Action.SESSION_FORCE_LEFT, "bootstrap", session_id="op-1", at=113.0)],
    )
    await store.flush()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: Any, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        made: Store = MemoryStore()
    elif request.param == "sqlite":
        made = SQLiteStore(tmp_path / "audit.sqlite")
    else:
        made = PostgresStore(await new_database(request.getfixturevalue("postgres")))
    made.lease_tasks("node-a", 10, ["pending", "running"])
    await made.open()
    try:
        yield made
    finally:
        await made.close()


async def test_every_write_appends_its_entries_to_one_chain_that_verifies(store: Store) -> None:
    await fill(store)
    rows = await store.audit_page(AuditQuery(limit=100))
    assert [r.entry.action for r in rows] == [
        "task.created",
        "task.created",
        "task.created",
        "session.minted",
        "hook.rejected",
        "worker.result",
        "session.force_left",
    ]
    assert [r.seq for r in rows] == list(range(1, 8))
    assert {r.node for r in rows} == {"node-a"}
    assert rows[4].entry.reason == "too risky"
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
    verdict = await verify_store(store)
    assert verdict.ok and verdict.checked == 7 and verdict.head_seq == 7


async def test_pages_filter_by_task_principal_action_and_time(store: Store) -> None:
    await fill(store)
    by_task = await store.audit_page(AuditQuery(task_id="t-0"))
    assert [r.entry.action for r in by_task] == ["task.created", "hook.rejected"]
    by_principal = await store.audit_page(AuditQuery(principal="key:ops"))
    assert [r.seq for r in by_principal] == [4, 5]
    by_action = await store.audit_page(AuditQuery(action="task.created", after=1, limit=1))
    assert [r.seq for r in by_action] == [2]
    since = await store.audit_page(AuditQuery(since=112.0))
    assert [r.entry.action for r in since] == ["worker.result", "session.force_left"]


async def test_pruning_removes_a_prefix_and_verify_starts_from_the_first_kept_row(
    store: Store,
) -> None:
    await fill(store)
    assert await store.prune_audit(before=111.0) == 4
    verdict = await verify_store(store)
    assert verdict.ok and verdict.pruned_through == 4 and verdict.first_seq == 5
    # Entries appended after a prune go on from the head.
    await store.append_audit([AuditEntry(Action.KEY_REVOKED, "bootstrap", outcome="k1")])
    rows = await store.audit_page(AuditQuery())
    assert [r.seq for r in rows] == [5, 6, 7, 8]
    assert (await verify_store(store)).ok
    # Everything old: the head stays, so the chain goes on from it.
    assert await store.prune_audit(before=10**10) == 3
    assert [r.seq for r in await store.audit_page(AuditQuery())] == [8]
    assert (await verify_store(store)).ok


# -- tampering, behind the store's back ---------------------------------------


async def sqlite_tamper(path: Path, sql: str) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.executescript(sql)
    conn.close()


async def pg_tamper(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


EDIT = "UPDATE audit_log SET reason = 'fine by me' WHERE seq = 5"
DELETE = "DELETE FROM audit_log WHERE seq = 3"
# Rows 2 and 3 trade places: each keeps its content, hash and links, under the
# other's seq (through seq 0, free, so the primary key holds at every step).
REORDER = (
    "UPDATE audit_log SET seq = 0 WHERE seq = 2; "
    "UPDATE audit_log SET seq = 2 WHERE seq = 3; "
    "UPDATE audit_log SET seq = 3 WHERE seq = 0"
)
# The oldest rows removed with no anchor left: not retention's doing.
CUT_START = "DELETE FROM audit_log WHERE seq < 3"


@pytest.mark.parametrize(
    ("sql", "broken_at", "why"),
    [
        (EDIT, 5, "edited"),
        (DELETE, 4, "does not follow seq 2"),
        (REORDER, 2, "edited"),
        (CUT_START, 3, "does not start the chain"),
    ],
    ids=["edited", "deleted", "reordered", "start-cut"],
)
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_verify_names_the_first_row_that_does_not_fit(
    request: Any, tmp_path: Path, kind: str, sql: str, broken_at: int, why: str
) -> None:
    if kind == "sqlite":
        path = tmp_path / "tampered.sqlite"

        def make() -> Store:
            return SQLiteStore(path)

        async def tamper() -> None:
            await sqlite_tamper(path, sql)
    else:
        url = await new_database(request.getfixturevalue("postgres"))

        def make() -> Store:
            return PostgresStore(url)

        async def tamper() -> None:
            await pg_tamper(url, sql)

    store = make()
    store.lease_tasks("node-a", 10, ["pending", "running"])
    await store.open()
    await fill(store)
    assert (await verify_store(store)).ok
    await store.close()

    await tamper()
    again = make()
    again.lease_tasks("node-a", 10, ["pending", "running"])
    await again.open()
    try:
        verdict: Verdict = await verify_store(again)
    finally:
        await again.close()
    assert not verdict.ok
    assert verdict.broken_at == broken_at
    assert why in verdict.why


async def test_a_key_created_and_revoked_are_appended_naming_the_key_not_its_secret(
    store: Store,
) -> None:
    await store.append_audit([key_act(True, "bootstrap", "k7", "ci-bot")])
    await store.append_audit([key_act(False, "key:admin", "k7", "ci-bot")])
    rows = await store.audit_page(AuditQuery())
    assert [(r.entry.action, r.entry.principal, r.entry.outcome, r.entry.reason) for r in rows] == [
        ("key.created", "bootstrap", "k7", "ci-bot"),
        ("key.revoked", "key:admin", "k7", "ci-bot"),
    ]
    assert (await verify_store(store)).ok


async def test_two_nodes_writing_at_once_make_one_chain_naming_each_node(request: Any) -> None:
    url = await new_database(request.getfixturevalue("postgres"))
    nodes = []
    for name in ("node-a", "node-b"):
        node = PostgresStore(url)
        node.lease_tasks(name, 10, ["pending", "running"])
        await node.open()
        nodes.append(node)
    try:

        async def decide(node: PostgresStore, n: int) -> None:
            for i in range(n):
                entry = AuditEntry(Action.TASK_CREATED, "key:ci", task_id=f"{node.audit_node}-{i}")
                await node.put_task(task_record(f"{node.audit_node}-{i}"), audit=[entry])

        await asyncio.gather(*(decide(node, 40) for node in nodes))
        rows = await nodes[0].audit_page(AuditQuery(limit=1000))
        assert len(rows) == 80 and {r.node for r in rows} == {"node-a", "node-b"}
        assert [r.seq for r in rows] == list(range(1, 81))
        assert (await verify_store(nodes[1])).ok
    finally:
        for node in nodes:
            await node.close()
