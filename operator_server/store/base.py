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


class StoreError(Exception):
    """A write or read failed; the message says what the database said."""


class StoreLocked(StoreError):
    """Another process holds the store; the message names the file and its PID."""


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


class Store(ABC):
    @abstractmethod
    def claim(self) -> None:
        """Take this process's exclusive hold on the store, or raise ``StoreLocked``.

        Called before anything else touches the store (``open`` calls it too);
        held until ``close``.
        """

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def flush(self) -> None:
        """Return once every write queued so far is committed."""

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
