"""A database written by an older server is upgraded in place, losing nothing."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from operator_server.store import LinkUse, SQLiteStore, TaskEvent
from operator_server.store.sqlite import MIGRATIONS


async def test_a_version_1_database_keeps_its_tasks_in_creation_order(tmp_path: Path) -> None:
    db = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript(MIGRATIONS[0])
    for n, created in ((2, 20.0), (1, 10.0)):
        rec = {"id": f"t-{n}", "status": "passed", "created_at": created, "updated_at": created}
        conn.execute(
            "INSERT INTO tasks VALUES (?,?,?,?,?)",
            (rec["id"], "passed", created, created, json.dumps(rec)),
        )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()

    store = SQLiteStore(db)
    await store.open()
    try:
        listed = await store.list_tasks(None, 0, 10)
        assert [item.row.key for item in listed] == ["t-1", "t-2"]
        assert await store.count_tasks() == {"passed": 2}
    finally:
        await store.close()
    version = sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0]
    assert version == len(MIGRATIONS)


async def test_a_version_3_database_keeps_its_events_in_order_and_ids_continue(
    tmp_path: Path,
) -> None:
    db = tmp_path / "v3.sqlite"
    conn = sqlite3.connect(db)
    for step in MIGRATIONS[:3]:
        conn.executescript(step)
    rec = {"id": "t-1", "status": "running", "created_at": 1.0, "updated_at": 1.0}
    conn.execute(
        "INSERT INTO tasks (id, status, created_at, updated_at, data) VALUES (?,?,?,?,?)",
        ("t-1", "running", 1.0, 1.0, json.dumps(rec)),
    )
    for event_id, task_id, type in (
        (1, "t-1", "created"),
        (2, "t-2", "created"),
        (3, "t-1", "status"),
    ):
        data = {"task_id": task_id, "type": type, "at": "2026-11-27T12:00:00.000Z"}
        conn.execute(
            "INSERT INTO task_events VALUES (?,?,?)",
            (event_id, task_id, json.dumps(data, separators=(",", ":"))),
        )
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()

    store = SQLiteStore(db)
    await store.open()
    try:
        every = await store.load_events(0, None, 10)
        assert [(e.id, e.task_id, e.type) for e in every] == [
            (1, "t-1", "created"),
            (2, "t-2", "created"),
            (3, "t-1", "status"),
        ]
        assert every[0].text == '{"task_id":"t-1","type":"created","at":"2026-11-27T12:00:00.000Z"}'
        assert [e.id for e in await store.load_events(1, "t-1", 10)] == [3]
        assert await store.last_event_id() == 3
        new = TaskEvent.of_data(0, "t-1", {"task_id": "t-1", "type": "status", "at": "x"})
        await store.put_task(rec, [new])
        assert [e.id for e in await store.load_events(2, None, 10)] == [3, 4]
    finally:
        await store.close()


def inline_asks_task(task_id: str) -> dict[str, object]:
    """A running task as a server before v5 wrote it: its asks inline."""
    asks = [
        {"ask_id": "ask-1", "status": "answered", "question": {"q": [1]}, "answer": "yes"},
        {"ask_id": "ask-2", "status": "pending", "question": "q2", "answer": None},
    ]
    return {
        "id": task_id,
        "status": "running",
        "created_at": 1.0,
        "updated_at": 1.0,
        "attempts": [
            {"number": 1, "status": "failed", "tail": [], "asks": asks[:1]},
            {"number": 2, "status": "running", "tail": [], "asks": asks[1:]},
        ],
    }


def database_at(path: Path, version: int, task: dict[str, object]) -> Path:
    """A SQLite file as a server at schema ``version`` left it, holding ``task``
    (``t-1``) and a row that is not JSON (``t-bad``)."""
    conn = sqlite3.connect(path)
    for step in MIGRATIONS[:version]:
        conn.executescript(step)
    for task_id, data in (("t-1", json.dumps(task)), ("t-bad", "{not json")):
        conn.execute(
            "INSERT INTO tasks (id, status, created_at, updated_at, data) VALUES (?,?,?,?,?)",
            (task_id, "running", 1.0, 1.0, data),
        )
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    return path


async def reads_back_after_a_write_without(
    store: SQLiteStore, old: dict[str, object], key: str
) -> None:
    """``t-1`` reads back as ``old``, also once written again as the engine
    writes it now (without ``key`` inline); the unreadable row is skipped as before."""
    row = await store.get_task("t-1")
    assert row is not None and row.value == old
    without = json.loads(json.dumps(old))
    for attempt in without["attempts"]:
        del attempt[key]
    await store.put_task(without)
    row = await store.get_task("t-1")
    assert row is not None and row.value == old
    bad = await store.get_task("t-bad")
    assert bad is not None and bad.error is not None  # skipped as before, not fatal


async def test_a_version_4_database_keeps_its_inline_asks_when_the_task_is_next_written(
    tmp_path: Path,
) -> None:
    old = inline_asks_task("t-1")
    store = SQLiteStore(database_at(tmp_path / "v4.sqlite", 4, old))
    await store.open()
    try:
        await reads_back_after_a_write_without(store, old, "asks")
    finally:
        await store.close()


def inline_outputs_task(task_id: str) -> dict[str, object]:
    """A task as a server before v6 wrote it: its attempts' outputs inline."""
    return {
        "id": task_id,
        "status": "running",
        "created_at": 1.0,
        "updated_at": 1.0,
        "attempts": [
            {
                "number": 1,
                "status": "failed",
                "tail": [
                    ["final", "worker", {"big": [1, 2]}, True, 2.0],
                    ["output", "ack", "late", False, 3.0],
                ],
            },
            {"number": 2, "status": "running", "tail": [["final", "agent", "x", True, 4.0]]},
        ],
    }


async def test_a_version_5_database_keeps_its_inline_outputs_when_the_task_is_next_written(
    tmp_path: Path,
) -> None:
    old = inline_outputs_task("t-1")
    db = database_at(tmp_path / "v5.sqlite", 5, old)
    store = SQLiteStore(db)
    await store.open()
    try:
        with closing(sqlite3.connect(db)) as check:
            copied = check.execute("SELECT task_id, count(*) FROM task_outputs GROUP BY task_id")
            assert dict(copied.fetchall()) == {"t-1": 3}
        await reads_back_after_a_write_without(store, old, "tail")
    finally:
        await store.close()


async def test_a_version_8_database_gains_action_links_and_keeps_its_tasks(
    tmp_path: Path,
) -> None:
    """v9 only adds the links' tables: a database from before reads as it did,
    and its first link key and claim are kept."""
    old = inline_outputs_task("t-1")
    store = SQLiteStore(database_at(tmp_path / "v8.sqlite", 8, old))
    await store.open()
    try:
        row = await store.get_task("t-1")
        assert row is not None and row.value == old
        assert await store.link_key("k1") == "k1"
        assert await store.claim_link(LinkUse("l", "r", "approve", "link", 1.0)) is None
    finally:
        await store.close()
    store = SQLiteStore(tmp_path / "v8.sqlite")
    await store.open()
    try:
        assert await store.link_key("k2") == "k1"
        assert await store.link_use("l") == LinkUse("l", "r", "approve", "link", 1.0)
    finally:
        await store.close()
