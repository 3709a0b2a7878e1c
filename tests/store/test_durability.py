"""Durable state: restarts on the same SQLite file lose nothing they promised."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from operator_server.app import build_app, sweep_once
from operator_server.appkeys import STORE
from operator_server.store import MemoryStore, NoticeMessage, SQLiteStore, StoreError
from operator_server.store.sqlite import MIGRATIONS
from tests.conftest import Server, create_task, directory_of, engine_of, make_settings, wait_task
from tests.wsop import connect, eventually, expect, mint


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "operator-server.sqlite"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_restart_on_the_same_file_keeps_sessions_roles_and_tasks(
    server: Server, db: Path
) -> None:
    first = await server(store__path=str(db))
    sid, token = await mint(first, ["main"])
    task = await create_task(first, agent="echo", directive={"keep": "me"})
    before = await wait_task(first, task["id"])
    await first.close()

    second = await server(store__path=str(db))
    view = await second.get(f"/v1/operators/{sid}", headers=auth(token))
    assert view.status == 200 and (await view.json())["roles"] == ["main"]
    clash = await second.post("/v1/operators", json={"roles": ["main"]})
    assert clash.status == 409  # the role is still held
    after = await (await second.get(f"/v1/tasks/{task['id']}")).json()
    assert after == before
    ws = await connect(second, sid, token)  # the same token still opens the socket
    assert directory_of(second).sessions[sid].connected
    await ws.close()


async def test_the_database_is_private_in_wal_mode_and_versioned(server: Server, db: Path) -> None:
    await server(store__path=str(db))
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()


async def test_a_database_from_a_newer_server_is_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    store = SQLiteStore(db)
    with pytest.raises(StoreError, match="newer"):
        await store.open()
    await store.close()


async def test_the_token_plaintext_is_not_in_the_database_files(server: Server, db: Path) -> None:
    client = await server(store__path=str(db))
    _, token = await mint(client, ["main"])
    await client.close()
    blob = b"".join(p.read_bytes() for p in db.parent.iterdir())
    assert db.read_bytes()  # something was written
    assert token.encode() not in blob


async def test_a_deleted_session_does_not_come_back(server: Server, db: Path) -> None:
    first = await server(store__path=str(db))
    sid, token = await mint(first, ["main"])
    assert (await first.delete(f"/v1/operators/{sid}", headers=auth(token))).status == 204
    await first.close()
    second = await server(store__path=str(db))
    assert (await second.get(f"/v1/operators/{sid}", headers=auth(token))).status == 404
    assert (await second.post("/v1/operators", json={"roles": ["main"]})).status == 201


async def test_an_expired_session_is_not_restored(server: Server, db: Path) -> None:
    first = await server(store__path=str(db), session_idle_ttl_s=0.2)
    sid, token = await mint(first, ["main"])
    await first.close()
    await asyncio.sleep(0.3)  # the session's idle time passes while the server is down
    second = await server(store__path=str(db), session_idle_ttl_s=0.2)
    assert (await second.get(f"/v1/operators/{sid}", headers=auth(token))).status == 404
    rows = sqlite3.connect(db).execute("SELECT count(*) FROM operator_sessions").fetchone()
    assert rows == (0,)


async def make_read_only(client: TestClient[Any, Any]) -> None:
    store = client.app[STORE]  # type: ignore[index]
    assert isinstance(store, SQLiteStore)
    await store._call(lambda c: c.execute("PRAGMA query_only = ON"), "test: read-only")


async def test_a_failed_write_is_a_5xx_and_leaves_no_half_state(server: Server, db: Path) -> None:
    client = await server(store__path=str(db))
    sid, token = await mint(client, ["kept"])
    await make_read_only(client)

    resp = await client.post("/v1/operators", json={"roles": ["main"]})
    assert resp.status == 503
    err = (await resp.json())["error"]
    assert err["code"] == "store_failed" and "nothing was changed" in err["message"]
    engine = engine_of(client)
    assert engine.resolution.roles.resolve("main") is None  # the failed mint released its role
    assert len(directory_of(client).sessions) == 1 and len(engine.resolution.sessions) == 1

    resp = await client.post("/v1/tasks", json={"agent": "echo", "directive": "x"})
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "store_failed"
    assert engine.tasks == {}

    resp = await client.delete(f"/v1/operators/{sid}", headers=auth(token))
    assert resp.status == 503
    assert (await client.get(f"/v1/operators/{sid}", headers=auth(token))).status == 200
    assert engine.resolution.roles.resolve("kept") == sid


async def test_a_corrupt_row_is_skipped_with_a_warning_naming_it(server: Server, db: Path) -> None:
    first = await server(store__path=str(db))
    good_sid, good_token = await mint(first)
    good = await create_task(first, agent="echo")
    await wait_task(first, good["id"])
    await first.close()
    conn = sqlite3.connect(db)
    columns = "INSERT INTO tasks (id, status, created_at, updated_at, data) VALUES"
    conn.execute(f"{columns} ('t-broken', 'running', 0, 0, '{{not json')")
    conn.execute(f"{columns} ('t-odd', 'running', 0, 0, '{{\"id\": \"t-odd\"}}')")
    conn.execute(
        "INSERT INTO operator_sessions (sid, token_sha256, roles, desc, created_at, "
        "last_seen_at) VALUES ('op-broken', 'x', 'not-json', '', 0, 9e99)"
    )
    conn.commit()
    conn.close()
    with capture_logs() as logs:
        second = await server(store__path=str(db))
    warned = {e.get("task_id") or e.get("sid") for e in logs if e["log_level"] == "warning"}
    assert {"t-broken", "t-odd", "op-broken"} <= warned
    assert (await second.get(f"/v1/tasks/{good['id']}")).status == 200
    assert (await second.get(f"/v1/operators/{good_sid}", headers=auth(good_token))).status == 200


async def test_finished_tasks_are_removed_after_the_retention(server: Server, db: Path) -> None:
    client = await server(store__path=str(db), store__retention_s=0.1)
    task = await create_task(client, agent="echo")
    await wait_task(client, task["id"])
    await asyncio.sleep(0.2)
    await sweep_once(client.app)  # type: ignore[arg-type]
    assert (await client.get(f"/v1/tasks/{task['id']}")).status == 404
    await client.close()
    assert sqlite3.connect(db).execute("SELECT count(*) FROM tasks").fetchone() == (0,)


async def test_notifications_given_up_are_removed_after_the_retention(
    server: Server, db: Path
) -> None:
    client = await server(store__path=str(db), store__retention_s=0.1)
    store = client.app[STORE]  # type: ignore[index]
    cut = NoticeMessage("m1", "b", "node-1", time.time(), time.time())
    await store.cut_notice_message(cut, [])
    given_up = dataclasses.replace(cut, due_at=None, attempts=3, last_error="HTTP 503")
    await store.record_notice_message(given_up)
    await sweep_once(client.app)  # type: ignore[arg-type]
    count = "SELECT count(*) FROM notice_messages"
    assert sqlite3.connect(db).execute(count).fetchone() == (1,)  # not yet past it
    await asyncio.sleep(0.2)
    await sweep_once(client.app)  # type: ignore[arg-type]
    await client.close()
    assert sqlite3.connect(db).execute(count).fetchone() == (0,)


async def crash_image(store: MemoryStore) -> MemoryStore:
    """What a process killed right now would leave behind: the committed records."""
    return copy.deepcopy(store)


async def running_in(
    aiohttp_client: Any, store: MemoryStore, **settings: Any
) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(
        build_app(make_settings(**settings), store=store)
    )
    return client


async def test_an_interrupted_task_is_redispatched_without_using_an_attempt(
    aiohttp_client: Any,
) -> None:
    store = MemoryStore()
    first = await running_in(aiohttp_client, store)
    sid, token = await mint(first)
    ws = await connect(first, sid, token)
    task = await create_task(
        first, agent="coder", operator={"sid": sid}, layers=["operator_delegate"]
    )
    old_spawn = await expect(ws, "spawn")

    second = await running_in(aiohttp_client, await crash_image(store))
    ws2 = await connect(second, sid, token)
    spawn = await expect(ws2, "spawn")
    assert spawn["attempt"] == 2 and spawn["req_id"] != old_spawn["req_id"]
    old = await second.get("/v1/worker/prompt", headers=auth(old_spawn["capability_token"]))
    assert old.status in (401, 403)  # the interrupted attempt's credential is dead
    await ws2.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "done"})
    done = await wait_task(second, task["id"])
    assert done["status"] == "passed" and done["max_attempts"] == 1 and done["interruptions"] == 1
    assert done["attempts"][0]["error"]["code"] == "interrupted"


async def test_a_task_interrupted_too_often_fails_interrupted(aiohttp_client: Any) -> None:
    store = MemoryStore()
    client = await running_in(aiohttp_client, store, store__max_interruptions=1)
    sid, _ = await mint(client)
    task = await create_task(client, agent="coder", operator={"sid": sid})
    for crash in range(2):  # two crashes, each with the task mid-attempt
        mid_attempt = store  # bind for the lambda

        def running(s: MemoryStore = mid_attempt, n: int = crash + 1) -> bool:
            rec = s.tasks[task["id"]]
            return rec["status"] == "running" and rec["attempt"] == n

        await eventually(running, what="attempt running")
        store = await crash_image(store)
        client = await running_in(aiohttp_client, store, store__max_interruptions=1)
    done = await wait_task(client, task["id"])
    assert done["status"] == "failed"
    assert (
        done["error"]["code"] == "interrupted"
        and "store.max_interruptions = 1" in done["error"]["message"]
    )


async def test_an_unopenable_store_stops_start_up_with_the_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    store = SQLiteStore(blocker / "db.sqlite")
    with pytest.raises(StoreError, match="cannot open"):
        await store.open()
    await store.close()


async def test_an_attempt_is_on_disk_before_any_operator_hears_of_it(
    server: Server, db: Path
) -> None:
    client = await server(store__path=str(db))
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    task = await create_task(client, agent="coder", operator={"sid": sid})
    await expect(ws, "hook_before")
    # Read the file from outside, as a restart would, at the moment the operator is asked.
    conn = sqlite3.connect(db)
    status, data = conn.execute(
        "SELECT status, data FROM tasks WHERE id = ?", (task["id"],)
    ).fetchone()
    conn.close()
    assert status == "running" and '"attempt":1' in data


async def test_an_attempt_whose_start_cannot_be_written_is_interrupted_then_run_again(
    server: Server, db: Path
) -> None:
    """The store, not the work, cut the attempt short: nothing of it is shown
    as an end while the store cannot write; once it can, the attempt ends
    ``interrupted`` (not counted against ``max_attempts``) and a new one runs.
    (A fault injected at the store's write call; tests/store/test_disk_full.py
    fills a real file system.)"""
    client = await server(store__path=str(db), max_wait_s=30)
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    store = client.app[STORE]  # type: ignore[index]
    assert isinstance(store, SQLiteStore)
    # The task's creation commits; every write after it fails, until mended.
    real_put = store.put_task
    calls = 0
    mended = asyncio.Event()

    async def put_then_break(record: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls > 1 and not mended.is_set():
            raise StoreError("test: the disk is full")
        await real_put(record, *args, **kwargs)

    store.put_task = put_then_break  # type: ignore[method-assign]
    task = await create_task(
        client, agent="coder", operator={"sid": sid}, layers=["operator_delegate"], max_attempts=1
    )
    shown = await wait_task(client, task["id"], wait=1)
    assert shown["status"] == "running"  # not failed: that end is not on disk
    assert calls > 2  # its end was tried again meanwhile
    mended.set()
    spawn = await expect(ws, "spawn")
    assert spawn["attempt"] == 2
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "done"})
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed", done
    first, second = done["attempts"]
    assert first["error"]["code"] == "interrupted" and second["status"] == "passed"
    assert done["interruptions"] == 1
    assert status_on_disk(db, task["id"]) == ("passed", "passed")
    await ws.close()


def status_on_disk(db: Path, task_id: str) -> tuple[str, str]:
    """The task's and its last attempt's status as a restart would read them."""
    conn = sqlite3.connect(db)
    try:
        status, data = conn.execute(
            "SELECT status, data FROM tasks WHERE id = ?", (task_id,)
        ).fetchone()
    finally:
        conn.close()
    return status, json.loads(data)["attempts"][-1]["status"]


async def test_a_long_poll_answers_passed_only_once_passed_is_on_disk(
    server: Server, db: Path
) -> None:
    client = await server(store__path=str(db))
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    task = await create_task(
        client, agent="coder", operator={"sid": sid}, layers=["operator_delegate"]
    )
    spawn = await expect(ws, "spawn")  # the attempt's start is committed
    # Another process holds the write lock: no commit can happen until it lets go.
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    poll = asyncio.ensure_future(client.get(f"/v1/tasks/{task['id']}", params={"wait": "10"}))
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "done"})
    # The long-poll may not answer while the end cannot be committed; if it does
    # answer, the state it shows must already be on disk.
    done, _ = await asyncio.wait({poll}, timeout=1)
    on_disk_when_answered = status_on_disk(db, task["id"]) if done else None
    other.rollback()
    other.close()
    answered = await (await poll).json()
    on_disk_when_answered = on_disk_when_answered or status_on_disk(db, task["id"])
    assert answered["status"] == "passed"
    assert on_disk_when_answered == ("passed", "passed")
    await ws.close()
