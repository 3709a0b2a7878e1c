"""A stored row that cannot be used, for whatever reason, is skipped by name.

Start-up never fails because of one row, and no row that is restored can make a
later read fail.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from tests.conftest import Server, create_task, wait_task
from tests.wsop import mint


def _variants(good: dict[str, Any]) -> dict[str, str]:
    """Task rows (id -> JSON text), each broken in a way the code once tripped on."""
    deep = "[" * 10_000 + "]" * 10_000
    rows: dict[str, Any] = {
        "t-operator-text": {**good, "operator": "main"},  # AttributeError in from_record
        "t-bad-ended-at": {
            **good,
            "attempts": [{**good["attempts"][0], "ended_at": "soon"}],  # loads, cannot be served
        },
        "t-status-list": {**good, "status": ["passed"]},  # TypeError: unhashable
        "t-a-list": [good],  # not an object at all
    }
    out = {
        tid: json.dumps({**rec, "id": tid} if isinstance(rec, dict) else rec)
        for tid, rec in rows.items()
    }
    # Nested far past anything the server accepts: json.loads itself would recurse.
    out["t-deep"] = json.dumps({**good, "id": "t-deep", "directive": "DEEP"}).replace(
        '"DEEP"', deep
    )
    return out


async def test_rows_broken_in_any_way_are_skipped_and_the_rest_is_served(
    server: Server, tmp_path: Path
) -> None:
    db = tmp_path / "operator-server.sqlite"
    first = await server(store__path=str(db))
    good_sid, good_token = await mint(first, ["main"])
    good = await wait_task(first, (await create_task(first, agent="echo"))["id"])
    await first.close()

    conn = sqlite3.connect(db)
    (data,) = conn.execute("SELECT data FROM tasks WHERE id = ?", (good["id"],)).fetchone()
    for tid, text in _variants(json.loads(data)).items():
        # Live rows, so recovery reads (and skips) each of them at start-up.
        conn.execute(
            "INSERT INTO tasks (id, status, created_at, updated_at, data) "
            "VALUES (?, 'running', 0, 0, ?)",
            (tid, text),
        )
    sessions = {
        "op-roles-text": ('"abc"', "", 0.0),  # list("abc") would restore roles a, b, c
        "op-roles-numbers": ("[1, 2]", "", 0.0),
        "op-roles-deep": ("[" * 10_000 + "]" * 10_000, "", 0.0),
        "op-created-text": ("[]", "", "yesterday"),  # every read of it would fail
    }
    for sid, (roles, desc, created) in sessions.items():
        conn.execute(
            "INSERT INTO operator_sessions (sid, token_sha256, roles, desc, created_at, "
            "last_seen_at) VALUES (?, 'x', ?, ?, ?, 9e99)",
            (sid, roles, desc, created),
        )
    conn.commit()
    conn.close()

    with capture_logs() as logs:
        second = await server(store__path=str(db))
    warned = {e.get("task_id") or e.get("sid") for e in logs if e["log_level"] == "warning"}
    assert {*_variants(json.loads(data)), *sessions} <= warned

    assert (await second.get(f"/v1/tasks/{good['id']}")).status == 200
    listing = await second.get("/v1/tasks")
    assert listing.status == 200
    assert [t["id"] for t in (await listing.json())["tasks"]] == [good["id"]]
    view = await second.get(
        f"/v1/operators/{good_sid}", headers={"Authorization": f"Bearer {good_token}"}
    )
    assert view.status == 200
    for sid in sessions:
        assert (
            await second.get(f"/v1/operators/{sid}", headers={"Authorization": "Bearer x"})
        ).status == 404
