"""One node on SQLite whose file system fills up: a real tmpfs of a few MB,
mounted by the test (it runs as root here and in CI), filled to the last
byte by a file beside the database.

What a user relies on (README, "Durable state"): an end that cannot be written
is not shown — the task stays ``running`` and healthz answers 503
``store_failed`` — and it is written again until it lands; once there is room,
the task ends as decided, on disk, and healthz answers 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import Server, create_task, wait_task
from tests.needs import unavailable
from tests.store.test_durability import status_on_disk
from tests.wsop import connect, expect, mint

SIZE = "4m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of ``SIZE`` of the test's own, unmounted after it."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@contextlib.contextmanager
def filled(disk: Path) -> Iterator[None]:
    """Every free byte of ``disk`` taken by one file, given back on exit."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    try:
        yield
    finally:
        filler.unlink()


async def test_an_end_the_full_disk_refuses_is_not_shown_and_lands_once_there_is_room(
    small_disk: Path, server: Server
) -> None:
    db = small_disk / "operator-server.sqlite"
    client = await server(store__path=str(db))
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    task = await create_task(
        client, agent="coder", operator={"sid": sid}, layers=["operator_delegate"]
    )
    spawn = await expect(ws, "spawn")  # the attempt's start is on disk
    value = "x" * 20_000
    with filled(small_disk):
        await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": value})
        # The attempt is decided, but its end cannot be written: nobody sees it.
        shown = await (await client.get(f"/v1/tasks/{task['id']}", params={"wait": "1"})).json()
        assert shown["status"] == "running", shown
        assert status_on_disk(db, task["id"]) == ("running", "running")
        health = await client.get("/v1/healthz")
        assert health.status == 503
        assert (await health.json())["error"]["code"] == "store_failed"
        new = await client.post("/v1/tasks", json={"agent": "echo", "directive": "x"})
        assert new.status == 503 and (await new.json())["error"]["code"] == "store_failed"
        await asyncio.sleep(0.5)  # tried again meanwhile, in vain
        shown = await (await client.get(f"/v1/tasks/{task['id']}")).json()
        assert shown["status"] == "running", shown
    # Room again: the end lands (its next try), and only then is it shown.
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed" and done["result"]["value"] == value
    assert status_on_disk(db, task["id"]) == ("passed", "passed")
    assert (await client.get("/v1/healthz")).status == 200
    await ws.close()
    await client.close()


async def test_a_stop_while_an_end_cannot_be_written_leaves_the_task_to_the_next_start(
    small_disk: Path, server: Server
) -> None:
    db = small_disk / "operator-server.sqlite"
    client = await server(store__path=str(db))
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    task = await create_task(
        client, agent="coder", operator={"sid": sid}, layers=["operator_delegate"]
    )
    spawn = await expect(ws, "spawn")
    with filled(small_disk):
        await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "x" * 20_000})
        shown = await (await client.get(f"/v1/tasks/{task['id']}", params={"wait": "0.5"})).json()
        assert shown["status"] == "running", shown
        await ws.close()
        # Stopping gives up on the end it cannot write (and does not hang on it).
        await asyncio.wait_for(client.close(), 10)
    assert status_on_disk(db, task["id"]) == ("running", "running")
    # The next start finds the task running, as after a crash: interrupted, run again.
    again = await server(store__path=str(db))
    ws = await connect(again, sid, token)
    spawn = await expect(ws, "spawn")
    assert spawn["attempt"] == 2
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "again"})
    done = await wait_task(again, task["id"])
    assert done["status"] == "passed" and done["result"]["value"] == "again"
    assert [a["status"] for a in done["attempts"]] == ["failed", "passed"]
    assert done["attempts"][0]["error"]["code"] == "interrupted"
    await ws.close()
    await again.close()


async def test_a_result_the_full_disk_refuses_is_503_and_decides_nothing(
    small_disk: Path, server: Server
) -> None:
    """A worker's result is answered 200 only once its row is on disk: one the
    full disk refuses is 503 ``store_failed``, and the attempt is decided
    without it.  The operator's ack, appended while the disk is still full, is
    written again with the end once there is room."""
    db = small_disk / "operator-server.sqlite"
    client = await server(store__path=str(db))
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    task = await create_task(
        client, agent="coder", operator={"sid": sid}, layers=["operator_delegate"]
    )
    spawn = await expect(ws, "spawn")
    with filled(small_disk):
        resp = await client.post(
            "/v1/worker/result",
            json={"value": "x" * 200_000},
            headers={"Authorization": f"Bearer {spawn['worker_handle']}"},
        )
        assert resp.status == 503, await resp.text()
        assert (await resp.json())["error"]["code"] == "store_failed"
        ack = "y" * 200_000
        await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": ack})
        shown = await (await client.get(f"/v1/tasks/{task['id']}", params={"wait": "0.5"})).json()
        assert shown["status"] == "running", shown
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed" and done["result"]["value"] == ack
    outputs = done["attempts"][0]["outputs"]
    assert [(o["source"], o["value"]) for o in outputs] == [("ack", ack)]
    with closing(sqlite3.connect(db)) as conn:  # on disk, each in its row
        rows = conn.execute("SELECT data FROM task_outputs WHERE task_id = ?", (task["id"],))
        assert [json.loads(data)[1] for (data,) in rows] == ["ack"]
    await ws.close()
    await client.close()
