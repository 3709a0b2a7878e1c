"""Durable state: operator sessions, tasks and API keys.

``open_store(settings)`` picks the implementation: PostgreSQL when
``store.url`` is set (the store a cluster of nodes shares), else SQLite for a
file path (the default, ``$XDG_DATA_HOME/operator-server/operator-server.sqlite``),
or a process-local ``MemoryStore`` for ``":memory:"``.
"""

from operator_server.config import Settings
from operator_server.store.base import (
    NO_COURSE,
    AdoptNotices,
    Delivery,
    Events,
    Fenced,
    KeyRecord,
    LinkUse,
    Notice,
    NoticeMessage,
    PendingRow,
    RequestCourse,
    RolesTaken,
    Row,
    SessionRecord,
    Store,
    StoredTask,
    StoreError,
    StoreLocked,
    TaskEvent,
)
from operator_server.store.memory import MemoryStore
from operator_server.store.postgres import PostgresStore
from operator_server.store.sqlite import SQLiteStore


def open_store(settings: Settings) -> Store:
    if settings.store.url:
        return PostgresStore(settings.store.url)
    if settings.store.path == ":memory:":
        return MemoryStore()
    return SQLiteStore(settings.store.path)


__all__ = [
    "NO_COURSE",
    "AdoptNotices",
    "Delivery",
    "Events",
    "Fenced",
    "KeyRecord",
    "LinkUse",
    "MemoryStore",
    "Notice",
    "NoticeMessage",
    "PendingRow",
    "PostgresStore",
    "RequestCourse",
    "RolesTaken",
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
