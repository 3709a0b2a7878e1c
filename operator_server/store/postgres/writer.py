"""The group-commit writer: one queue, one writer task, one transaction per batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from operator_server.logs import get_logger
from operator_server.store.base import Audit, Events, StoreError, TaskEvent

log = get_logger(__name__)
BATCH = 512
# An op that loses a deadlock (PostgreSQL aborts one side, e.g. a takeover's
# locks crossing a batch's) is run again in a new savepoint, this many times.
DEADLOCK_RETRIES = 3
Work = Callable[[asyncpg.Connection], Awaitable[Any]]
# What a lost or refused connection raises: the whole batch fails, not one op.
# InternalClientError too: a backend terminated while the connection sat idle in
# the pool surfaces as a protocol-state error on its next use.
CONNECTION_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


# What an operation raises for itself: it fails, not the batch.
OP_ERRORS = (StoreError, asyncpg.PostgresError, ValueError, TypeError)


@dataclass(frozen=True)
class Bulk:
    """An operation that is one row of an array statement: the rows of a
    batch's operations with the same ``sql`` (and ``scalars``) are sent
    together, one round trip for all of them, instead of one each.

    ``sql`` takes one array per column of ``row`` (``$1`` to ``$k``), then
    ``scalars``, and answers one result row per input row, in order.
    ``keys`` name what the operation touches (``task:<id>``,
    ``request:<id>``): operations sharing a key keep their order, so only
    operations that commute are gathered.  ``follows`` name orders that
    must hold without keeping the operations apart (``issued:<sid>``: a
    session's requests are numbered in the order they were issued): an
    operation is sent no earlier than the last one sharing such a name, in
    the same statement or a later one.  ``finish`` turns this row's result
    into the operation's value, or raises its ``StoreError``."""

    sql: str
    row: tuple[Any, ...]
    keys: frozenset[str]
    finish: Callable[[Any], Any]
    scalars: tuple[Any, ...] = ()
    follows: frozenset[str] = frozenset()

    async def run_alone(self, conn: asyncpg.Connection) -> Any:
        return self.finish((await send_rows(conn, [self]))[0])


async def send_rows(conn: asyncpg.Connection, bulks: list[Bulk]) -> list[Any]:
    """Run ``bulks`` (of one ``sql`` and ``scalars``) as one statement: one
    result per operation, in order."""
    first = bulks[0]
    columns = [list(column) for column in zip(*(b.row for b in bulks), strict=True)]
    found = await conn.fetch(first.sql, *columns, *first.scalars)
    if len(found) != len(bulks):  # a statement that lost or doubled a row is a bug
        raise StoreError(f"{len(bulks)} rows sent, {len(found)} answered")
    return list(found)


@dataclass
class Op:
    work: Work
    future: asyncio.Future[Any] | None  # None: a "soon" write
    what: str
    # Events stored with the write, if it succeeds: the writer numbers and
    # stores a batch's together, as the batch ends (``store_events``).
    given: Events = ()
    events: list[TaskEvent] = field(default_factory=list)  # ``given`` as stored
    # Set for a write that is one statement with no result: a run of them with
    # the same SQL is sent in one go (``executemany``, pipelined).
    plain: tuple[str, tuple[Any, ...]] | None = None
    # Audit entries chained as the batch ends, if the operation succeeded.
    audit: Audit = ()
    # Set for a write that is one row of an array statement (``Bulk``).
    bulk: Bulk | None = None


class OpFailed(Exception):
    """An operation failed in a batch run without savepoints: the batch rolls back."""

    def __init__(self, error: StoreError) -> None:
        super().__init__(str(error))
        self.error = error


class GroupCommitWriter:
    """The writer half of the PostgreSQL store, a mixin: what it queues, the
    writer task runs in batches (see the package docstring).  What a batch does
    as it ends, inside its transaction (store its events, tell the other
    nodes), is the store's: ``_batch_starts``, ``_batch_ends``,
    ``_batch_committed``."""

    _pool: asyncpg.Pool | None
    _queue: asyncio.Queue[Op | None]
    _accepting: bool  # writes may be queued: open, and not yet closing
    _unsettled: int  # writes queued and not yet committed (or failed)
    _commit_observer: Callable[[float], None] | None
    _healthy: bool
    # Statements sent for the operations of batches (not their begin, end and
    # commit): what gathering saves shows here (tests read it).
    statements_sent: int

    def _writer_init(self) -> None:
        self._pool = None
        self._queue = asyncio.Queue()
        self._accepting = False
        self._unsettled = 0
        self._commit_observer = None
        self._healthy = True
        self.statements_sent = 0

    def _batch_starts(self) -> None:
        """A run of a batch begins (it may be run twice)."""

    async def _batch_ends(self, conn: asyncpg.Connection, batch: list[Op], done: list[Op]) -> Any:
        """In the batch's transaction, after its operations (``done``: those that
        succeeded); what it returns is given to ``_batch_committed``."""
        del conn, batch, done

    def _batch_committed(self, ending: Any) -> None:
        """The run whose ``_batch_ends`` returned ``ending`` committed."""
        del ending

    def _ops_committed(self, op: Op) -> None:
        """``op`` committed (called in queue order)."""
        del op

    def _lost(self, exc: BaseException) -> None:
        if self._healthy:
            log.error("lost the PostgreSQL connection", error=str(exc))
        self._healthy = False

    def _answered(self) -> None:
        if not self._healthy:
            log.info("the PostgreSQL connection is back")
        self._healthy = True

    async def _write_forever(self) -> None:
        stop = False
        while not stop:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < BATCH and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            try:
                outcomes = await self._run_batch(batch)
            except Exception as exc:  # the writer must outlive any one batch
                log.exception("store batch failed")
                outcomes = [(False, StoreError(f"commit failed: {exc}"))] * len(batch)
            self._unsettled -= len(batch)
            for op, (ok, value) in zip(batch, outcomes, strict=True):
                if ok:
                    self._ops_committed(op)
                deliver(op, ok, value)

    async def _run_batch(self, batch: list[Op]) -> list[tuple[bool, Any]]:
        """Run ``batch`` in one transaction.  Optimistically first, without a
        savepoint per operation (two round trips each saved); if any operation
        fails, that run is rolled back and the batch is run again with a
        savepoint per operation, so the failing one fails alone (its own
        ``StoreError`` — ``RolesTaken``, ``Fenced`` — reaching its caller) and
        the others commit.  Operations are written to be run twice: they
        snapshot their arguments when queued."""
        assert self._pool is not None
        began = time.perf_counter()
        try:
            async with self._pool.acquire() as conn:
                try:
                    outcomes = await self._attempt(conn, batch, savepoints=False)
                except OpFailed as failed:
                    if len(batch) == 1:  # rolled back: the same as its savepoint
                        return [(False, failed.error)]
                    outcomes = await self._attempt(conn, batch, savepoints=True)
        except CONNECTION_ERRORS as exc:
            self._lost(exc)
            return [(False, StoreError(f"commit failed: {exc}"))] * len(batch)
        except asyncpg.PostgresError as exc:
            return [(False, StoreError(f"commit failed: {exc}"))] * len(batch)
        self._answered()
        if self._commit_observer is not None:
            self._commit_observer(time.perf_counter() - began)
        return outcomes

    async def _attempt(
        self, conn: asyncpg.Connection, batch: list[Op], *, savepoints: bool
    ) -> list[tuple[bool, Any]]:
        """One run of ``batch``; without ``savepoints`` the first failing
        operation raises ``OpFailed`` and the whole run rolls back."""
        outcomes: list[tuple[bool, Any]] = []
        self._batch_starts()
        async with conn.transaction():
            if not savepoints:
                outcomes, sent = await run_together(conn, batch)
                self.statements_sent += sent
            else:
                for op in batch:
                    outcomes.append(await run_in_savepoint(conn, op))
                    self.statements_sent += op.work is not nothing
            done = [op for op, (ok, _) in zip(batch, outcomes, strict=True) if ok]
            ending = await self._batch_ends(conn, batch, done)
        self._batch_committed(ending)
        return outcomes

    # -- queueing ---------------------------------------------------------

    def _future(
        self,
        work: Work,
        what: str,
        given: Events = (),
        *,
        audit: Audit = (),
        bulk: Bulk | None = None,
    ) -> asyncio.Future[Any]:
        """Queue a write now (not when first awaited): a future for its value,
        set once it committed."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._accepting:
            fut.set_exception(StoreError("the store is not open"))
            return fut
        self._unsettled += 1
        self._queue.put_nowait(Op(work, fut, what, given, audit=audit, bulk=bulk))
        return fut

    async def _call(
        self,
        work: Work,
        what: str,
        given: Events = (),
        audit: Audit = (),
    ) -> Any:
        return await self._future(work, what, given, audit=audit)

    def _bulk_future(
        self, bulk: Bulk, what: str, given: Events = (), *, audit: Audit = ()
    ) -> asyncio.Future[Any]:
        """``_future`` for a write that is one row of an array statement."""
        return self._future(bulk.run_alone, what, given, audit=audit, bulk=bulk)

    def _soon_bulk(self, bulk: Bulk, what: str, given: Events = (), *, audit: Audit = ()) -> None:
        """``_soon`` for a write that is one row of an array statement."""
        self._soon(bulk.run_alone, what, given, audit=audit, bulk=bulk)

    async def flush_queue(self) -> None:
        """Return once everything queued before now has committed (the queue is in order)."""
        await self._call(nothing, "flush")

    def _soon_plain(self, what: str, sql: str, *args: Any, audit: Audit = ()) -> None:
        """A "soon" write that is one statement with no result."""
        self._soon(lambda c: c.execute(sql, *args), what, plain=(sql, args), audit=audit)

    def _soon(
        self,
        work: Work,
        what: str,
        given: Events = (),
        *,
        plain: tuple[str, tuple[Any, ...]] | None = None,
        audit: Audit = (),
        bulk: Bulk | None = None,
    ) -> None:
        if not self._accepting:
            log.error("store write after close dropped", what=what)
            return
        self._unsettled += 1
        self._queue.put_nowait(Op(work, None, what, given, plain=plain, audit=audit, bulk=bulk))

    async def _read(self, work: Work, what: str) -> Any:
        """Run a read on the pool once every write queued before it has committed."""
        if self._pool is None:
            raise StoreError("the store is not open")
        if self._unsettled:
            await self.flush_queue()
        try:
            async with self._pool.acquire() as conn:
                found = await work(conn)
        except CONNECTION_ERRORS as exc:
            self._lost(exc)
            raise StoreError(f"{what}: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise StoreError(f"{what}: {exc}") from exc
        self._answered()
        return found

    async def _direct(self, sql: str, *args: Any, what: str) -> list[Any]:
        """A write of this node's own lease rows: straight on the pool, not behind
        the queue (nothing queued touches them but a task's first write); the
        rows it returns."""
        if self._pool is None:
            raise StoreError("the store is not open")
        try:
            async with self._pool.acquire() as conn:
                found: list[Any] = await conn.fetch(sql, *args)
        except CONNECTION_ERRORS as exc:
            self._lost(exc)
            raise StoreError(f"{what}: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise StoreError(f"{what}: {exc}") from exc
        self._answered()
        return found


class Gathered:
    """The array-statement operations of a batch held back to be sent
    together, in rounds: an operation goes in the round after the last one
    holding an operation that shares a key with it (so operations on the same
    task or request keep their order), else in the first; in a round, one
    statement per kind sends all of its operations.  Operations sharing no key
    commute, so this is the batch's order as far as anything can tell.  Any
    other kind of operation sends everything held first (``send``)."""

    def __init__(self) -> None:
        self.rounds: list[dict[tuple[str, tuple[Any, ...]], list[int]]] = []
        self.round_of: dict[str, int] = {}  # key -> the last round touching it
        self.followed: dict[str, int] = {}  # order -> the last round in it
        self.sent = 0  # statements

    def take(self, index: int, bulk: Bulk) -> None:
        """Hold operation ``index`` of the batch (a round's statement sends
        its rows in the batch's order)."""
        after = [self.round_of[key] + 1 for key in bulk.keys if key in self.round_of]
        after += [self.followed[name] for name in bulk.follows if name in self.followed]
        at = max(after, default=0)
        if at == len(self.rounds):
            self.rounds.append({})
        self.rounds[at].setdefault((bulk.sql, bulk.scalars), []).append(index)
        for key in bulk.keys:
            self.round_of[key] = at
        for name in bulk.follows:
            self.followed[name] = at

    async def send(
        self, conn: asyncpg.Connection, batch: list[Op], outcomes: list[tuple[bool, Any]]
    ) -> None:
        """Send every round, one statement per kind, and settle its operations
        in ``outcomes``; the first failure raises ``OpFailed``."""
        rounds, self.rounds, self.round_of, self.followed = self.rounds, [], {}, {}
        for groups in rounds:
            for indices in groups.values():
                bulks = [batch[i].bulk for i in indices]
                self.sent += 1
                try:
                    found = await send_rows(conn, bulks)  # type: ignore[arg-type]
                except OP_ERRORS as exc:
                    raise OpFailed(op_error(batch[indices[0]], exc)) from exc
                for i, bulk, result in zip(indices, bulks, found, strict=True):
                    try:
                        outcomes[i] = (True, bulk.finish(result))  # type: ignore[union-attr]
                    except OP_ERRORS as exc:
                        raise OpFailed(op_error(batch[i], exc)) from exc


async def run_together(
    conn: asyncpg.Connection, batch: list[Op]
) -> tuple[list[tuple[bool, Any]], int]:
    """Run ``batch`` without savepoints, in as few round trips as it allows:
    its array-statement operations gathered by statement (``Gathered``), each
    run of plain writes of the same statement pipelined, and operations with
    no statement (events only) not sent at all: the outcomes, and how many
    statements it sent.  The first failure raises ``OpFailed`` (naming the
    operation, or the first of the group or run it failed in)."""
    outcomes: list[tuple[bool, Any]] = [(True, None)] * len(batch)
    gathered = Gathered()
    sent = 0
    i = 0
    while i < len(batch):
        op = batch[i]
        if op.bulk is not None:
            gathered.take(i, op.bulk)
            i += 1
            continue
        if op.work is nothing:  # its events are stored as the batch ends
            i += 1
            continue
        await gathered.send(conn, batch, outcomes)  # in order before this one
        run = 1
        while (
            op.plain is not None
            and i + run < len(batch)
            and (nxt := batch[i + run].plain) is not None
            and nxt[0] == op.plain[0]
        ):
            run += 1
        sent += 1
        try:
            if run > 1:
                await conn.executemany(op.plain[0], [o.plain[1] for o in batch[i : i + run]])  # type: ignore[index]
            else:
                outcomes[i] = (True, await op.work(conn))
        except OP_ERRORS as exc:
            raise OpFailed(op_error(op, exc)) from exc
        i += run
    await gathered.send(conn, batch, outcomes)
    return outcomes, sent + gathered.sent


def op_error(op: Op, exc: Exception) -> StoreError:
    if isinstance(exc, StoreError):  # the op's own refusal, already worded
        return exc
    return StoreError(f"{op.what}: {exc}")


async def run_in_savepoint(conn: asyncpg.Connection, op: Op) -> tuple[bool, Any]:
    """One op in its own savepoint: a failing op fails alone; one that loses a
    deadlock is run again."""
    for attempt in range(1, DEADLOCK_RETRIES + 1):
        try:
            async with conn.transaction():  # a savepoint
                return True, await op.work(conn)
        except asyncpg.DeadlockDetectedError as exc:
            if attempt == DEADLOCK_RETRIES:
                return False, op_error(op, exc)
        except OP_ERRORS as exc:
            return False, op_error(op, exc)
    raise AssertionError("unreachable: the last attempt returns")


async def nothing(conn: asyncpg.Connection) -> None:
    del conn


def ignore(found: Any) -> None:
    """A ``Bulk.finish`` for a write whose result nobody needs."""
    del found


def deliver(op: Op, ok: bool, value: Any) -> None:
    if op.future is not None:
        if op.future.done():  # the caller gave up waiting; the write stands
            return
        if ok:
            op.future.set_result(value)
        else:
            op.future.set_exception(value)
    elif not ok:
        log.error("background store write failed", what=op.what, error=str(value))
