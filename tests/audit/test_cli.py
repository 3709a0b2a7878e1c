"""``operator-server audit verify|export`` as a user runs them: a process on
the store's file, its exit status and what it prints."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import asyncpg

from operator_server.store import PostgresStore, SQLiteStore
from tests.audit.test_chain import fill
from tests.pg import new_database


async def run(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "operator_server", "audit", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


async def filled(path: Path, prune_before: float | None = None) -> None:
    store = SQLiteStore(path)
    store.lease_tasks("node-a", 10, ["pending", "running"])
    await store.open()
    await fill(store)
    if prune_before is not None:
        await store.prune_audit(prune_before)
    await store.close()


async def test_verify_passes_a_whole_chain_and_prints_its_head(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite"
    await filled(db)
    status, out = await run("verify", "--store-path", str(db))
    assert status == 0, out
    assert "audit chain ok: 7 rows, seq 1 to 7; head hash " in out


async def test_verify_exits_1_naming_the_edited_row(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite"
    await filled(db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_log SET principal = 'someone else' WHERE seq = 6")
    status, out = await run("verify", "--store-path", str(db))
    assert status == 1, out
    assert "audit chain broken at seq 6: its content does not match its hash (edited)" in out


async def test_verify_says_where_it_started_after_retention_pruned(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite"
    await filled(db, prune_before=112.0)
    status, out = await run("verify", "--store-path", str(db))
    assert status == 0, out
    assert "started from seq 6: retention pruned every row up to seq 5" in out
    assert "audit chain ok: 2 rows, seq 6 to 7" in out


async def test_export_prints_json_lines_since_a_time(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite"
    await filled(db)
    status, out = await run("export", "--store-path", str(db), "--since", "112")
    assert status == 0, out
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["seq"], r["action"]) for r in rows] == [
        (6, "worker.result"),
        (7, "session.force_left"),
    ]
    assert rows[0]["at"] == "1970-01-01T00:01:52.000Z" and rows[0]["at_s"] == 112.0
    status, out = await run("export", "--store-path", str(db), "--since", "1970-01-01T00:01:53Z")
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [7]


async def test_a_bad_since_is_refused_with_exit_2(tmp_path: Path) -> None:
    status, out = await run("export", "--store-path", str(tmp_path / "a.sqlite"), "--since", "soon")
    assert status == 2
    assert "'soon' is neither ISO 8601" in out


async def test_verify_on_postgresql_reads_the_chain_without_joining_the_cluster(
    postgres: Any,
) -> None:
    """An auditor's command is no node: it leaves no heartbeat row behind."""
    url = await new_database(postgres)
    store = PostgresStore(url)
    store.lease_tasks("node-a", 10, ["pending", "running"])
    await store.open()
    await fill(store)
    await store.close()
    conn = await asyncpg.connect(url)
    try:
        before = await conn.fetch("SELECT node_id FROM cluster_nodes ORDER BY node_id")
        status, out = await run("verify", "--store-url", url)
        assert status == 0, out
        assert "audit chain ok: 7 rows, seq 1 to 7; head hash " in out
        status, out = await run("export", "--store-url", url)
        assert status == 0 and len(out.splitlines()) == 7, out
        after = await conn.fetch("SELECT node_id FROM cluster_nodes ORDER BY node_id")
        assert after == before
    finally:
        await conn.close()
