"""Durable state: operator sessions and tasks.

``open_store(settings)`` picks the implementation: SQLite for a file path (the
default, ``data/operator-server.sqlite``), a process-local ``MemoryStore`` for
``":memory:"``.
"""

from operator_server.config import Settings
from operator_server.store.base import (
    Delivery,
    Events,
    Row,
    SessionRecord,
    Store,
    StoredTask,
    StoreError,
    StoreLocked,
    TaskEvent,
)
from operator_server.store.memory import MemoryStore
from operator_server.store.sqlite import SQLiteStore


def open_store(settings: Settings) -> Store:
    if settings.store.path == ":memory:":
        return MemoryStore()
    return SQLiteStore(settings.store.path)


__all__ = [
    "Delivery",
    "Events",
    "MemoryStore",
    "Row",
    "SQLiteStore",
    "SessionRecord",
    "Store",
    "StoreError",
    "StoreLocked",
    "StoredTask",
    "TaskEvent",
    "open_store",
]
