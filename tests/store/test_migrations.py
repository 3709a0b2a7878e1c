"""A database written by an older server is upgraded in place, losing nothing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from operator_server.store import SQLiteStore
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
