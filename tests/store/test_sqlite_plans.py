"""The SQLite store's paging and retention statements seek on an index: a page
or a sweep costs the same however many finished tasks the store holds (issue 9)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from operator_server.store import sqlite
from operator_server.store.sqlite import SQLiteStore


@pytest.fixture
async def conn(tmp_path: Path) -> sqlite3.Connection:
    path = tmp_path / "plans.sqlite"
    store = SQLiteStore(path)
    await store.open()  # the schema, by the store's own migrations
    await store.close()
    return sqlite3.connect(path)


def plan(conn: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> str:
    return " | ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))


@pytest.mark.parametrize(
    ("sql", "args", "index"),
    [
        (sqlite.LIST_TASKS, (0, 50), "INTEGER PRIMARY KEY (rowid>?)"),
        (
            sqlite.LIST_TASKS_OF_STATUS,
            ("passed", 0, 50),
            "tasks_by_status_seq (status=? AND seq>?)",
        ),
        (
            sqlite.FINISHED_BEFORE.format(marks="?,?"),
            ("passed", "failed", 1.0, 500),
            "tasks_by_status_updated (status=? AND updated_at<?)",
        ),
        (sqlite.DELETE_EVENTS_OF_TASK, ("t-1",), "task_event_rows_by_task (task_id=?)"),
    ],
)
def test_a_page_and_a_sweep_seek_on_an_index(
    conn: sqlite3.Connection, sql: str, args: tuple[object, ...], index: str
) -> None:
    found = plan(conn, sql, args)
    assert index in found, found
    assert "SCAN tasks" not in found and "SCAN task_event_rows" not in found, found
