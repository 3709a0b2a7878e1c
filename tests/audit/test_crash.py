"""A real crash while decisions flow: the daemon killed with SIGKILL, started
again on the same file, and the file read from outside.  Every decision the
file shows is audited, and every audit row's decision is shown: a task row and
its ``task.created``, a request or reply event and its ``request.issued`` or
verdict, pair up exactly; and the chain verifies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp

from operator_server.client import OperatorClient
from tests.test_daemon import free_port, start_daemon

REPLY_ACTIONS = ("hook.approved", "spawn.acked")
# Tasks created before the kill: enough that the kill lands among decisions.
BEFORE_KILL = 40
CREATORS = 4


def stored_pairs(db: Path) -> dict[str, tuple[set[str], set[str]]]:
    """What the file shows, and what its audit trail says, side by side."""
    conn = sqlite3.connect(db)
    try:
        tasks = {row[0] for row in conn.execute("SELECT id FROM tasks")}
        requests: set[str] = set()
        replies: set[str] = set()
        for (data,) in conn.execute("SELECT data FROM task_event_rows"):
            for event in json.loads(data):
                kind, values = event[0], event[4:]
                if kind == "request" and "-ha-" not in values[1]:  # a hook_after only tells
                    requests.add(values[1])
                elif kind == "reply":
                    replies.add(values[1])

        def audited(*actions: str, column: str = "req_id") -> set[str]:
            marks = ",".join("?" * len(actions))
            sql = f"SELECT {column} FROM audit_log WHERE action IN ({marks})"
            return {row[0] for row in conn.execute(sql, actions)}

        return {
            "tasks": (tasks, audited("task.created", column="task_id")),
            "requests": (requests, audited("request.issued")),
            "replies": (replies, audited(*REPLY_ACTIONS)),
        }
    finally:
        conn.close()


async def test_after_a_sigkill_every_stored_decision_has_its_audit_row_and_no_more(
    tmp_path: Path,
) -> None:
    db = tmp_path / "crash.sqlite"
    port = free_port()
    args = ("--secret", "s", "--store-path", str(db), "--log-format", "json")
    daemon = await start_daemon(*args, port=port)
    created = 0
    enough = asyncio.Event()

    async def create_forever(http: aiohttp.ClientSession) -> None:
        nonlocal created
        body = {"agent": "coder", "directive": "x", "operator": {"role": "main"}}
        while True:
            async with http.post(f"{daemon.base}/v1/tasks", json=body) as resp:
                assert resp.status == 202, await resp.text()
            created += 1
            if created >= BEFORE_KILL:
                enough.set()

    spawns = 0

    async def on_spawn(frame: dict[str, Any]) -> Any:
        # Every other spawn is held to the end: its task's decisions so far
        # wait, as they do under load, for a write to ride with.
        nonlocal spawns
        spawns += 1
        if spawns % 2:
            await asyncio.Event().wait()
        return "done"

    op = OperatorClient(daemon.base, roles=["main"], on_spawn=on_spawn)
    creators: list[asyncio.Task[None]] = []
    try:
        await op.start()
        async with aiohttp.ClientSession() as http:
            creators = [asyncio.create_task(create_forever(http)) for _ in range(CREATORS)]
            await asyncio.wait_for(enough.wait(), 60)
            daemon.proc.send_signal(signal.SIGKILL)
            assert daemon.proc.wait(timeout=10) == -signal.SIGKILL
            for creator in creators:
                creator.cancel()
            for creator in creators:
                with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                    await creator
        await op.close()

        # Started again: recovery writes what it decides, audited the same way.
        daemon = await start_daemon(*args, port=port)
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=30) == 0
    finally:
        await op.close()
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(timeout=10)

    pairs = stored_pairs(db)
    shown, audited = pairs["tasks"]
    assert len(shown) >= BEFORE_KILL
    for what, (shown, audited) in pairs.items():
        assert shown == audited, (what, shown - audited, audited - shown)
    assert pairs["replies"][0], "no operator reply was stored before the kill"
    verify = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "operator_server", "audit", "verify", "--store-path", str(db)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(verify.communicate(), 60)
    assert verify.returncode == 0, out.decode()
    assert "audit chain ok" in out.decode()
