"""A process-local store (``store.path = ":memory:"``): fast, and forgets on exit.

It keeps the same records the SQLite store would, so everything above the store
behaves the same with either.
"""

from __future__ import annotations

from typing import Any

from operator_server.store.base import Row, SessionRecord, Store, decode_task
from operator_server.wire import json


class MemoryStore(Store):
    def __init__(self) -> None:
        self.sessions: dict[str, SessionRecord] = {}
        self.tasks: dict[str, dict[str, Any]] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def put_session(self, record: SessionRecord) -> None:
        self.sessions[record.sid] = record

    def touch_session_soon(self, sid: str, last_seen_at: float) -> None:
        if (old := self.sessions.get(sid)) is not None:
            self.sessions[sid] = SessionRecord(
                old.sid, old.token_sha256, old.roles, old.desc, old.created_at, last_seen_at
            )

    async def delete_session(self, sid: str) -> None:
        self.sessions.pop(sid, None)

    async def load_sessions(self) -> list[Row]:
        return [Row(sid, rec) for sid, rec in self.sessions.items()]

    async def put_task(self, record: dict[str, Any]) -> None:
        self.put_task_soon(record)

    def put_task_soon(self, record: dict[str, Any]) -> None:
        self.tasks[record["id"]] = record

    async def load_tasks(self) -> list[Row]:
        # A round trip through the same JSON the SQLite store writes: a copy that
        # cannot recurse, and the same rows fail to load here as there.
        out = []
        for tid, rec in self.tasks.items():
            try:
                out.append(Row(tid, decode_task(json.dumps(rec))))
            except Exception as exc:  # one bad row is skipped, whatever is wrong with it
                out.append(Row(tid, None, f"cannot decode: {exc}"))
        return out

    async def delete_tasks(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            self.tasks.pop(task_id, None)
