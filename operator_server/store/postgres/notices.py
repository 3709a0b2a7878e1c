"""The PostgreSQL store's notification operations, a mixin (``Store``'s
notify section): writes through the group-commit writer, reads on the pool.
Each node loads only the notices it queued itself (``node``), and adopts
those of nodes whose heartbeat lapsed (``adopt_notices``).  A node that froze
past its heartbeat wakes with its queue in memory: cutting or recording a row
that is no longer its own (a survivor adopted it, and may have sent and
deleted it since) is refused (``Fenced``), so nothing is sent twice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from operator_server.store.base import Fenced, Notice, NoticeMessage
from operator_server.store.notice_rows import (
    DELETE_GIVEN_UP,
    MESSAGE_COLUMNS,
    NOTICE_COLUMNS,
    decode_message,
    decode_notice,
    message_row,
    notice_row,
)
from operator_server.store.postgres.writer import GroupCommitWriter

INSERT_NOTICE = (
    f"INSERT INTO notices ({NOTICE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) "
    "ON CONFLICT (id) DO NOTHING"
)
INSERT_MESSAGE = (
    f"INSERT INTO notice_messages ({MESSAGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
)

# A node whose heartbeat is not current (lapsed, or buried: no row) sends
# nothing more; whatever it queued or still owes becomes the caller's.  The
# row lock and PostgreSQL's re-check of the WHERE on the row as it is after a
# concurrent UPDATE commits (READ COMMITTED) make one survivor win each row:
# for the other, the row's node is a live node by then.
_ORPHANED = (
    "node <> $1 AND NOT EXISTS (SELECT 1 FROM cluster_nodes n "
    "WHERE n.node_id = {table}.node AND n.expires_at > now())"
)
ADOPT_NOTICES = (
    f"UPDATE notices SET node = $1 WHERE {_ORPHANED.format(table='notices')} "
    f"RETURNING {NOTICE_COLUMNS}"
)
# Given-up messages (``due_at`` null) are adopted too, so that none is left
# under a node that no longer exists; only the owed ones are returned.
ADOPT_MESSAGES = (
    f"UPDATE notice_messages SET node = $1 WHERE {_ORPHANED.format(table='notice_messages')} "
    f"RETURNING {MESSAGE_COLUMNS}"
)


class NoticeOps(GroupCommitWriter):
    _node_id: str

    async def put_notices(self, notices: Sequence[Notice]) -> None:
        rows = [notice_row(n) for n in notices]

        async def work(c: asyncpg.Connection) -> None:
            await c.executemany(INSERT_NOTICE, rows)

        await self._call(work, "queue notices")

    async def cut_notice_message(self, message: NoticeMessage, notice_ids: Sequence[str]) -> None:
        # The node cutting it (this one): a notice no longer queued under it is refused.
        row, ids, me = message_row(message), list(notice_ids), message.node

        async def work(c: asyncpg.Connection) -> None:
            await c.execute(INSERT_MESSAGE, *row)
            status = await c.execute(
                "UPDATE notices SET message_id = $1 WHERE id = ANY($2::text[]) AND node = $3",
                message.id,
                ids,
                me,
            )
            if status != f"UPDATE {len(set(ids))}":  # the op (and its insert) fails alone
                raise Fenced(f"notices of message {message.id} were adopted by another node")

        await self._call(work, f"cut notice message {message.id}")

    async def record_notice_message(self, message: NoticeMessage) -> None:
        m, me = message, message.node  # its sender (this node)

        async def work(c: asyncpg.Connection) -> None:
            status = await c.execute(
                "UPDATE notice_messages SET due_at = $1, attempts = $2, last_error = $3, "
                "data = $4 WHERE id = $5 AND node = $6",
                m.due_at,
                m.attempts,
                m.last_error,
                message_row(m)[-1],
                m.id,
                me,
            )
            if status == "UPDATE 0":
                raise Fenced(f"notification message {m.id} was adopted by another node")
            if m.due_at is None:
                await c.execute("DELETE FROM notices WHERE message_id = $1", m.id)
                if m.last_error is None:
                    await c.execute("DELETE FROM notice_messages WHERE id = $1", m.id)

        await self._call(work, f"record notice message {m.id}")

    async def delete_given_up(self, created_before: float, limit: int) -> int:
        sql, cutoff = DELETE_GIVEN_UP.format("$1", "$2"), float(created_before)
        what = "delete given-up notice messages"
        status = await self._call(lambda c: c.execute(sql, cutoff, limit), what)
        return int(str(status).rsplit(" ", 1)[-1])  # "DELETE <n>"

    async def load_notices(self, node: str) -> tuple[list[Notice], list[NoticeMessage]]:
        async def work(c: asyncpg.Connection) -> tuple[list[Any], list[Any]]:
            notices = await c.fetch(
                f"SELECT {NOTICE_COLUMNS} FROM notices WHERE node = $1 ORDER BY queued_at, id",
                node,
            )
            messages = await c.fetch(
                f"SELECT {MESSAGE_COLUMNS} FROM notice_messages "
                "WHERE node = $1 AND due_at IS NOT NULL ORDER BY created_at, id",
                node,
            )
            return notices, messages

        notices, messages = await self._read(work, "load notices")
        return [decode_notice(tuple(r)) for r in notices], [
            decode_message(tuple(r)) for r in messages
        ]

    async def adopt_notices(self) -> tuple[list[Notice], list[NoticeMessage]]:
        me = self._node_id

        async def work(c: asyncpg.Connection) -> tuple[list[Any], list[Any]]:
            async with c.transaction():
                notices = await c.fetch(ADOPT_NOTICES, me)
                messages = await c.fetch(ADOPT_MESSAGES, me)
            return notices, messages

        notices, messages = await self._read(work, "adopt notices of stopped nodes")
        adopted = sorted(
            (decode_notice(tuple(r)) for r in notices), key=lambda n: (n.queued_at, n.id)
        )
        owed = sorted(
            (m for m in (decode_message(tuple(r)) for r in messages) if m.due_at is not None),
            key=lambda m: (m.created_at, m.id),
        )
        return adopted, owed
