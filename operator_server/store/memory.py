"""A process-local store (``store.path = ":memory:"``): fast, and forgets on exit.

It keeps the same records, with the same ``seq`` paging, as the SQLite store, so
everything above the store behaves the same with either.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

from operator_server.audit.chain import Anchor
from operator_server.audit.record import GENESIS, AuditRow, chain
from operator_server.store.base import (
    Audit,
    AuditQuery,
    Delivery,
    Events,
    KeyRecord,
    LinkUse,
    Notice,
    NoticeMessage,
    Row,
    SessionRecord,
    Store,
    StoredTask,
    TaskEvent,
    ask_row,
    decode_task,
    output_row,
    with_asks,
    with_outputs,
)
from operator_server.wire import json


class MemoryStore(Store):
    def __init__(self) -> None:
        self.sessions: dict[str, SessionRecord] = {}
        self.keys: dict[str, KeyRecord] = {}  # insertion order: oldest first
        self.tasks: dict[str, dict[str, Any]] = {}
        self._seq_of: dict[str, int] = {}
        self._order: list[int] = []  # every stored seq, ascending
        self._id_at: dict[int, str] = {}
        self._last_seq = 0
        self.events: list[TaskEvent] = []  # ascending id
        self._last_event_id = 0
        self.deliveries: dict[str, float] = {}
        # Each task's asks, stored apart as the other stores do: ask_id ->
        # (attempt, JSON text), in the order first stored.
        self.asks: dict[str, dict[str, tuple[int, str]]] = {}
        # Each task's outputs, appended apart likewise: (attempt, JSON text).
        self.outputs: dict[str, list[tuple[int, str]]] = {}
        # The audit chain, oldest first, and where it goes on after pruning.
        self.audit: list[AuditRow] = []
        self.anchor: Anchor | None = None
        self.link_signing_key: str | None = None
        self.link_uses: dict[str, LinkUse] = {}
        # Notifications: queued notices and open (or given-up) messages.
        self.notices: dict[str, Notice] = {}
        self.notice_messages: dict[str, NoticeMessage] = {}

    def claim(self) -> None:
        return None  # no other process can reach it

    async def open(self) -> None:
        return None

    async def flush(self) -> None:
        return None  # every write is done when it returns

    async def close(self) -> None:
        return None

    async def put_session(self, record: SessionRecord, *, audit: Audit = ()) -> None:
        self.sessions[record.sid] = record
        self._append(audit)

    async def hand_over_session(
        self, source: SessionRecord, target: SessionRecord, *, audit: Audit = ()
    ) -> None:
        self.sessions[source.sid] = source
        self.sessions[target.sid] = target
        self._append(audit)

    def touch_session_soon(self, sid: str, last_seen_at: float, *, audit: Audit = ()) -> None:
        self._append(audit)
        if (old := self.sessions.get(sid)) is not None:
            self.sessions[sid] = dataclasses.replace(old, last_seen_at=last_seen_at)

    async def delete_session(self, sid: str, *, audit: Audit = ()) -> None:
        self.sessions.pop(sid, None)
        self._append(audit)

    async def load_sessions(self) -> list[Row]:
        return [Row(sid, rec) for sid, rec in self.sessions.items()]

    async def link_key(self, candidate: str) -> str:
        if self.link_signing_key is None:
            self.link_signing_key = candidate
        return self.link_signing_key

    async def claim_link(self, use: LinkUse) -> LinkUse | None:
        first = self.link_uses.setdefault(use.link_id, use)
        return None if first is use else first

    async def release_link(self, link_id: str) -> None:
        self.link_uses.pop(link_id, None)

    async def link_use(self, link_id: str) -> LinkUse | None:
        return self.link_uses.get(link_id)

    async def put_key(self, record: KeyRecord, audit: Audit = ()) -> None:
        self.keys[record.id] = record
        self._append(audit)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        return self.keys.get(key_id)

    async def list_keys(self) -> list[KeyRecord]:
        return list(self.keys.values())

    async def revoke_key(self, key_id: str, at: float, audit: Audit = ()) -> KeyRecord | None:
        found = self.keys.get(key_id)
        if found is not None and found.revoked_at is None:
            found = self.keys[key_id] = dataclasses.replace(found, revoked_at=at)
        if found is not None:
            self._append(audit)
        return found

    async def put_task(
        self,
        record: dict[str, Any],
        events: Events = (),
        *,
        deliver_at: float | None = None,
        audit: Audit = (),
        ended_as: dict[str, Any] | None = None,
    ) -> None:
        del ended_as  # one process: nobody else to tell
        self.put_task_soon(record, events, deliver_at=deliver_at, audit=audit)

    def put_task_soon(
        self,
        record: dict[str, Any],
        events: Events = (),
        *,
        deliver_at: float | None = None,
        audit: Audit = (),
    ) -> None:
        self._put(record, events)
        self._append(audit)
        if deliver_at is not None:
            self.deliveries[record["id"]] = deliver_at
        self._events_committed(events)

    def put_ask_soon(self, task_id: str, attempt: int, ask: dict[str, Any]) -> None:
        _, number, ask_id, data = ask_row(task_id, attempt, ask)
        self.asks.setdefault(task_id, {})[ask_id] = (number, data)

    async def put_output(
        self, task_id: str, attempt: int, output: list[Any], *, audit: Audit = ()
    ) -> None:
        await self.put_output_soon(task_id, attempt, output, audit=audit)

    def put_output_soon(
        self, task_id: str, attempt: int, output: list[Any], *, audit: Audit = ()
    ) -> asyncio.Future[None]:
        _, number, data = output_row(task_id, attempt, output)
        self.outputs.setdefault(task_id, []).append((number, data))
        self._append(audit)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def put_events_soon(self, events: Events, *, audit: Audit = ()) -> None:
        self._add_events(events)
        self._append(audit)
        self._events_committed(events)

    # -- the audit trail ---------------------------------------------------

    def _append(self, entries: Audit) -> None:
        if not entries:
            return
        if self.audit:
            seq, prev = self.audit[-1].seq, self.audit[-1].hash
        elif self.anchor is not None:
            seq, prev = self.anchor.seq, self.anchor.hash
        else:
            seq, prev = 0, GENESIS
        self.audit.extend(chain(seq + 1, self.audit_node, list(entries), prev))

    async def append_audit(self, entries: Audit) -> None:
        self._append(entries)

    async def audit_page(self, query: AuditQuery) -> list[AuditRow]:
        start = bisect.bisect_right([r.seq for r in self.audit], query.after)
        return [r for r in self.audit[start:] if query.matches(r)][: query.limit]

    async def audit_anchor(self) -> Anchor | None:
        return self.anchor

    async def prune_audit(self, before: float) -> int:
        keep = next(
            (i for i, r in enumerate(self.audit) if r.entry.at >= before), len(self.audit) - 1
        )
        if keep <= 0:
            return 0
        last = self.audit[keep - 1]
        self.anchor = Anchor(last.seq, last.hash)
        del self.audit[:keep]
        return keep

    def _add_events(self, events: Events) -> None:
        for event in events:  # numbered as stored, like every store
            self._last_event_id += 1
            event.id = self._last_event_id
        self.events.extend(events)

    async def last_event_id(self) -> int:
        return self._last_event_id

    async def load_events(self, after_id: int, task_id: str | None, limit: int) -> list[TaskEvent]:
        start = bisect.bisect_right([e.id for e in self.events], after_id)
        out = []
        for event in self.events[start:]:
            if task_id is None or event.task_id == task_id:
                out.append(event)
                if len(out) >= limit:
                    break
        return out

    async def put_notices(self, notices: Sequence[Notice]) -> None:
        for notice in notices:
            self.notices.setdefault(notice.id, notice)

    async def cut_notice_message(self, message: NoticeMessage, notice_ids: Sequence[str]) -> None:
        self.notice_messages[message.id] = message
        for nid in notice_ids:
            if (notice := self.notices.get(nid)) is not None:
                self.notices[nid] = dataclasses.replace(notice, message_id=message.id)

    async def record_notice_message(self, message: NoticeMessage) -> None:
        if message.id not in self.notice_messages:
            return
        self.notice_messages[message.id] = message
        if message.due_at is None:
            self.notices = {k: n for k, n in self.notices.items() if n.message_id != message.id}
            if message.last_error is None:
                del self.notice_messages[message.id]

    async def delete_given_up(self, created_before: float, limit: int) -> int:
        old = sorted(
            (m.created_at, m.id)
            for m in self.notice_messages.values()
            if m.due_at is None and m.created_at < created_before
        )[:limit]
        for _, message_id in old:
            del self.notice_messages[message_id]
        return len(old)

    async def load_notices(self, node: str) -> tuple[list[Notice], list[NoticeMessage]]:
        del node  # one process: every notice is this node's
        notices = sorted(self.notices.values(), key=lambda n: (n.queued_at, n.id))
        messages = [m for m in self.notice_messages.values() if m.due_at is not None]
        return notices, sorted(messages, key=lambda m: (m.created_at, m.id))

    async def next_deliveries(self, limit: int) -> list[Delivery]:
        soonest = sorted((due, tid) for tid, due in self.deliveries.items())[:limit]
        return [Delivery(tid, due) for due, tid in soonest]

    async def record_delivery(
        self, task_id: str, record: dict[str, Any] | None, due_at: float | None
    ) -> None:
        if record is not None and task_id in self.tasks:
            self.tasks[task_id] = record
        if due_at is None or task_id not in self.tasks:
            self.deliveries.pop(task_id, None)
        else:
            self.deliveries[task_id] = due_at

    def _put(self, record: dict[str, Any], events: Events) -> None:
        self._add_events(events)
        task_id = record["id"]
        if task_id not in self._seq_of:
            self._last_seq += 1
            self._seq_of[task_id] = self._last_seq
            self._order.append(self._last_seq)
            self._id_at[self._last_seq] = task_id
        self.tasks[task_id] = record

    def _row(self, task_id: str) -> Row:
        # A round trip through the same JSON the SQLite store writes: a copy that
        # cannot recurse, and the same rows fail to load here as there.
        try:
            record = decode_task(json.dumps(self.tasks[task_id]))
            record = with_asks(record, self.asks.get(task_id, {}).values())
            return Row(task_id, with_outputs(record, self.outputs.get(task_id, [])))
        except Exception as exc:  # one bad row is skipped, whatever is wrong with it
            return Row(task_id, None, f"cannot decode: {exc}")

    async def load_tasks(self, statuses: Collection[str]) -> list[Row]:
        return [self._row(tid) for tid, rec in self.tasks.items() if rec["status"] in statuses]

    async def get_task(self, task_id: str) -> Row | None:
        return self._row(task_id) if task_id in self.tasks else None

    async def task_seq(self, task_id: str) -> int | None:
        return self._seq_of.get(task_id)

    async def list_tasks(self, status: str | None, after_seq: int, limit: int) -> list[StoredTask]:
        out: list[StoredTask] = []
        for seq in self._order[bisect.bisect_right(self._order, after_seq) :]:
            task_id = self._id_at[seq]
            if status is None or self.tasks[task_id]["status"] == status:
                out.append(StoredTask(seq, self._row(task_id)))
                if len(out) >= limit:
                    break
        return out

    async def count_tasks(self) -> dict[str, int]:
        return dict(Counter(rec["status"] for rec in self.tasks.values()))

    async def delete_finished(
        self, statuses: Collection[str], updated_before: float, limit: int
    ) -> dict[str, int]:
        old = sorted(
            (rec["updated_at"], tid)
            for tid, rec in self.tasks.items()
            if rec["status"] in statuses and rec["updated_at"] < updated_before
        )[:limit]
        gone: Counter[str] = Counter()
        for _, task_id in old:
            gone[self.tasks.pop(task_id)["status"]] += 1
            self.deliveries.pop(task_id, None)
            self.asks.pop(task_id, None)
            self.outputs.pop(task_id, None)
            seq = self._seq_of.pop(task_id)
            del self._id_at[seq]
            del self._order[bisect.bisect_left(self._order, seq)]
        if old:
            self.events = [e for e in self.events if e.task_id in self.tasks]
        return dict(gone)
