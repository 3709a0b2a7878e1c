"""What one task costs in work that is easy to do twice: serialising its
record for the store, and minting worker credentials (issue 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from operator_server.engine.capabilities import CapabilityIssuer
from operator_server.engine.tasks import Task
from operator_server.store import sqlite
from tests.conftest import Server, create_task, wait_task
from tests.wsop import connect, mint, thin_path_task


def counted(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[Any]:
    """Record each call of ``owner.name`` (its first argument after self, if any)."""
    calls: list[Any] = []
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[1] if len(args) > 1 else None)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


async def test_each_write_of_a_task_serialises_its_record_once(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await server(store__path=str(tmp_path / "s.sqlite"))
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    records = counted(monkeypatch, Task, "to_record")
    writes = counted(monkeypatch, sqlite.SQLiteStore, "_task_write")
    encoded: list[Any] = []
    dumps = sqlite.wire_json.dumps_bytes

    def encoding(value: Any) -> bytes:
        encoded.append(value)
        return dumps(value)

    monkeypatch.setattr(sqlite.wire_json, "dumps_bytes", encoding)
    task = await thin_path_task(client, ws, sid)
    # created, its attempt started, its end: three writes, each one record
    # built once and encoded once.
    assert [r["id"] for r in writes] == [task["id"]] * 3
    assert len(records) == 3
    assert [sum(value is record for value in encoded) for record in writes] == [1, 1, 1]


async def test_credentials_are_minted_only_for_an_attempt_a_spawn_frame_carries(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await server()
    minted = counted(monkeypatch, CapabilityIssuer, "mint")
    local = await create_task(client, agent="echo", directive={"n": 1})
    assert (await wait_task(client, local["id"]))["status"] == "passed"
    assert minted == []  # a local agent gets no worker credentials
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    task = await thin_path_task(client, ws, sid)
    assert minted == [task["id"]]  # its one spawn
