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

The store is the source of truth for finished tasks: the engine keeps only live
ones in memory, and reads the rest from here (``get_task``, ``list_tasks``).
Every task gets a ``seq`` when first stored — increasing, never reused — and
lists page by it (keyset paging): a page costs the same at any depth, and a
task changing status between pages neither repeats nor shifts the listing.
The store knows nothing of task semantics: callers name the statuses they mean.

Task events (the SSE streams) are stored with the write that commits the state
change they describe — one transaction, no extra commit — and each carries an
``id`` the engine assigns in the order it queues writes, so ids increase in
commit order.  Once a write commits, the store hands its events to the
observer set with ``observe_events`` (the live fan-out), in commit order: a
subscriber never sees an event a restart would not show.  Events go with their
task at retention.

Worker asks (``put_ask_soon``) are stored apart from their task, one row per
ask, rewritten only when that ask changes: appending an ask costs the ask, not
the task with every ask before it.  Every read of a task puts them back into
its record (``with_asks``), so what is read is what the engine had; they go
with their task at retention.  An attempt's outputs (``put_output``) are
stored the same way, one row per output, appended once and never rewritten.

Webhook deliveries: a finished task with a ``callback_url`` gets a delivery row
(due time) in the same commit as its end; ``record_delivery`` updates the task
and the row together after each try.

