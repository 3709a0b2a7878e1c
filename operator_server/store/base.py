"""The store interface the engine and the operator directory write through.

Two kinds of write:

* **durable** (``await put_session(...)``, ``await put_task(...)``,
  ``await delete_session(...)``): returns once the change is committed to disk;
  a failure raises ``StoreError`` and the caller undoes its in-memory change.
  These back every 201/202/204.
* **soon** (``put_task_soon``, ``touch_session_soon``): queued in order behind
  everything before it, committed shortly after, never blocking the caller.
  They record state transitions a restart recovers from.

Records are plain JSON-able values snapshotted by the caller at the moment of the
change, so a later mutation cannot leak into an earlier write.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from operator_server.wire import json


class StoreError(Exception):
    """A write or read failed; the message says what the database said."""


@dataclass(frozen=True)
class SessionRecord:
    sid: str
    token_sha256: str
    roles: list[str]
    desc: str
    created_at: float
    last_seen_at: float


@dataclass(frozen=True)
class Row:
    """A stored row as loaded: its key and either its decoded value or why not."""

    key: str
    value: Any
    error: str | None = None


def decode_task(data: Any) -> dict[str, Any]:
    """A stored task's JSON text as its record; ``ValueError`` saying why not.

    Bounded like every JSON this server reads (``STORED_MAX_DEPTH``), so a row
    written by an older, unbounded server cannot recurse too deep.
    """
    if not isinstance(data, str | bytes):
        raise ValueError(f"data is {type(data).__name__}, not JSON text")
    record = json.loads(data, json.STORED_MAX_DEPTH)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    return record


def decode_session(
    sid: Any, token_sha256: Any, roles: Any, desc: Any, created_at: Any, last_seen_at: Any
) -> SessionRecord:
    """A stored session row as its record; ``ValueError`` saying which column is bad."""
    role_list = json.loads(roles, json.STORED_MAX_DEPTH) if isinstance(roles, str) else roles
    if not isinstance(role_list, list) or not all(isinstance(r, str) for r in role_list):
        raise ValueError("roles: not a JSON list of strings")
    for name, value in (("sid", sid), ("token_sha256", token_sha256), ("desc", desc)):
        if not isinstance(value, str):
            raise ValueError(f"{name}: not text")
    for name, value in (("created_at", created_at), ("last_seen_at", last_seen_at)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name}: not a number")
    return SessionRecord(sid, token_sha256, role_list, desc, float(created_at), float(last_seen_at))


class Store(ABC):
    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def put_session(self, record: SessionRecord) -> None: ...

    @abstractmethod
    def touch_session_soon(self, sid: str, last_seen_at: float) -> None: ...

    @abstractmethod
    async def delete_session(self, sid: str) -> None: ...

    @abstractmethod
    async def load_sessions(self) -> list[Row]: ...

    @abstractmethod
    async def put_task(self, record: dict[str, Any]) -> None: ...

    @abstractmethod
    def put_task_soon(self, record: dict[str, Any]) -> None: ...

    @abstractmethod
    async def load_tasks(self) -> list[Row]: ...

    @abstractmethod
    async def delete_tasks(self, task_ids: list[str]) -> None: ...
