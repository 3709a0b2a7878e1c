"""The engine: owns the registries, the tasks, and every dispatch.

A task's run is one background task (``task:<id>``) looping over attempts;
``dispatch_attempt`` runs one attempt through the middleware chain with a fresh
capability, and always records how it ended.  A task never stays ``running``
after its run ended: the run's done-callback settles anything it could not.

Persistence: creating a task and starting an attempt are durable writes (the
202 means it is on disk; no operator hears of an attempt before its start is),
and so is every attempt's and task's end, committed *before* it is applied in
memory (``_end``): a client never sees an end a restart would not show.  An
end the store cannot take (database unreachable, disk full) is written again
until it lands, and an attempt the store cut short (its start or an operator
request not stored) is an interruption, dispatched again once the store
answers: a store failure never ends a task by itself.  A worker ask is
stored on its own row as it changes (``_ask_changed``), never by rewriting
its task, and ``recover_task`` decides what a restart does with each stored task.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any

import structlog

from operator_server.background import Background
from operator_server.cluster.routing import LocalRouting, Routing
from operator_server.config import Settings
from operator_server.engine.agents import AgentTable
from operator_server.engine.asks import AskStatus, WorkerAsk
from operator_server.engine.capabilities import (
    CapabilityIssuer,
    Claims,
    claims_from_wire,
    claims_wire,
)
from operator_server.engine.events import EventFanout, EventLog, EventType, LocalFanout
from operator_server.engine.faces import (
    AttemptContext,
    Face,
    Kind,
    Operator,
    OperatorInfo,
    SeniorBridge,
    SpawnHook,
    WorkerResult,
)
from operator_server.engine.middleware import Upheld, build_chain
from operator_server.engine.registries import Registry, RoleAliases
from operator_server.engine.tasks import (
    LIVE_STATUSES,
    TERMINAL_STATUSES,
    AttemptRecord,
    Callback,
    Ending,
    OperatorSpec,
    OutputEvent,
    Task,
    TaskStatus,
)
from operator_server.errors import AttemptEnded, AttemptFailed, CapabilityError, Code
from operator_server.logs import get_logger
from operator_server.metrics import Metrics
from operator_server.store import Fenced, Row, Store, StoreError, TaskEvent
from operator_server.wire import json

log = get_logger(__name__)
# Retention deletes at most this many tasks per sweep, so one sweep after a
# long downtime cannot hold the store for long.
RETENTION_BATCH = 5000
# What a node says of a credential another node issued: ask that node instead.
ELSEWHERE_CODES = frozenset({Code.UNKNOWN_HANDLE, Code.CAPABILITY_REVOKED})
# Events read per store round trip when following other nodes' (cluster mode).
TAIL_BATCH = 1000
# An end the store could not write is tried again after this, doubling up to
# the most (``Engine._end``): quick after a blip, a few tries a minute after that.
END_RETRY_FIRST_S = 0.05
END_RETRY_MAX_S = 2.0


class StatusCounts(Counter[str]):
    """How many tasks are in each status, kept as tasks move (healthz reads
    this instead of scanning); started from the store at start-up."""

    def moved(self, old: TaskStatus | None, new: TaskStatus) -> None:
        if old is not None:
            self[str(old)] -= 1
        self[str(new)] += 1

    def removed(self, status: str, n: int) -> None:
        self[status] -= n

    def view(self) -> dict[str, int]:
        return {status: n for status, n in self.items() if n > 0}


class Engine:
    def __init__(
        self,
        settings: Settings,
        background: Background,
        store: Store,
        metrics: Metrics | None = None,
        fanout: EventFanout | None = None,
    ) -> None:
        self.settings = settings
        self.background = background
        self.store = store
        self.metrics = metrics or Metrics()
        # Task events: ids handed out here, written with the change they
        # describe, published by the store once committed.
        self.events = EventLog()
        # ``events = false``: none are built or stored (the stream routes answer 404).
        self.recording = settings.events
        self.fanout: EventFanout = fanout or LocalFanout()
        self._stored_event_id = 0  # the store's newest event at start-up
        # In a shared store, every live task this node writes is leased to it.
        store.lease_tasks(
            settings.node_id, settings.cluster.lease_s, [str(s) for s in LIVE_STATUSES]
        )
        # Where a task's work is done: here, until ``cluster/wiring.py`` (the
        # one place cluster mode is set up) routes it between nodes, and has
        # streams follow every node's events from the store instead.
        self.routing: Routing = LocalRouting()
        store.observe_events(self.fanout.publish)
        # Set when a finished task's webhook delivery is stored (or queued to be:
        # the sender's read comes after it in the store's order): wakes the sender.
        self.deliveries_due = asyncio.Event()
        self.senior_bridges: Registry[SeniorBridge] = Registry(Face.SENIOR_BRIDGE)
        self.spawn_hooks: Registry[SpawnHook] = Registry(Face.SPAWN_HOOK)
        self.operators: Registry[Operator] = Registry(Face.BACKEND)
        self.registries: dict[Face, Registry[Any]] = {
            Face.SENIOR_BRIDGE: self.senior_bridges,
            Face.SPAWN_HOOK: self.spawn_hooks,
            Face.BACKEND: self.operators,
        }
        self.roles = RoleAliases()
        self.agents = AgentTable()
        secret = settings.secret.encode() if settings.secret else self._random_secret()
        self.capabilities = CapabilityIssuer(secret, settings.capability_ttl_s)
        # Live tasks only (pending or running, or ending right now); finished
        # ones are read from the store.
        self.tasks: dict[str, Task] = {}
        self.counts = StatusCounts()
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._contexts: dict[str, AttemptContext] = {}
        self._accepting = True
        # Stopping to let another node take the running tasks: runs end without
        # ending their tasks (``shutdown(hand_over=True)``).
        self._handing_over = False
        # Tasks another node took over while their runs here were still going.
        self._let_go: set[str] = set()
        # Tasks let go whose leases (if still this node's) are to be given up,
        # so that the next takeover, here or elsewhere, re-dispatches them.
        self.unleased: set[str] = set()
        # A name (sid or role) no registry here knows: another node's session,
        # looked up and brought here by the operator directory (cluster mode).
        self.find_operator: Callable[[str], Awaitable[None]] | None = None

    @staticmethod
    def _random_secret() -> bytes:
        log.warning(
            "no secret configured: using a random one; capabilities will not survive a "
            "restart (set `secret` or OPERATOR_SERVER_SECRET)"
        )
        return secrets.token_bytes(32)

    # -- registries -------------------------------------------------------

    def register_operator(self, sid: str, face: Any) -> None:
        """Register one object under ``sid`` in all three registries."""
        for registry in self.registries.values():
            registry.register(sid, face)

    def unregister_operator(self, sid: str) -> None:
        for registry in self.registries.values():
            registry.unregister(sid)
        self.roles.release(sid)

    async def find_operators(self, task: Task) -> None:
        """Bring here any session ``task`` names that this node does not know
        yet (minted on another node; a role held there); no-op in one process."""
        spec = task.operator
        if spec is None or self.find_operator is None:
            return
        for face, name in spec.face_names().items():
            if name is None or self.registries[face].get(name) is not None:
                continue
            if self.roles.resolve(name) is None:
                await self.find_operator(name)

    def resolve_operator_info(self, task: Task) -> OperatorInfo:
        """Look up, live, who serves this dispatch of ``task``."""
        spec = task.operator
        if spec is None:
            return OperatorInfo()
        found: dict[Face, tuple[str, Any]] = {}
        for face, name in spec.face_names().items():
            if name is None:
                continue
            registry = self.registries[face]
            key = name if registry.get(name) is not None else self.roles.resolve(name)
            item = registry.get(key) if key is not None else None
            if key is None or item is None:
                raise AttemptFailed(
                    Code.OPERATOR_NOT_FOUND,
                    f"{face} {name!r} is not registered (no operator session or role by that name)",
                )
            found[face] = (key, item)
        return OperatorInfo(found)

    # -- tasks ------------------------------------------------------------

    async def submit(
        self,
        *,
        agent: str,
        directive: Any,
        system: str | None = None,
        operator: OperatorSpec | None = None,
        layers: tuple[str, ...] | None = None,
        max_attempts: int | None = None,
        parent_task_id: str | None = None,
        callback_url: str | None = None,
    ) -> Task:
        """Create a task, store it durably, and start dispatching it.

        Raises ``AttemptFailed`` (``unknown_agent``) when nobody could ever serve
        it, and ``StoreError`` when it could not be saved — then nothing of it
        stays in memory.
        """
        # A cluster node cut off from its database takes no new work (another
        # node can); one process tries anyway, and the write says how it went.
        if self.store.shared and not self.store.healthy:
            raise StoreError("the database does not answer; not taking new tasks")
        names_operator = operator is not None and operator.names_anyone()
        if not names_operator and self.agents.get(agent) is None:
            raise AttemptFailed(
                Code.UNKNOWN_AGENT,
                f"agent {agent!r} is not a local agent (known: "
                f"{', '.join(self.agents.names())}) and the task names no operator",
            )
        kind = (operator.kind if operator else None) or (
            Kind.MAIN_AI if names_operator else Kind.AUTOMATE
        )
        task = Task(
            agent=agent,
            directive=directive,
            system=system,
            operator=operator,
            layers=layers if layers is not None else self.settings.default_layers,
            kind=kind,
            max_attempts=max_attempts or self.settings.default_max_attempts,
            parent_task_id=parent_task_id,
            callback=Callback(callback_url) if callback_url else None,
        )
        created = (
            [self.events.make(task, EventType.CREATED, task.created_at)] if self.recording else []
        )
        await self.store.put_task(task.to_record(), created)
        self.counts.moved(None, task.status)
        self.metrics.task_created()
        self.adopt(task)
        return task

    def _stale(self, task_id: str) -> bool:
        """This node may no longer speak for the task: it let it go, or its
        leases lapsed (woken from a freeze, or cut off) and another node may run
        it now.  A stale run writes nothing and tells nobody anything."""
        return task_id in self._let_go or self.store.leases_lapsed

    @staticmethod
    def _delivery_at(task: Task, ending: Ending) -> float | None:
        """When ``ending`` owes the task's webhook: at its final end, if it has one."""
        return ending.at if ending.final and task.callback is not None else None

    def _ending_events(self, task: Task, ending: Ending) -> list[TaskEvent]:
        """The events ``ending`` makes, built before it applies."""
        events: list[TaskEvent] = []
        if not self.recording:
            return events
        current = task.current
        code = None if ending.error is None else str(ending.error.code)
        if current is not None and not current.status.terminal:
            events.append(
                self.events.make(
                    task,
                    EventType.ATTEMPT_ENDED,
                    ending.at,
                    current.number,
                    str(ending.status),
                    code,
                )
            )
        if ending.final:
            events.append(
                self.events.make(task, EventType.STATUS, ending.at, code, status=ending.status)
            )
            task.history_closed = True
        return events

    def _output(self, task: Task, attempt: int, output: OutputEvent) -> None:
        """An attempt's new output, as an event: its kind and source, never its value."""
        if self._stale(task.id):
            return
        event = self.events.make(
            task, EventType.OUTPUT, output.at, attempt, output.kind, output.source, output.ok
        )
        self.store.put_events_soon([event])

    def operator_event(self, type: str, task_id: str, req_id: str, face: str, sid: str) -> None:
        """An operator request was issued (``request``) or answered (``reply``):
        reported by the operator session, recorded on the task's stream."""
        task = self.tasks.get(task_id)
        if task is None or task.history_closed or not self.recording or self._stale(task_id):
            # A task's history ends with its terminal status.  What comes after
            # it — the hook_after notice, sent as the attempt's result is
            # decided — would follow the event that closed the stream, with a
            # status the task no longer has.
            return
        event = self.events.make(task, type, time.time(), task.attempt, req_id, face, sid)
        self.store.put_events_soon([event])

    # -- reading tasks: live ones from memory, finished ones from the store --

    async def find(self, task_id: str) -> Task | None:
        """The task, live or finished; None when unknown (or retained no longer)."""
        live = self.tasks.get(task_id)
        if live is not None:
            return live
        row = await self.store.get_task(task_id)
        return None if row is None else self.decode_row(row)

    async def wait_finished(self, task: Task, timeout: float) -> Task:
        """``task`` once it has ended, or as it is after ``timeout`` seconds.

        A task running here wakes its waiters as it ends; one another node runs
        (cluster mode) is read again each time the store announces it ended.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not task.status.terminal:
                    live = self.tasks.get(task.id)
                    if live is not None or not self.routing.shared:
                        await (live or task).finished.wait()
                        if (live or task).status.terminal or not self.routing.shared:
                            return live or task
                        continue  # let go here: follow it to the node that runs it
                    ended = self.routing.watch_ended(task.id)
                    try:
                        # Read after watching: an end committed in between is seen.
                        task = await self.find(task.id) or task
                        if not task.status.terminal:
                            await ended
                    finally:
                        self.routing.unwatch(task.id, ended)
        return task

    async def page(
        self, status: TaskStatus | None, after_seq: int, limit: int
    ) -> tuple[list[Task], int | None]:
        """One page of tasks in creation order, and the cursor after it (if more)."""
        stored = await self.store.list_tasks(
            None if status is None else str(status), after_seq, limit + 1
        )
        more = len(stored) > limit
        stored = stored[:limit]
        tasks = []
        for item in stored:
            # A live task's own object is fresher than its row (outputs so far).
            task = self.tasks.get(item.row.key) or self.decode_row(item.row)
            if task is not None:
                tasks.append(task)
        return tasks, (stored[-1].seq if more and stored else None)

    @staticmethod
    def decode_row(row: Row) -> Task | None:
        """A stored task, or None (with a warning naming it) when its row is
        unusable for any reason — including one that loads but could not be
        served, which would otherwise fail every read of it."""
        try:
            if row.error is not None:
                raise ValueError(row.error)
            task = Task.from_record(row.value)
            json.dumps(task.as_dict())
            return task
        except Exception as exc:  # whatever is wrong with the row, only it is skipped
            log.warning(
                "skipping a stored task that cannot be decoded", task_id=row.key, error=str(exc)
            )
            return None

    # -- restart and retention -------------------------------------------

    async def recount(self) -> None:
        """Cluster mode: take the whole cluster's counts from the store (every
        lease round), where each node's changes are counted as they commit."""
        self.counts = StatusCounts(await self.store.count_tasks())

    async def load_counts(self) -> None:
        """Start the status counters and the event ids from what is stored (at start-up)."""
        self.counts = StatusCounts(await self.store.count_tasks())
        stored = await self.store.last_event_id()
        self.events.resume_after(stored)
        self._stored_event_id = self._tailed = stored

    async def _tail_events(self) -> None:
        """Cluster mode: publish every stored event after the last one published."""
        while True:
            events = await self.store.load_events(self._tailed, None, TAIL_BATCH)
            if events:
                self._tailed = events[-1].id
                self.fanout.publish(events)
            if len(events) < TAIL_BATCH:
                return

    @property
    def published_event_id(self) -> int:
        """The newest event a stream could already have sent: everything up to
        it is committed.  A reader takes it *before* reading tasks, then follows
        GET /v1/events with ``Last-Event-ID: <it>`` and misses no change."""
        return max(self.fanout.last_id, self._stored_event_id)

    async def recover_task(self, task: Task) -> None:
        """Take back a live task read from the store at start-up.

        An attempt that was in flight when the process died is marked
        ``interrupted`` and the task is re-dispatched as a new attempt;
        interruptions do not use up ``max_attempts``, but more than
        ``store.max_interruptions`` of them fail the task (``interrupted``).
        """
        if task.status.terminal or task.id in self._runs:
            return  # ended, or already running here (our own lease had lapsed)
        limit = self.settings.store.max_interruptions
        current = task.current
        cut_short = current is not None and not current.status.terminal
        if current is not None and cut_short:
            now = time.time()
            open_asks = [a for a in current.asks if not a.status.settled]
            if self.recording:
                self.store.put_events_soon(
                    [
                        self.events.make(
                            task,
                            EventType.ATTEMPT_ENDED,
                            now,
                            current.number,
                            TaskStatus.FAILED.value,
                            Code.INTERRUPTED.value,
                        )
                    ]
                )
            current.finish(
                TaskStatus.FAILED,
                error=AttemptFailed(Code.INTERRUPTED, "the server stopped during this attempt"),
                at=now,
            )
            task.interruptions += 1
            for ask in open_asks:  # withdrawn by ``finish``: stored so
                ask.attempt = current.number
                self._ask_changed(task, ask)
        if task.interruptions > limit:
            await self._end(
                task,
                Ending(
                    TaskStatus.FAILED,
                    error=AttemptFailed(
                        Code.INTERRUPTED,
                        f"interrupted by {task.interruptions} restarts "
                        f"(store.max_interruptions = {limit})",
                    ),
                ),
            )
        elif (
            current is not None
            and not cut_short
            and (current.status is TaskStatus.PASSED or task.attempts_used >= task.max_attempts)
        ):
            # The last attempt had ended; only the task's own ending was lost.
            await self._end(
                task, Ending(current.status, result=current.result, error=current.error)
            )
        else:
            self.counts.moved(task.status, TaskStatus.PENDING)
            task.status = TaskStatus.PENDING
            log.info("re-dispatching interrupted task", task_id=task.id, attempt=task.attempt)
            self.adopt(task)

    async def expire_finished(self, now: float) -> int:
        """Delete finished tasks older than ``store.retention_s`` (an indexed
        query, a bounded batch per sweep); how many went."""
        cutoff = now - self.settings.store.retention_s
        gone = await self.store.delete_finished(
            [str(s) for s in TERMINAL_STATUSES], cutoff, RETENTION_BATCH
        )
        for status, n in gone.items():
            self.counts.removed(status, n)
        # Ends written without waiting for the store (``_settle``) stay readable
        # in memory until here.
        for task_id in [t.id for t in self.tasks.values() if t.status.terminal]:
            if task_id not in self._runs:
                del self.tasks[task_id]
        return sum(gone.values())

    def adopt(self, task: Task) -> None:
        """Track ``task`` and start its run (new, or recovered after a restart)."""
        self.tasks[task.id] = task
        # A child task started while its parent's spawn is held nests its
        # requests under that spawn.
        parent = self._contexts.get(task.parent_task_id or "")
        parent_req = parent.open_request if parent else None
        run = self.background.spawn(self._run(task, parent_req), name=f"task:{task.id}")
        self._runs[task.id] = run
        run.add_done_callback(lambda done: self._settle(task, done))

    async def _run(self, task: Task, parent_req: str | None) -> None:
        structlog.contextvars.bind_contextvars(task_id=task.id)
        try:
            while True:
                decided = await self.dispatch_attempt(task, parent_req)
                if decided.error is not None and decided.error.code == Code.STORE_FAILED:
                    decided = self._cut_by_store(task, decided.error)
                final = (
                    decided.status is TaskStatus.PASSED
                    or task.attempts_used >= task.max_attempts
                    or task.interruptions > self.settings.store.max_interruptions
                )
                await self._end(task, replace(decided, final=final))
                if final:
                    break
                log.debug("retrying", attempt=task.attempt, after=str(decided.status))
        except TakenOver:
            return  # another node runs it now
        except asyncio.CancelledError:
            if not task.status.terminal and not self._handing_over and task.id not in self._let_go:
                reason = task.cancel_reason or "cancelled"
                with contextlib.suppress(TakenOver):  # stopping, and the store fails: let go
                    await self._end(
                        task,
                        Ending(TaskStatus.CANCELLED, error=AttemptFailed(Code.CANCELLED, reason)),
                    )
        finally:
            self.capabilities.forget_task(task.id)

    async def _outputs_kept(self, task: Task) -> None:
        """The current attempt's outputs whose rows failed to commit (the
        store failed meanwhile, as the end's own write did) are written again
        before the end is: its end is not on disk without them.  No wait when
        none failed.  Raises what the store raises."""
        record = task.current
        if record is None:
            return
        for output in record.tail.unkept():
            await self.store.put_output(task.id, record.number, output.to_record())
            record.tail.kept(output)

    async def _end(self, task: Task, ending: Ending) -> None:
        """Commit ``ending``, then apply it: what any client sees of an attempt's
        or a task's end (GET, long-poll, list, healthz) is already on disk.

        Tasks ending together share one commit (the store's group commit).  A
        write that fails because the store cannot write (``StoreError``: the
        database unreachable, a disk full) is tried again, backing off up to
        ``END_RETRY_MAX_S``, until it lands: meanwhile the task still shows
        as it is stored (running), and this node keeps its run — and so its
        lease.  It stops trying when another node took the task over
        (``Fenced``: it lets go), when the run is cancelled (a cluster node cut
        off for a whole lease lets it go), or when the node is stopping: then
        the task stays running in the store, and the next start (or another
        node) re-dispatches it, its attempt ``interrupted``.  Recovery's end of
        a task it has not adopted is not retried: the ``StoreError`` is raised
        and the task, unchanged in the store, is recovered again.  A task's final
        end also takes it out of memory, once committed: from then on reads
        find it in the store.
        """
        events = self._ending_events(task, ending)
        deliver = self._delivery_at(task, ending)
        fenced: Fenced | None = None
        delay = END_RETRY_FIRST_S
        while True:
            try:
                if self._stale(task.id):  # its end may be decided elsewhere: not written here
                    raise Fenced(f"task {task.id}: this node's lease of it lapsed or was let go")
                await self._outputs_kept(task)
                await self.store.put_task(task.record_with(ending), events, deliver_at=deliver)
            except Fenced as exc:
                fenced = exc
            except StoreError as exc:
                if task.id not in self._runs:
                    # Recovery's end of a task it has not adopted: nothing runs
                    # to wait; the task stays as stored and is taken up again.
                    raise
                if not self._accepting:
                    log.error(
                        "could not store the end of the attempt; stopping without it",
                        error=str(exc),
                    )
                    self._let_go.add(task.id)
                    raise TakenOver(str(exc)) from exc
                if delay == END_RETRY_FIRST_S:
                    log.error(
                        "could not store the end of the attempt; trying again until it lands",
                        error=str(exc),
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, END_RETRY_MAX_S)
                continue
            except asyncio.CancelledError:
                # Cancelled while waiting for the write (a cancel racing the
                # end): it is queued and lands — unless the store is failing,
                # or the run was let go for the store's silence: then it is
                # not shown (the run's cancellation writes its own end).
                if self.store.healthy and task.id not in self._let_go:
                    self._apply_end(task, ending)
                raise
            break
        if fenced is not None:
            self._let_go_of(task, str(fenced))
            raise TakenOver(str(fenced))
        if delay != END_RETRY_FIRST_S:
            log.info("stored the end of the attempt at last")
        if deliver is not None:
            self.deliveries_due.set()
        self._apply_end(task, ending)
        if ending.final:
            error = ending.error
            log.info(
                "task finished",
                status=str(ending.status),
                attempts=task.attempt,
                duration_s=round(ending.at - task.created_at, 3),
                **({"code": error.code, "message": error.message} if error is not None else {}),
            )

    def _apply_end(self, task: Task, ending: Ending) -> None:
        """Also when cancelled while waiting for the write: it is queued and lands."""
        before = task.status
        attempt = task.current
        running = attempt is not None and not attempt.status.terminal
        task.end(ending)
        if running and attempt is not None and attempt.ended_at is not None:
            self.metrics.attempt_ended(attempt.ended_at - attempt.started_at)
        if ending.final:
            self.counts.moved(before, task.status)
            self.metrics.task_finished(str(task.status))
            self.tasks.pop(task.id, None)

    def _cut_by_store(self, task: Task, error: AttemptFailed) -> Ending:
        """The store, not the work, cut this attempt short (its start or an
        operator request could not be stored): an interruption, as a restart
        is — not counted against ``max_attempts``, counted against
        ``store.max_interruptions`` — and the task is dispatched again once
        this ending is stored (``_end`` waits for the store to answer)."""
        task.interruptions += 1
        return Ending(
            TaskStatus.FAILED,
            error=AttemptFailed(Code.INTERRUPTED, f"the store failed: {error.message}"),
        )

    def _let_go_of(self, task: Task, why: str) -> None:
        """Another node runs ``task`` now: forget it here without ending it."""
        log.warning("another node took this task over; letting it go", reason=why)
        self._let_go.add(task.id)
        self.unleased.add(task.id)
        self.tasks.pop(task.id, None)
        task.finished.set()  # its waiters here read it again, wherever it runs now

    def let_go_all(self, reason: str) -> int:
        """Cluster mode, cut off from the store for longer than a lease: the other
        nodes take these tasks over, so stop their runs here without ending them
        (no write could land anyway).  How many."""
        runs = list(self._runs.items())
        for task_id, run in runs:
            if (task := self.tasks.get(task_id)) is not None:
                task.cancel_reason = reason
                self._let_go_of(task, reason)
            run.cancel(reason)
        return len(runs)

    def held(self) -> list[str]:
        """The tasks whose runs this node holds: the leases it renews (cluster mode)."""
        return [task_id for task_id in self._runs if task_id not in self._let_go]

    def _settle(self, task: Task, run: asyncio.Task[None]) -> None:
        """The run ended; if it never got to record that (cancelled before it
        took its first step, or crashed), record it here.  This is the one
        ending applied before its write commits (nothing here can wait), so
        the task stays in memory until the next sweep.
        """
        if self._runs.get(task.id) is run:  # not a newer run of the same task
            del self._runs[task.id]
        if task.id in self._let_go:
            self._let_go.discard(task.id)
            return
        if not task.status.terminal and not self._handing_over:
            reason = task.cancel_reason or "dispatch ended unexpectedly"
            code = Code.CANCELLED if task.cancel_reason else Code.INTERNAL
            status = TaskStatus.CANCELLED if task.cancel_reason else TaskStatus.FAILED
            self.counts.moved(task.status, status)
            ending = Ending(status, error=AttemptFailed(code, reason))
            events = self._ending_events(task, ending)
            task.end(ending)
            self.metrics.task_finished(str(status))
            # Its webhook is owed like any other end's (``_end``).
            deliver = self._delivery_at(task, ending)
            self.store.put_task_soon(task.to_record(), events, deliver_at=deliver)
            if deliver is not None:
                self.deliveries_due.set()

    async def dispatch_attempt(self, task: Task, parent_req_id: str | None = None) -> Ending:
        """Run the next attempt of ``task`` through the middleware chain.

        Returns how the attempt ended without applying it: the caller stores the
        ending and then applies it (``_end``).  A cancelled attempt raises.
        """
        before = task.status
        self.counts.moved(before, TaskStatus.RUNNING)
        record = task.start_attempt()
        events: list[TaskEvent] = []
        if self.recording:
            events.append(
                self.events.make(task, EventType.ATTEMPT_STARTED, record.started_at, record.number)
            )
            if before is not TaskStatus.RUNNING:
                events.append(self.events.make(task, EventType.STATUS, record.started_at))
            record.tail.listener = lambda output: self._output(task, record.number, output)
        # Each output is stored on its own as it is appended: the task's row
        # holds none, so no end rewrites the outputs of every attempt before it.
        record.tail.keep = lambda output: self.store.put_output_soon(
            task.id, record.number, output.to_record()
        )
        structlog.contextvars.bind_contextvars(attempt=record.number)
        grant = None
        ctx = AttemptContext(
            task_id=task.id,
            attempt=record.number,
            agent=task.agent,
            system=task.system,
            prompt=task.directive,
            kind=task.kind,
            capability_token="",
            worker_handle="",
            tail=record.tail,
            fire_and_forget=self._fire_and_forget,
            parent_req_id=parent_req_id,
        )
        self._contexts[task.id] = ctx
        log.debug("attempt started", kind=str(task.kind))
        try:
            # Durable before anyone is asked to work on it: a crash from here on
            # is then always seen as an interruption of this attempt, and counted
            # (otherwise a task that kills the server could retry forever).
            try:
                if self._stale(task.id):  # then its end is refused too: it is let go
                    raise Fenced(f"task {task.id}: this node's lease of it lapsed")
                await self.store.put_task(task.to_record(), events)
            except StoreError as exc:
                raise AttemptFailed(
                    Code.STORE_FAILED, f"could not record the start of the attempt: {exc}"
                ) from exc
            try:
                await self.find_operators(task)
            except StoreError as exc:
                log.warning("could not look up the operator in the store", error=str(exc))
            ctx.operator = info = self.resolve_operator_info(task)
            record.served_by = info.served_by()
            if info.backend is not None:
                # Credentials only when a spawn frame will carry them.
                grant = self.capabilities.mint(task.id, record.number)
                ctx.capability_token, ctx.worker_handle = grant.token, grant.handle
            result = await build_chain(task.layers, self._run_local_agent)(ctx)
        except Upheld as exc:
            log.debug("senior upheld ok=false", note=exc.error.message)
            return Ending(TaskStatus.BLOCKED, result=exc.result, error=exc.error)
        except AttemptFailed as exc:
            log.debug("attempt failed", code=exc.code, message=exc.message)
            return Ending(TaskStatus.FAILED, error=exc)
        except Exception as exc:  # a bug in an agent or face must not wedge the task
            log.exception("attempt crashed")
            return Ending(
                TaskStatus.FAILED,
                error=AttemptFailed(Code.AGENT_CRASHED, f"{type(exc).__name__}: {exc}"),
            )
        finally:
            # The decision is made: the attempt's credentials die now, before
            # anything here yields (withdrawing asks does) and before it is
            # stored, so nothing a late worker sends can change it.
            if grant is not None:
                self.capabilities.revoke(grant)
            # Open worker asks are withdrawn (cancel frames) before the end is
            # stored, so a waiting worker hears ``attempt_ended`` from it.
            await self._withdraw_asks(task, record)
            self._contexts.pop(task.id, None)
        status = TaskStatus.PASSED if result.ok else TaskStatus.BLOCKED
        log.debug("attempt ended", status=str(status))
        return Ending(status, result=result)

    async def _run_local_agent(self, ctx: AttemptContext) -> WorkerResult:
        agent = self.agents.get(ctx.agent)
        if agent is None:
            raise AttemptFailed(Code.AGENT_NOT_REGISTERED, f"agent not registered: {ctx.agent}")
        ctx.tail.append_final(await agent(ctx), "agent")
        return ctx.tail.decide()

    def _fire_and_forget(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        task_id = structlog.contextvars.get_contextvars().get("task_id")
        self.background.spawn(_report_failure(coro, what), name=f"{what}:{task_id}")

    # -- worker side ------------------------------------------------------
    # Each worker call is done by the node running the attempt: another node
    # passes it there (``_on_owner``; ``cluster/serving.py`` serves it).

    async def _on_owner(
        self,
        task_id: str,
        method: str,
        args: Callable[[], dict[str, Any]],
        longer: float = 0,
    ) -> dict[str, Any] | None:
        """Cluster mode, when another node runs ``task_id``: ``method`` run
        there, with ``args()`` (built only then), and its answer.  None when
        the task runs here (or no node holds it): do it here."""
        if task_id in self.tasks:
            return None
        return await self.routing.on_owner(task_id, method, args, longer=longer)

    async def verify_worker(self, bearer: str, verb: str, task_id: str | None = None) -> Claims:
        """A worker's credential, checked where its attempt runs: here, or on
        its owner node (cluster mode), which alone knows it is still live."""
        try:
            return self.capabilities.verify(bearer, verb, task_id)
        except CapabilityError as exc:
            if exc.code not in ELSEWHERE_CODES:
                raise
            named = self.capabilities.task_named(bearer)
            args = {"bearer": bearer, "verb": verb, "task_id": task_id}
            found = await self._on_owner(named, "verify_worker", lambda: args) if named else None
            if found is None:
                raise
            return claims_from_wire(found)

    async def worker_prompt(self, claims: Claims) -> dict[str, Any]:
        found = await self._on_owner(
            claims.task_id, "worker_prompt", lambda: {"claims": claims_wire(claims)}
        )
        return found if found is not None else self.worker_view(claims)

    async def worker_result(self, claims: Claims, result: WorkerResult) -> None:
        def args() -> dict[str, Any]:
            return {"claims": claims_wire(claims), "value": result.value, "ok": result.ok}

        if await self._on_owner(claims.task_id, "worker_result", args) is None:
            await self.post_worker_result(claims, result)

    async def ask_senior(
        self,
        claims: Claims,
        question: Any,
        answer_schema: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> WorkerAsk:
        def args() -> dict[str, Any]:
            wire = claims_wire(claims)
            return {"claims": wire, "question": question, "schema": answer_schema, "key": key}

        found = await self._on_owner(claims.task_id, "worker_ask", args)
        if found is not None:
            return WorkerAsk.from_record(found)
        return self.worker_ask(claims, question, answer_schema, key)

    def worker_view(self, claims: Claims) -> dict[str, Any]:
        task = self.tasks.get(claims.task_id)
        if task is None:  # verified a moment ago; ended since
            raise AttemptEnded(f"task {claims.task_id} has ended")
        view = {
            "task_id": task.id,
            "attempt": claims.attempt,
            "agent": task.agent,
            "prompt": task.directive,
        }
        if task.system is not None:
            view["system"] = task.system
        return view

    async def post_worker_result(self, claims: Claims, result: WorkerResult) -> None:
        """A worker's HTTP post: authoritative for its attempt, if it still runs.

        The credential was verified before the request body was read; the
        attempt may have ended (or a retry begun) while the body arrived, so
        it is checked again here, where the append happens, with no await
        between the check and the append.  The append is answered only once
        its output row is committed (a 200 means it is on disk).  Meanwhile
        the attempt cannot be decided without it: its decision first waits
        for every result being written (``OutputTail.settle``), and one whose
        write failed is taken back out before that decision, its worker told
        503 ``store_failed`` (409 ``attempt_ended`` when the store refused it
        because another node holds the task now): no attempt is decided by a
        result that is not stored, and none passes over one answered 200.
        """
        task = self.tasks.get(claims.task_id)
        record = task.current if task is not None else None
        if (
            task is None
            or record is None
            or record.number != claims.attempt
            or record.status.terminal
            or record.tail.decided
            or not self.capabilities.is_live(claims)
        ):
            raise AttemptEnded(
                f"attempt {claims.attempt} of task {claims.task_id} ended before the result "
                "arrived; it was not recorded"
            )
        record.budget.take_result(self.settings, result.value)  # AttemptFull past a bound
        event, done = record.tail.append_pending(result)
        stored = False
        try:
            # Queued behind every write made so far, ahead of the attempt's end.
            await self.store.put_output(task.id, record.number, event.to_record())
            stored = True
        except Fenced as exc:
            raise AttemptEnded(
                f"task {claims.task_id} is run by another node now; the result was not recorded"
            ) from exc
        finally:
            record.tail.written(done, stored)
        log.debug(
            "worker posted result", task_id=claims.task_id, attempt=claims.attempt, ok=result.ok
        )

    # -- worker asks ------------------------------------------------------

    def _live_attempt(self, claims: Claims) -> tuple[Task, AttemptRecord, AttemptContext]:
        """The attempt a verified credential belongs to, if it still runs."""
        task = self.tasks.get(claims.task_id)
        record = task.current if task is not None else None
        ctx = self._contexts.get(claims.task_id)
        if (
            task is None
            or record is None
            or ctx is None
            or record.number != claims.attempt
            or record.status.terminal
            or not self.capabilities.is_live(claims)
        ):
            raise AttemptEnded(f"attempt {claims.attempt} of task {claims.task_id} has ended")
        return task, record, ctx

    def worker_ask(
        self,
        claims: Claims,
        question: Any,
        answer_schema: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> WorkerAsk:
        """Ask the task's senior on behalf of its worker; the ask runs in the
        background, so it outlives the worker's HTTP call.  The same ``key``
        in the same attempt is the same ask (a retried POST asks nothing new).

        ``answer_schema`` must already be checked (``wire.answer_schema``).
        Raises ``AttemptEnded``, or ``AttemptFailed`` ``no_senior`` when nobody
        could answer.
        """
        task, record, ctx = self._live_attempt(claims)
        if key is not None:
            for earlier in record.asks:
                if earlier.key == key:
                    return earlier
        found = ctx.operator.found.get(Face.SENIOR_BRIDGE)
        if found is None:
            raise AttemptFailed(
                Code.NO_SENIOR,
                f"task {task.id} has no senior bridge to ask (its operator names none, "
                "or it did not resolve)",
            )
        sid, senior = found
        record.budget.take_ask(self.settings, question, answer_schema)  # AttemptFull past a bound
        ask = WorkerAsk(
            question=question,
            schema=answer_schema,
            # Nested under the spawn being worked on (the operator holds it).
            parent_req_id=ctx.open_request or ctx.parent_req_id,
            key=key,
            attempt=record.number,
        )
        record.asks.append(ask)
        self._ask_changed(task, ask)
        ask.runner = self.background.spawn(
            self._hold_ask(task, ask, senior, sid), name=f"worker-ask:{task.id}:{ask.ask_id}"
        )
        log.debug("worker asked", ask_id=ask.ask_id, parent_req_id=ask.parent_req_id)
        return ask

    def _ask_changed(self, task: Task, ask: WorkerAsk) -> None:
        """One ask, new or changed, is written on its own: its cost is the ask's,
        never the task's with every ask before it (the task's row holds none)."""
        self.store.put_ask_soon(task.id, ask.attempt, ask.to_record())

    async def _hold_ask(self, task: Task, ask: WorkerAsk, senior: SeniorBridge, sid: str) -> None:
        """Hold the senior's ask until it is answered or the attempt ends."""

        def issued(req_id: str) -> None:
            ask.req_id = req_id
            self._ask_changed(task, ask)

        try:
            value = await senior.ask(
                task.id,
                ask.question,
                parent_req_id=ask.parent_req_id,
                answer_schema=ask.schema,
                issued=issued,
            )
        except asyncio.CancelledError as exc:
            reason = str(exc.args[0]) if exc.args and exc.args[0] else "the attempt ended"
            self._ask_settled(
                task,
                ask,
                AskStatus.WITHDRAWN,
                error=AttemptFailed(Code.ATTEMPT_ENDED, f"withdrawn: {reason}"),
            )
            raise
        except AttemptFailed as exc:
            if exc.code == Code.OPERATOR_ERROR:
                declined = str(exc.detail.get("reason", exc.message))
                self._ask_settled(task, ask, AskStatus.DECLINED, declined=declined, by=sid)
            else:
                self._ask_settled(task, ask, AskStatus.FAILED, error=exc)
        else:
            self._ask_settled(task, ask, AskStatus.ANSWERED, answer=value, by=sid)

    def _ask_settled(self, task: Task, ask: WorkerAsk, status: AskStatus, **outcome: Any) -> None:
        """Record how a worker ask ended, once."""
        if ask.settle(status, **outcome):
            self.metrics.worker_ask_settled(str(status))
            self._ask_changed(task, ask)
            log.debug("worker ask settled", ask_id=ask.ask_id, status=str(status))

    async def wait_ask(self, claims: Claims, ask_id: str, wait: float) -> WorkerAsk | None:
        """The worker's ask ``ask_id`` once settled, or as it is after ``wait``
        seconds; None when its attempt has no such ask.  Answers are kept, so
        asking again returns the same outcome."""

        def args() -> dict[str, Any]:
            return {"claims": claims_wire(claims), "ask_id": ask_id, "wait": wait}

        found = await self._on_owner(claims.task_id, "wait_ask", args, longer=wait)
        if found is not None:
            return None if found["ask"] is None else WorkerAsk.from_record(found["ask"])
        task = self.tasks.get(claims.task_id)
        record = next(
            (a for a in (task.attempts if task else []) if a.number == claims.attempt), None
        )
        ask = record.ask(ask_id) if record is not None else None
        if ask is None:
            return None
        if wait and not ask.status.settled:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await ask.done.wait()
        return ask

    async def _withdraw_asks(self, task: Task, record: AttemptRecord) -> None:
        runners = [a.runner for a in record.asks if a.runner is not None and not a.runner.done()]
        reason = task.cancel_reason or "the attempt ended"
        for runner in runners:
            runner.cancel(reason)
        if runners:
            await asyncio.wait(runners)

    # -- cancel and shutdown ---------------------------------------------

    async def cancel(self, task_id: str, reason: str) -> bool:
        """Stop the task's run; True when it was still going."""
        found = await self._on_owner(
            task_id, "cancel", lambda: {"task_id": task_id, "reason": reason}
        )
        if found is not None:
            return bool(found["cancelled"])
        task = self.tasks.get(task_id)
        run = self._runs.get(task_id)
        if task is None or task.status.terminal or run is None:
            return False
        task.cancel_reason = reason
        run.cancel(reason)
        # Withdrawal (cancel frames, revocation) is quick; the caller sees the end state.
        await asyncio.wait({run}, timeout=5)
        return True

    async def shutdown(self, reason: str = "server shutting down", hand_over: bool = False) -> None:
        """Stop taking tasks and cancel every run with ``reason``.

        With ``hand_over`` (a shared store) the runs stop but their tasks do not
        end: they stay ``running`` in the store, for another node to take over
        once this one lets go of their leases.
        """
        self._accepting = False
        self._handing_over = hand_over
        runs = list(self._runs.items())
        for task_id, run in runs:
            if (task := self.tasks.get(task_id)) is not None:
                task.cancel_reason = reason
            run.cancel(reason)
        if runs:
            await asyncio.wait([run for _, run in runs], timeout=self.settings.shutdown_timeout_s)

    @property
    def accepting(self) -> bool:
        return self._accepting


class TakenOver(Exception):
    """Raised out of ``_end`` into the task's run: another node runs it now."""


async def _report_failure(coro: Coroutine[Any, Any, Any], what: str) -> None:
    """Nobody awaits fire-and-forget work, so say here when it did not happen."""
    try:
        await coro
    except AttemptFailed as exc:
        log.warning(f"{what} not delivered", code=exc.code, message=exc.message)