The audit trail (``operator_server/audit``): a write that commits a decision
takes its ``audit`` entries along, and the store appends them to the hash
chain in the same commit (a batch's entries as it ends, in queue order), so a
decision a restart shows is always audited and an audited one always shown.
Events held back to ride with a task's next write hold its entries back too.
Audit rows are not task rows: task retention never removes them;
``prune_audit`` removes whole prefixes and remembers where the chain went on.
"""

# size: the store contract: every record and method the stores implement, each with
# the guarantee callers rely on.
from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from operator_server.audit.chain import Anchor
from operator_server.audit.record import AuditEntry, AuditRow
from operator_server.logs import get_logger
from operator_server.wire import json
from operator_server.wire.events import FIELDS
from operator_server.wire.times import iso

log = get_logger(__name__)
_YEAR_10000 = 253_402_300_800  # epoch seconds


class StoreError(Exception):
    """A write or read failed; the message says what the database said."""


class RolesTaken(StoreError):
    """A shared store already gives some of these roles to another session.

    ``conflicts`` maps each role to its holder's sid.  Only a store that many
    processes share raises it; in one process the engine's role map decides first.
    """

    def __init__(self, conflicts: dict[str, str]) -> None:
        super().__init__(", ".join(f"{r!r} is held by {s}" for r, s in conflicts.items()))
        self.conflicts = conflicts


class Fenced(StoreError):
    """A shared store: another node took this task over (its lease is theirs,
    or the task's epoch moved on since this node took it, also once it ended),
    so this node's write of it is refused — a node cut off or frozen for longer
    than its lease never overwrites the work of the node that took its tasks."""


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
    # The principal's name that minted it (``auth/principal.py``); "" for a
    # session stored before principals existed.
    minted_by: str = ""


@dataclass(frozen=True)
class KeyRecord:
    """An API key as stored (``auth/keys.py`` makes them): never its secret,
    only ``secret_sha256``.  Times are epoch seconds; ``expires_at`` None: no
    expiry; ``revoked_at`` None: not revoked.  A revoked key keeps its row, so
    using it answers ``key_revoked`` rather than an unknown key's refusal."""

    id: str
    name: str
    scopes: list[str]
    secret_sha256: str
    created_at: float
    expires_at: float | None = None
    note: str = ""
    revoked_at: float | None = None


@dataclass(frozen=True)
class Row:
    """A stored row as loaded: its key and either its decoded value or why not."""

    key: str
    value: Any
    error: str | None = None


@dataclass(frozen=True)
class StoredTask:
    """One task as listed: its paging position and its row."""

    seq: int
    row: Row


class TaskEvent:
    """One event of a task's stream, kept as its values: ``data`` (the JSON
    object an SSE ``data:`` line carries, ``wire/events.py``) and ``text`` are
    built when first asked for.  Most events are stored and never streamed, and
    building each one's dict, timestamp text and JSON up front was most of what
    events cost (``make bench ARGS=overhead``).

    ``id`` is given by the store as it queues the event's write (the engine
    builds events with 0): ids then increase in commit order, whichever write
    an event rides with.  Nothing else changes an event once built.

    ``stored()`` is what a store keeps: ``[type, at, agent, status, *values]``
    with ``at`` in epoch seconds.  Rows written before it hold the JSON object
    itself; ``from_stored`` reads both.
    """

    __slots__ = (
        "_data",
        "_given",
        "_text",
        "agent",
        "at",
        "id",
        "status",
        "task_id",
        "type",
        "values",
    )

    def __init__(
        self,
        id: int,
        task_id: str,
        type: str,
        at: float,
        agent: str,
        status: str,
        values: tuple[Any, ...] = (),
    ) -> None:
        self.id = id
        self.task_id = task_id
        self.type = type
        self.at = at
        self.agent = agent
        self.status = status
        self.values = values
        self._data: dict[str, Any] | None = None
        self._text: str | None = None
        self._given = False  # built from its JSON object (``of_data``)

    @classmethod
    def of_data(cls, id: int, task_id: str, data: dict[str, Any]) -> TaskEvent:
        """An event given as its JSON object (a row in the older stored form)."""
        type, agent, status = (str(data.get(name, "")) for name in ("type", "agent", "status"))
        event = cls(id, task_id, type, 0.0, agent, status)
        event._data = data
        event._given = True
        return event

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            data = {
                "task_id": self.task_id,
                "type": self.type,
                "at": iso(self.at),
                "agent": self.agent,
                "status": self.status,
            }
            for name, value in zip(FIELDS.get(self.type, ()), self.values, strict=False):
                if value is not None:
                    data[name] = value
            self._data = data
        return self._data

    @property
    def text(self) -> str:
        """``data`` as compact JSON, encoded once for every stream."""
        if self._text is None:
            self._text = json.dumps_bytes(self.data).decode()
        return self._text

    def stored(self) -> Any:
        """The JSON value a store keeps for this event."""
        if self._given:
            return self._data
        return [self.type, self.at, self.agent, self.status, *self.values]

    @classmethod
    def from_stored(cls, id: int, task_id: str, value: Any) -> TaskEvent:
        """What ``stored`` gave, read back; ``ValueError`` when it is not that."""
        if isinstance(value, dict):
            return cls.of_data(id, task_id, value)
        if not isinstance(value, list) or len(value) < 4:
            raise ValueError("not an event: expected [type, at, agent, status, ...] or an object")
        type, at, agent, status, *values = value
        if not (
            isinstance(type, str)
            and isinstance(at, int | float)
            and not isinstance(at, bool)
            and 0 <= at < _YEAR_10000  # one ``iso`` can write: a stream never fails on it
            and isinstance(agent, str)
            and isinstance(status, str)
            and len(values) <= len(FIELDS.get(type, ()))
        ):
            raise ValueError(f"not an event: {value!r:.80}")
        return cls(id, task_id, type, float(at), agent, status, tuple(values))

    @classmethod
    def from_row(cls, event_id: int, task_id: str, text: str) -> TaskEvent:
        """One stored event's JSON text as the event."""
        event = cls.from_stored(
            int(event_id), str(task_id), json.loads(text, json.STORED_MAX_DEPTH)
        )
        if event._given:
            event._text = text  # already encoded
        return event

    def renumbered(self, id: int) -> TaskEvent:
        """The same event under another id."""
        again = TaskEvent(
            id, self.task_id, self.type, self.at, self.agent, self.status, self.values
        )
        again._data, again._text, again._given = self._data, self._text, self._given
        return again

    def __repr__(self) -> str:
        return f"TaskEvent({self.id}, {self.task_id!r}, {self.type!r})"


def decode_event_batch_rows(rows: Iterable[Sequence[Any]]) -> list[TaskEvent]:
    """Stored event rows ``(first_id, task_id, data)``, each holding a JSON
    array of consecutive events of one task (ids ``first_id``, ``first_id + 1``,
    ...), as events; a bad row is logged and skipped."""
    out: list[TaskEvent] = []
    for first_id, owner, data in rows:
        try:
            batch = json.loads(data, json.STORED_MAX_DEPTH)
            if not isinstance(batch, list):
                raise ValueError("not a JSON array")
            task_id = str(owner)
            out.extend(
                [
                    TaskEvent.from_stored(int(first_id) + i, task_id, value)
                    for i, value in enumerate(batch)
                ]
            )
        except Exception as exc:  # one bad row is skipped, whatever is wrong with it
            log.warning(
                "skipping stored events that cannot be decoded", first_id=first_id, error=str(exc)
            )
    return out


@dataclass(frozen=True)
class LinkUse:
    """The one decision made through an action link: which, by whom, when."""

    link_id: str
    req_id: str
    action: str
    principal: str
    at: float


LINK_USE_COLUMNS = "link_id, req_id, action, principal, at"


@dataclass(frozen=True)
class Delivery:
    """A webhook delivery still to be made: the task and when it is next due."""

    task_id: str
    due_at: float


@dataclass(frozen=True)
class Notice:
    """One request's news for one recipient of one notification rule
    (``operator_server/notify``), queued until a message carries it.

    ``id`` is unique per (rule, recipient, request, what happened): queueing
    it twice stores it once.  ``batch`` names the (rule, recipient) one
    message is for; ``message_id`` the message cut to carry it (None: the
    next one)."""

    id: str
    batch: str
    node: str
    queued_at: float
    data: dict[str, Any]
    message_id: str | None = None


@dataclass(frozen=True)
class NoticeMessage:
    """A message cut for one batch: ``id`` is its idempotency key, the same on
    every try; ``due_at`` its next try (None: settled: sent, or given up with
    ``last_error``); ``data`` what was fixed when it was cut (its links)."""

    id: str
    batch: str
    node: str
    created_at: float
    due_at: float | None
    attempts: int = 0
    last_error: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


Events = Sequence[TaskEvent]
Audit = Sequence[AuditEntry]
# What stopped nodes had queued and still owed, taken over by this node
# (``ClusterStore.adopt_notices``): the notices, and the messages cut for them.
AdoptNotices = Callable[[], Awaitable[tuple[list[Notice], list[NoticeMessage]]]]


@dataclass(frozen=True)
class AuditQuery:
    """A page of the audit trail: rows with ``seq > after``, oldest first, that
    match every filter given (``since``: ``at`` at or after it, epoch seconds)."""

    task_id: str | None = None
    principal: str | None = None
    action: str | None = None
    since: float | None = None
    after: int = 0
    limit: int = 100

    def matches(self, row: AuditRow) -> bool:
        e = row.entry
        return (
            row.seq > self.after
            and (self.task_id is None or e.task_id == self.task_id)
            and (self.principal is None or e.principal == self.principal)
            and (self.action is None or e.action == self.action)
            and (self.since is None or e.at >= self.since)
        )


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
    sid: Any,
    token_sha256: Any,
    roles: Any,
    desc: Any,
    created_at: Any,
    last_seen_at: Any,
    minted_by: Any = "",
) -> SessionRecord:
    """A stored session row as its record; ``ValueError`` saying which column is bad."""
    role_list = json.loads(roles, json.STORED_MAX_DEPTH) if isinstance(roles, str) else roles
    if not isinstance(role_list, list) or not all(isinstance(r, str) for r in role_list):
        raise ValueError("roles: not a JSON list of strings")
    texts = (("sid", sid), ("token_sha256", token_sha256), ("desc", desc), ("minted_by", minted_by))
    for name, value in texts:
        if not isinstance(value, str):
            raise ValueError(f"{name}: not text")
    for name, value in (("created_at", created_at), ("last_seen_at", last_seen_at)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name}: not a number")
    return SessionRecord(
        sid, token_sha256, role_list, desc, float(created_at), float(last_seen_at), minted_by
    )


def decode_key(
    id: Any,
    name: Any,
    scopes: Any,
    secret_sha256: Any,
    created_at: Any,
    expires_at: Any,
    note: Any,
    revoked_at: Any,
) -> KeyRecord:
    """A stored key row as its record; ``ValueError`` saying which column is bad."""
    scope_list = json.loads(scopes, json.STORED_MAX_DEPTH) if isinstance(scopes, str) else scopes
    if not isinstance(scope_list, list) or not all(isinstance(s, str) for s in scope_list):
        raise ValueError("scopes: not a JSON list of strings")
    for label, value in (("id", id), ("name", name), ("secret_sha256", secret_sha256)):
        if not isinstance(value, str):
            raise ValueError(f"{label}: not text")
    times = (("created_at", created_at), ("expires_at", expires_at), ("revoked_at", revoked_at))
    for label, value in times:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{label}: not a number")
    return KeyRecord(
        id,
        name,
        scope_list,
        secret_sha256,
        float(created_at),
        None if expires_at is None else float(expires_at),
        note if isinstance(note, str) else "",
        None if revoked_at is None else float(revoked_at),
    )


# A key's stored columns, in ``key_row``'s order: both stores' SQL names them so.
KEY_COLUMNS = "id, name, scopes, secret_sha256, created_at, expires_at, note, revoked_at"


def decode_key_row(row: Sequence[Any] | None) -> KeyRecord | None:
    """One stored key row as a record; None for no row or one that cannot be decoded."""
    found = decode_key_rows([tuple(row)] if row is not None else [])
    return found[0] if found else None


def decode_key_rows(rows: Iterable[Sequence[Any]]) -> list[KeyRecord]:
    """Stored key rows as records; a row that cannot be decoded is logged and
    left out (its key is then refused as unknown)."""
    out = []
    for row in rows:
        try:
            out.append(decode_key(*row))
        except Exception as exc:  # one bad row is skipped, whatever is wrong with it
            log.warning("skipping a stored key that cannot be decoded", id=row[0], error=str(exc))
    return out


def key_row(record: KeyRecord) -> tuple[Any, ...]:
    """The stored columns of a key, in ``decode_key``'s order (scopes as JSON text)."""
    return (
        record.id,
        record.name,
        json.dumps(record.scopes),
        record.secret_sha256,
        record.created_at,
        record.expires_at,
        record.note,
        record.revoked_at,
    )


class Store(ABC):
    _event_observer: Callable[[Events], None] | None = None

    def observe_commits(self, observer: Callable[[float], None]) -> None:
        """Have ``observer`` told how long each commit takes, in seconds (metrics),
        possibly from another thread.  A store without commits ignores it."""
        del observer

    def observe_events(self, observer: Callable[[Events], None]) -> None:
        """Have ``observer`` handed each write's events once it is committed, in
        commit order, on the event loop's thread."""
        self._event_observer = observer

    def _events_committed(self, events: Events) -> None:
        if events and self._event_observer is not None:
            self._event_observer(events)

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
    async def put_session(self, record: SessionRecord, *, audit: Audit = ()) -> None: ...

    @abstractmethod
    async def hand_over_session(
        self, source: SessionRecord, target: SessionRecord, *, audit: Audit = ()
    ) -> None:
        """Both sessions' rows in one commit (a seat handover: ``source`` gave
        its roles to ``target``); with a shared store the role claims move with
        them, so no instant shows a role held by both or by neither."""

    @abstractmethod
    def touch_session_soon(self, sid: str, last_seen_at: float, *, audit: Audit = ()) -> None: ...

    @abstractmethod
    async def delete_session(self, sid: str, *, audit: Audit = ()) -> None: ...

    @abstractmethod
    async def load_sessions(self) -> list[Row]: ...

    # -- action links (``notify/links.py``): one signing key, created once, and
    # each link's single use, claimed durably before its decision is made --

    @abstractmethod
    async def link_key(self, candidate: str) -> str:
        """The action links' signing key: the one stored, or ``candidate``,
        stored now when there is none (the first writer wins on every node)."""

    @abstractmethod
    async def claim_link(self, use: LinkUse) -> LinkUse | None:
        """Record ``use`` durably unless its link was used already: None when
        recorded, else the use that came first (nothing written)."""

    @abstractmethod
    async def release_link(self, link_id: str) -> None:
        """Forget the claim of ``link_id``: its decision did not go through."""

    @abstractmethod
    async def link_use(self, link_id: str) -> LinkUse | None:
        """The use recorded for ``link_id``; None when it is still unused."""

    # -- API keys (``auth/keys.py``): few rows, each read once per node and
    # cached there; a revocation is a durable write every node hears of --

    @abstractmethod
    async def put_key(self, record: KeyRecord, audit: Audit = ()) -> None:
        """Store a new key, durably, with ``audit``'s entries in its commit."""

    @abstractmethod
    async def get_key(self, key_id: str) -> KeyRecord | None:
        """The key ``key_id`` (revoked ones too); None when there is none."""

    @abstractmethod
    async def list_keys(self) -> list[KeyRecord]:
        """Every key, revoked ones too, oldest first."""

    @abstractmethod
    async def revoke_key(self, key_id: str, at: float, audit: Audit = ()) -> KeyRecord | None:
        """Mark ``key_id`` revoked at ``at`` (a revoked one keeps its first
        time), durably, with ``audit``'s entries in its commit; the key as it
        is now, or None when there is none.  A shared store tells every node
        in the same transaction."""

    @abstractmethod
    async def put_task(
        self,
        record: dict[str, Any],
        events: Events = (),
        *,
        deliver_at: float | None = None,
        audit: Audit = (),
        ended_as: dict[str, Any] | None = None,
    ) -> None:
        """Store ``record`` with ``events``; with ``deliver_at``, also a webhook
        delivery of it due then — all in one commit.  ``ended_as``: the whole
        task as this write ends it (its outputs and asks in), which a shared
        store may tell the other nodes with the end, sparing their long-polls
        a read."""

    @abstractmethod
    def put_task_soon(
        self,
        record: dict[str, Any],
        events: Events = (),
        *,
        deliver_at: float | None = None,
        audit: Audit = (),
    ) -> None:
        """``put_task`` with nobody waiting for the commit."""

    @abstractmethod
    def put_ask_soon(self, task_id: str, attempt: int, ask: dict[str, Any]) -> None:
        """Store one worker ask of ``task_id``'s attempt ``attempt``, new or
        changed (``ask["ask_id"]`` names it), queued in order like a "soon"
        write.  Reads give it back in ``attempts[n]["asks"]`` of the attempt
        whose ``number`` is ``attempt``, asks in the order first stored."""

    @abstractmethod
    async def put_output(
        self, task_id: str, attempt: int, output: list[Any], *, audit: Audit = ()
    ) -> None:
        """Append one output of ``task_id``'s attempt ``attempt`` (a worker's
        result), one row of its own — the task's row holds none — and return
        once it is committed.  It is queued in order with every other write
        when the call starts (before its first await), so an end written after
        it commits after it.  Reads give the outputs back in
        ``attempts[n]["tail"]`` of the attempt whose ``number`` is ``attempt``,
        in the order appended.  A shared store refuses it (``Fenced``) unless
        this node still holds the task, as it does a task's write."""

    @abstractmethod
    def put_output_soon(
        self, task_id: str, attempt: int, output: list[Any], *, audit: Audit = ()
    ) -> asyncio.Future[None]:
        """``put_output`` queued now, with nobody made to wait: the future
        settles once it is committed (``StoreError`` if it is not), for the
        attempt's end to check before it is written (an ack, an agent's final)."""

    @abstractmethod
    def put_events_soon(self, events: Events, *, audit: Audit = ()) -> None:
        """Events that come with no task write (operator requests, outputs),
        with the audit entries of the decisions they show."""

    # -- the audit trail ---------------------------------------------------

    @abstractmethod
    async def append_audit(self, entries: Audit) -> None:
        """Append ``entries`` on their own, durably: for an act whose own
        write is not the store's (or has none)."""

    @abstractmethod
    async def audit_page(self, query: AuditQuery) -> list[AuditRow]:
        """Up to ``query.limit`` rows after ``query.after`` matching it, in seq order."""

    @abstractmethod
    async def audit_anchor(self) -> Anchor | None:
        """Where the chain goes on after retention pruned its start; None: never pruned."""

    @abstractmethod
    async def prune_audit(self, before: float) -> int:
        """Remove the chain's prefix of rows older than ``before``, keeping the
        newest row whatever its age (the chain's head), and remember the last
        removed as the anchor; how many went."""

    @abstractmethod
    async def last_event_id(self) -> int:
        """The highest event id ever stored (0 for none): ids continue from it."""

    @abstractmethod
    async def load_events(self, after_id: int, task_id: str | None, limit: int) -> list[TaskEvent]:
        """Up to ``limit`` events with ``id > after_id`` (of ``task_id``, or all), in id
        order; a row that cannot be decoded is skipped."""

    @abstractmethod
    async def next_deliveries(self, limit: int) -> list[Delivery]:
        """The ``limit`` deliveries due soonest, soonest first."""

    @abstractmethod
    async def record_delivery(
        self, task_id: str, record: dict[str, Any] | None, due_at: float | None
    ) -> None:
        """After a try: the task's new record (if given, and only if the task is
        still stored) and its delivery due again at ``due_at``, or done (``None``)."""

    # -- notifications (``operator_server/notify``) --

    @abstractmethod
    async def put_notices(self, notices: Sequence[Notice]) -> None:
        """Queue ``notices`` durably; one whose id is stored already is left as it is."""

    @abstractmethod
    async def cut_notice_message(self, message: NoticeMessage, notice_ids: Sequence[str]) -> None:
        """Store ``message`` and give it ``notice_ids``, in one commit."""

    @abstractmethod
    async def record_notice_message(self, message: NoticeMessage) -> None:
        """After a try: its attempts, next due time and last error.  A settled
        message (``due_at`` None) takes its notices with it; one sent (no
        ``last_error``) goes too, one given up stays with its reason."""

    @abstractmethod
    async def delete_given_up(self, created_before: float, limit: int) -> int:
        """Delete up to ``limit`` messages given up (kept with their reason)
        that were cut before the cutoff, oldest first, whichever node cut
        them; how many went.  Retention's: nothing else ever removes them."""

    @abstractmethod
    async def load_notices(self, node: str) -> tuple[list[Notice], list[NoticeMessage]]:
        """The notices still to be sent and the messages still to be tried
        (``node``'s only, in a store many nodes share), oldest first."""

    @abstractmethod
    async def load_tasks(self, statuses: Collection[str]) -> list[Row]:
        """Every task whose status is one of ``statuses`` (recovery: the live ones)."""

    @abstractmethod
    async def get_task(self, task_id: str) -> Row | None: ...

    @abstractmethod
    async def task_seq(self, task_id: str) -> int | None: ...

    @abstractmethod
    async def list_tasks(self, status: str | None, after_seq: int, limit: int) -> list[StoredTask]:
        """Up to ``limit`` tasks with ``seq > after_seq`` (and ``status``), in seq order."""

    @abstractmethod
    async def count_tasks(self) -> dict[str, int]:
        """How many tasks are stored, by status."""

    @abstractmethod
    async def delete_finished(
        self, statuses: Collection[str], updated_before: float, limit: int
    ) -> dict[str, int]:
        """Delete up to ``limit`` tasks in ``statuses`` last updated before the
        cutoff, oldest first, with their events and deliveries; how many went,
        by status."""

    # -- a store many nodes share (PostgreSQL); one process needs none of it --

    @property
    def shared(self) -> bool:
        """Many nodes may use this store at once: running tasks are leased."""
        return False

    @property
    def healthy(self) -> bool:
        """The database answered the last time it was asked (healthz)."""
        return True

    @property
    def leases_lapsed(self) -> bool:
        """No lease renewal succeeded for a whole lease: this node's leases may
        be another node's now (a shared store; one process holds none)."""
        return False

    def lease_tasks(self, node_id: str, lease_s: float, live_statuses: Collection[str]) -> None:
        """Lease every task in ``live_statuses`` this node writes to ``node_id``
        for ``lease_s``: nobody else takes it over while the lease is renewed.
        Called once, before ``open``; a one-process store only notes the statuses."""
        del lease_s
        self._live_statuses = tuple(live_statuses)
        self.audit_node = node_id

    # The node each audit row names: this one (``lease_tasks``).
    audit_node = ""

    async def take_over(self, *, at_start: bool, limit: int) -> list[Row]:
        """Live tasks this node now owns and must recover: in one process, every
        stored live one at start-up; in a shared store, up to ``limit`` whose
        lease lapsed or was never written (their node died or let go)."""
        del limit
        return await self.load_tasks(self._live_statuses) if at_start else []

    _live_statuses: Collection[str] = ()

    async def renew_leases(self, task_ids: Collection[str]) -> None:
        """Extend this node's leases of ``task_ids`` (the runs it holds: any
        other lapses, to be taken over); ``StoreError`` when it cannot."""
        del task_ids
        return None  # one process: nothing is leased

    async def release_leases(self, task_ids: Collection[str] | None = None) -> None:
        """Let go of every lease this node holds (or those of ``task_ids``), so
        another node takes those tasks now; all of them: this node leaves."""
        del task_ids
        return None  # one process: nothing is leased

    async def get_session(self, sid: str) -> SessionRecord | None:
        """A session another node may have minted; None when unknown (or one process)."""
        del sid
        return None

    async def role_holder(self, role: str) -> str | None:
        """The sid holding ``role`` anywhere in a shared store; None otherwise."""
        del role
        return None

    # Routing between nodes is not here: a shared store also keeps the
    # ``ClusterStore`` contract (``cluster/store.py``).


@dataclass(frozen=True)
class RequestCourse:
    """Where a pending request is on its way: when its deadline (or its
    escalation step's end) decides it, its place in its escalation chain, and
    every move that brought it to its holder (each as ``GET /v1/requests``
    shows it: at, from, to, reason, step, by, note), oldest first."""

    deadline_at: float | None = None
    step: int = 0
    moves: tuple[dict[str, Any], ...] = ()


# A request whose course is not known (a row stored before courses were).
NO_COURSE = RequestCourse()


@dataclass(frozen=True)
class PendingRow:
    """An unanswered operator request as stored: who waits for it, its frame,
    and its course as it stood when its holder was last stored (a move or an
    escalation step stores the row anew)."""

    req_id: str
    owner_node: str
    frame: dict[str, Any]
    issued_at: float
    course: RequestCourse = NO_COURSE


@dataclass(frozen=True)
class PlacedSession:
    """A stored operator session as every node sees it: where its socket is
    (``socket_node``: a node whose heartbeat is current, else None) and how
    many requests wait on it, whichever node issued them."""

    record: SessionRecord
    socket_node: str | None
    pending: int


# -- rows as loaded, shared by every store: one bad row is skipped, never fatal --


def decode_task_row(
    task_id: Any,
    data: Any,
    asks: Iterable[tuple[Any, Any]] = (),
    outputs: Iterable[tuple[Any, Any]] = (),
) -> Row:
    """A stored task row as a ``Row``: its record, with its stored asks and
    outputs ``(attempt, data)`` put back (``with_asks``, ``with_outputs``), or
    why it cannot be used."""
    try:
        return Row(str(task_id), with_outputs(with_asks(decode_task(data), asks), outputs))
    except Exception as exc:  # one bad row is skipped, whatever is wrong with it
        return Row(str(task_id), None, f"cannot decode: {exc}")


def with_asks(record: dict[str, Any], asks: Iterable[tuple[Any, Any]]) -> dict[str, Any]:
    """``record`` with its stored asks — ``(attempt number, JSON text)`` in the
    order first stored — in their attempts' ``asks``.  An attempt with none
    stored apart keeps what its row holds (rows written before asks were stored
    apart carry them inline); an ask of an attempt the record does not have,
    or one that cannot be decoded, is left out, with a warning."""
    return _put_back(record, asks, "asks", lambda ask: isinstance(ask, dict))


def with_outputs(record: dict[str, Any], outputs: Iterable[tuple[Any, Any]]) -> dict[str, Any]:
    """``record`` with its stored outputs — ``(attempt number, JSON text)`` in
    the order appended — in their attempts' ``tail``, as ``with_asks`` does for
    asks (rows written before outputs were stored apart carry them inline)."""
    return _put_back(
        # Five elements, or six with a failed worker's error (``OutputEvent.to_record``).
        record,
        outputs,
        "tail",
        lambda output: isinstance(output, list) and len(output) in (5, 6),
    )


def _put_back(
    record: dict[str, Any],
    stored_apart: Iterable[tuple[Any, Any]],
    key: str,
    valid: Callable[[Any], bool],
) -> dict[str, Any]:
    stored = list(stored_apart)
    if not stored:
        return record  # nothing stored apart: the row as it is
    attempts = record.get("attempts")
    by_number: dict[Any, Any] = {}
    if isinstance(attempts, list):
        by_number = {
            a.get("number"): a
            for a in attempts
            if isinstance(a, dict) and isinstance(a.get("number"), int)
        }
    found: dict[Any, list[Any]] = {}
    for attempt, data in stored:
        try:
            item = json.loads(data, json.STORED_MAX_DEPTH)
            if not valid(item) or attempt not in by_number:
                raise ValueError(f"not one of an attempt of the task (attempt {attempt})")
        except Exception as exc:  # one bad row is skipped, never the task
            log.warning(f"skipping a stored {key} row", task_id=record.get("id"), error=str(exc))
            continue
        found.setdefault(attempt, []).append(item)
    for number, listed in found.items():
        by_number[number][key] = listed
    return record


def output_row(task_id: str, attempt: int, output: list[Any]) -> tuple[str, int, str]:
    """The stored row of one output: ``(task_id, attempt, JSON text)``, encoded
    by the caller as it writes."""
    return task_id, int(attempt), json.dumps_bytes(output).decode()


def ask_row(task_id: str, attempt: int, ask: dict[str, Any]) -> tuple[str, int, str, str]:
    """The stored row of one ask: ``(task_id, attempt, ask_id, JSON text)``,
    encoded by the caller as it writes (a snapshot, like a task's record)."""
    return task_id, int(attempt), str(ask["ask_id"]), json.dumps_bytes(ask).decode()


def decode_session_rows(rows: Iterable[Sequence[Any]]) -> list[Row]:
    """Stored session rows ``(sid, token_sha256, roles, desc, created_at,
    last_seen_at, minted_by)`` as ``Row``s."""
    out = []
    for row in rows:
        try:
            record = decode_session(*row)
        except Exception as exc:  # one bad row is skipped, whatever is wrong with it
            out.append(Row(str(row[0]), None, f"cannot decode: {exc}"))
        else:
            out.append(Row(record.sid, record))
    return out


def decode_event_rows(rows: Iterable[Sequence[Any]]) -> list[TaskEvent]:
    """Stored event rows ``(id, task_id, data)`` as events; a bad one is logged
    and skipped."""
    out = []
    for event_id, owner, data in rows:
        try:
            out.append(TaskEvent.from_row(event_id, owner, data))
        except Exception as exc:  # one bad row is skipped, whatever is wrong with it
            log.warning(
                "skipping a stored event that cannot be decoded", id=event_id, error=str(exc)
            )
    return out
