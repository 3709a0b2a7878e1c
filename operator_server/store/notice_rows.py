"""Notification rows as both SQL stores keep them: the columns, and a row to
and from ``Notice`` / ``NoticeMessage`` (``data`` is JSON text)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from operator_server.store.base import Notice, NoticeMessage
from operator_server.wire import json as wire_json

NOTICE_COLUMNS = "id, batch, node, queued_at, data, message_id"
MESSAGE_COLUMNS = "id, batch, node, created_at, due_at, attempts, last_error, data"
# Retention of messages given up (``Store.delete_given_up``): the cutoff and the
# batch are each store's placeholders.
DELETE_GIVEN_UP = (
    "DELETE FROM notice_messages WHERE id IN (SELECT id FROM notice_messages "
    "WHERE due_at IS NULL AND created_at < {} ORDER BY created_at, id LIMIT {})"
)


def notice_row(n: Notice) -> tuple[Any, ...]:
    return (n.id, n.batch, n.node, n.queued_at, wire_json.dumps_bytes(n.data).decode(), None)


def decode_notice(row: Sequence[Any]) -> Notice:
    nid, batch, node, queued_at, data, message_id = row
    return Notice(nid, batch, node, float(queued_at), wire_json.loads(data), message_id)


def message_row(m: NoticeMessage) -> tuple[Any, ...]:
    data = wire_json.dumps_bytes(m.data).decode()
    return (m.id, m.batch, m.node, m.created_at, m.due_at, m.attempts, m.last_error, data)


def decode_message(row: Sequence[Any]) -> NoticeMessage:
    mid, batch, node, created_at, due_at, attempts, last_error, data = row
    due = None if due_at is None else float(due_at)
    return NoticeMessage(
        mid, batch, node, float(created_at), due, int(attempts), last_error, wire_json.loads(data)
    )
