"""The engine: owns the live tasks and every run of them.

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
stored on its own row as it changes (``WorkerApi.ask_changed``), never by rewriting
its task, and ``recover_task`` decides what a restart does with each stored task.

Size: a task's run from start to end, with each ending's guarantees written
beside the code that keeps them.  What is not the run has its own module:
reads (``reads``), counts (``counts``), the worker API (``worker``) and
operator resolution (``resolution``).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import replace
from typing import Any

import structlog

from operator_server.audit.principals import SERVER
from operator_server.audit.record import Action, AuditEntry
from operator_server.background import Background
from operator_server.cluster.routing import HERE, LocalRouting, Routing
from operator_server.config import Settings
from operator_server.engine.agents import AgentTable
from operator_server.engine.capabilities import CapabilityIssuer
from operator_server.engine.counts import StatusCounts
from operator_server.engine.deadlines import (
    AttemptDeadlines,
    DueSoon,
    DueSoonObserver,
    chain_of,
    config_rules,
    task_rules,
)
from operator_server.engine.events import EventFanout, EventLog, EventType, LocalFanout
from operator_server.engine.faces import (
    AttemptContext,
    Kind,
    WorkerResult,
)
from operator_server.engine.middleware import Upheld, build_chain
from operator_server.engine.observers import OBSERVED, RequestObserver, RequestReported
from operator_server.engine.outputs import OutputEvent
from operator_server.engine.reads import TaskReads
from operator_server.engine.resolution import FindElsewhere, OperatorResolution
from operator_server.engine.schedule import DeadlineHeap
from operator_server.engine.tasks import (
    LIVE_STATUSES,
    TERMINAL_STATUSES,
    AttemptRecord,
    Callback,
    Ending,
    OperatorSpec,
    Task,
    TaskStatus,
)
from operator_server.engine.worker import WorkerApi
from operator_server.errors import AttemptFailed, Code
from operator_server.logs import get_logger
from operator_server.metrics import Metrics
from operator_server.store import Fenced, Store, StoreError, TaskEvent
from operator_server.tracing import NoTracing, Tracing
from operator_server.wire.frames import FACE_OF
from operator_server.wire.times import iso

log = get_logger(__name__)
# Retention deletes at most this many tasks per sweep, so one sweep after a
# long downtime cannot hold the store for long.
RETENTION_BATCH = 5000
# Events read per store round trip when following other nodes' (cluster mode).
TAIL_BATCH = 1000
# An end the store could not write is tried again after this, doubling up to
# the most (``Engine._end``): quick after a blip, a few tries a minute after that.
END_RETRY_FIRST_S = 0.05
END_RETRY_MAX_S = 2.0


class Engine:
    def __init__(
        self,
        settings: Settings,
        background: Background,
        store: Store,
        metrics: Metrics | None = None,
        fanout: EventFanout | None = None,
        find_operator: FindElsewhere | None = None,
        routing: Routing | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        # Spans of tasks, attempts and what they ask of others (``tracing.py``).
        self.tracing: Tracing = tracing or NoTracing()
        self.background = background
        self.store = store
        self.metrics = metrics or Metrics()
        # Task events: ids handed out here, written with the change they
        # describe, published by the store once committed.
        self.events = EventLog()
        # ``events = false``: none are built or stored (the stream routes answer 404).
        self.recording = settings.events
        # Each request kind's deadline and on-timeout action from config: read
        # once, and overridden per task by its operator spec.
        self._config_rules = config_rules(settings)
        self.fanout: EventFanout = fanout or LocalFanout()
        self._stored_event_id = 0  # the store's newest event at start-up
        # In a shared store, every live task this node writes is leased to it.
        store.lease_tasks(
            settings.node_id, settings.cluster.lease_s, [str(s) for s in LIVE_STATUSES]
        )
        # Where a task's work is done: here (``LocalRouting``), or, given by
        # ``cluster/wiring.py`` (the one place cluster mode is set up), on
        # whichever node holds its lease.  There, streams follow every node's
        # events from the store instead of this node's commits.
        self.routing: Routing = routing or LocalRouting()
        store.observe_events(self.fanout.publish)
        # Set when a finished task's webhook delivery is stored (or queued to be:
        # the sender's read comes after it in the store's order): wakes the sender.
        self.deliveries_due = asyncio.Event()
        self.resolution = OperatorResolution(find_operator)
        # Every operator request's deadline and reminder, on one heap served
        # by one background task (``deadlines``).
        self.deadline_heap = DeadlineHeap(background.spawn)
        # The hook point notifications attach to: each ``request_due_soon``,
        # and each request issued or moved on.
        self.due_soon_observers: list[DueSoonObserver] = []
        self.request_observers: list[RequestObserver] = []
        self.agents = AgentTable()
        secret = settings.secret.encode() if settings.secret else self._random_secret()
        self.capabilities = CapabilityIssuer(secret, settings.capability_ttl_s)
        # Live tasks only (pending or running, or ending right now); finished
        # ones are read from the store.
        self.tasks: dict[str, Task] = {}
        self.counts = StatusCounts()
        self._runs: dict[str, asyncio.Task[None]] = {}
        self.contexts: dict[str, AttemptContext] = {}
        self.reads = TaskReads(self.tasks, store, self.routing)
        self.worker = WorkerApi(
            settings,
            store,
            background,
            self.metrics,
            self.capabilities,
            self.tasks,
            self.contexts,
            self._on_owner,
            self.tracing,
        )
        self._accepting = True
        # Stopping to let another node take the running tasks: runs end without
        # ending their tasks (``shutdown(hand_over=True)``).
        self._handing_over = False
        # Tasks another node took over while their runs here were still going.
        self._let_go: set[str] = set()
        # Tasks let go whose leases (if still this node's) are to be given up,
        # so that the next takeover, here or elsewhere, re-dispatches them.
        self.unleased: set[str] = set()
        # Who cancelled each task being cancelled: audited with its end.
        self._cancelled_by: dict[str, AuditEntry] = {}

    @staticmethod
    def _random_secret() -> bytes:
        # Not a warning: a capability is live only in the memory of the process
        # that minted it (``CapabilityIssuer._live``), so a restart ends every
        # one of them whatever the key; one daemon loses nothing to a random
        # key.  A cluster, where it would matter, cannot start without one
        # (config.py).
        log.debug("no secret configured: worker credentials are signed with a random key")
        return secrets.token_bytes(32)

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
        principal: str = SERVER,
        trace_parent: Mapping[str, str] | None = None,
    ) -> Task:
        """Create a task, store it durably, and start dispatching it; audited
        as ``principal``'s act in the same commit.  ``trace_parent``: the
        creator's W3C trace headers, whose span the task's is a child of.

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
        audit = [
            AuditEntry(
                Action.TASK_CREATED,
                principal,
                task_id=task.id,
                outcome=str(task.status),
                at=task.created_at,
            )
        ]
        # Cluster mode: a task whose operator's socket is on another node is
        # stored leased to that node and run there (``cluster/placement.py``);
        # a child of a spawn held here stays, to nest under it.
        placing = HERE
        if self.routing.shared and task.parent_task_id not in self.contexts:
            placing = await self.routing.place(task, task.to_record(), created, audit)
        if not placing.stored:
            await self.store.put_task(task.to_record(), created, audit=audit)
        placed = placing.node
        self.counts.moved(None, task.status)
        self.metrics.task_created()
        self.tracing.task_created(task.id, task.agent, str(task.kind), trace_parent)
        if placed is None:
            self.adopt(task)
        else:
            log.debug("task handed to the node holding its operator", task_id=task.id, node=placed)
            self.tracing.task_let_go(task.id)
            self.reads.handed_away(task)
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

    def _ending_audit(self, task: Task, ending: Ending) -> list[AuditEntry]:
        """A task's final end as ``cancelled`` records who cancelled it (a
        cancel by the server itself, at shutdown, records nobody's act)."""
        if not ending.final:
            return []
        cancelled = self._cancelled_by.pop(task.id, None)
        if cancelled is None or ending.status is not TaskStatus.CANCELLED:
            return []
        return [cancelled]

    def _output(self, task: Task, attempt: int, output: OutputEvent) -> None:
        """An attempt's new output, as an event: its kind and source, never its value."""
        if self._stale(task.id):
            return
        event = self.events.make(
            task, EventType.OUTPUT, output.at, attempt, output.kind, output.source, output.ok
        )
        self.store.put_events_soon([event])

    def operator_event(
        self,
        type: str,
        task_id: str,
        req_id: str,
        face: str,
        sid: str | None,
        audit: AuditEntry | None = None,
        fields: tuple[Any, ...] = (),
        via: str | None = None,
    ) -> None:
        """An operator request was issued (``request``), answered (``reply``,
        ``via`` where the reply came from) or moved on (``request_moved``, its
        own ``fields`` after the common ones): reported by the operator session,
        recorded on the task's stream, with the audit entry of what it asked or
        decided in the same write."""
        task = self.tasks.get(task_id)
        if task is None or self._stale(task_id):
            return  # not this node's to write
        # A hook_after (issued with no audit entry) asks nobody anything.
        if type in OBSERVED and (audit is not None or type != EventType.REQUEST):
            reported = RequestReported(type, task_id, req_id, face, sid, fields)
            for observer in list(self.request_observers):
                try:
                    observer(reported)
                except Exception:  # a notifier's bug must not stop the request
                    log.exception("a request observer failed")
        entries = [] if audit is None else [audit]
        if task.history_closed or not self.recording:
            # A task's history ends with its terminal status.  What comes after
            # it — the hook_after notice, sent as the attempt's result is
            # decided — would follow the event that closed the stream, with a
            # status the task no longer has.
            if entries:
                self.store.put_events_soon((), audit=entries)
            return
        extra = fields if via is None else (*fields, via)
        event = self.events.make(task, type, time.time(), task.attempt, req_id, face, sid, *extra)
        self.store.put_events_soon([event], audit=entries)

    def request_due_soon(self, notice: DueSoon) -> None:
        """A request is unanswered at ``remind_at_fraction`` of its deadline:
        an event on its task's stream, then each observer."""
        self.operator_event(
            EventType.REQUEST_DUE_SOON,
            notice.task_id,
            notice.req_id,
            notice.face,
            notice.sid,
            fields=(iso(notice.due_at), notice.on_timeout),
        )
        log.info(
            "request due soon",
            task_id=notice.task_id,
            req_id=notice.req_id,
            due_at=iso(notice.due_at),
            on_timeout=notice.on_timeout,
        )
        for observer in list(self.due_soon_observers):
            try:
                observer(notice)
            except Exception:  # a notifier's bug must not stop the reminders
                log.exception("a request_due_soon observer failed")

    def _save_dues(self, task: Task) -> None:
        """The task's open due times changed: its row is written (soon) with them."""
        if not self._stale(task.id) and not task.status.terminal:
            self.store.put_task_soon(task.to_record())

    # -- restart and retention -------------------------------------------

    async def recount(self) -> None:
        """Cluster mode: take the whole cluster's counts from the store (every
        lease round), where each node's changes are counted as they commit."""
        self.counts = StatusCounts(await self.store.count_tasks())

    async def load_counts(self) -> None:
        """Start the status counters and the event ids from what is stored (at start-up)."""
        self.counts = StatusCounts(await self.store.count_tasks())
        stored = await self.store.last_event_id()
        self._stored_event_id = self._tailed = stored

    async def tail_events(self, stored: int | None = None) -> None:
        """Cluster mode: publish every stored event after the last one published
        (``stored``: the newest id known stored, None if unknown).

        With no stream open here there is nobody to publish to, so nothing is
        read: the published id moves on to ``stored``, and a stream opened
        later reads what came before it from the store, as every stream's
        catch-up does.  (Reading every node's events back, and decoding them,
        was most of the CPU a node spent on other nodes' work.)"""
        if stored is not None and not self.fanout.subscribers:
            self._tailed = max(self._tailed, stored)
            self._stored_event_id = max(self._stored_event_id, stored)
            return
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
            open_asks = [a for a in current.asks if not a.status.settled]
            self._end_soon(task, task.interrupt("the server stopped during this attempt"))
            for ask in open_asks:  # withdrawn by the ending: stored so
                ask.attempt = current.number
                self.worker.ask_changed(task, ask)
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
            and (current.status.settles or task.attempts_used >= task.max_attempts)
        ):
            # The last attempt had ended; only the task's own ending was lost.
            await self._end(
                task, Ending(current.status, result=current.result, error=current.error)
            )
        else:
            self.counts.moved(task.requeue(), TaskStatus.PENDING)
            if current is None:  # never started: handed here by the node that created it
                log.debug("dispatching a task taken from another node", task_id=task.id)
            else:
                log.info("re-dispatching interrupted task", task_id=task.id, attempt=task.attempt)
            self.tracing.task_created(task.id, task.agent, str(task.kind), recovered=True)
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
        self.reads.came_back(task.id)
        # A child task started while its parent's spawn is held nests its
        # requests under that spawn.
        parent = self.contexts.get(task.parent_task_id or "")
        parent_req = parent.open_request if parent else None
        run = self.background.spawn(self._run(task, parent_req), name=f"task:{task.id}")
        self._runs[task.id] = run
        run.add_done_callback(lambda done: self._settle(task, done))

    async def _run(self, task: Task, parent_req: str | None) -> None:
        structlog.contextvars.bind_contextvars(task_id=task.id)
        try:
            with self.tracing.running(task.id):
                await self._attempts(task, parent_req)
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

    async def _attempts(self, task: Task, parent_req: str | None) -> None:
        """Dispatch attempts until one's end is final, storing each end."""
        # Cluster mode: a new task whose operator has no socket on any node
        # waits for one, and goes to the node it attaches on
        # (``cluster/placement.py``); a child nesting under a held spawn stays.
        first = self.routing.shared and task.attempt == 0 and parent_req is None
        if first and (node := await self.routing.wait_for_socket(task)):
            self._let_go_of(task, f"its operator's socket attached on node {node}", handed=True)
            raise TakenOver(node)
        while True:
            decided = await self.dispatch_attempt(task, parent_req)
            if decided.error is not None and decided.error.code == Code.STORE_FAILED:
                decided = self._cut_by_store(task, decided.error)
            final = (
                decided.status.settles
                or task.attempts_used >= task.max_attempts
                or task.interruptions > self.settings.store.max_interruptions
            )
            await self._end(task, replace(decided, final=final))
            if final:
                break
            # Cluster mode: the operator's socket may be on another node now;
            # the next attempt then runs there (``cluster/placement.py``).
            if self.routing.shared and (node := await self.routing.place_next(task)):
                self._let_go_of(task, f"its next attempt runs on node {node}", handed=True)
                raise TakenOver(node)
            log.debug("retrying", attempt=task.attempt, after=str(decided.status))

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
        audit = self._ending_audit(task, ending)
        fenced: Fenced | None = None
        delay = END_RETRY_FIRST_S
        told_whole = ending.final and self.store.shared
        while True:
            try:
                if self._stale(task.id):  # its end may be decided elsewhere: not written here
                    raise Fenced(f"task {task.id}: this node's lease of it lapsed or was let go")
                await self._outputs_kept(task)
                await self.store.put_task(
                    task.record_with(ending),
                    events,
                    deliver_at=deliver,
                    audit=audit,
                    # Other nodes' long-polls on it take it from the end's news.
                    ended_as=task.whole_record_with(ending) if told_whole else None,
                )
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

    def _apply_end(self, task: Task, ending: Ending, *, stored: bool = True) -> None:
        """The one place an ending — of an attempt, and with ``ending.final``
        of its task — is applied; its events are built before (``_ending_events``).

        ``stored``: its write has committed (``_end``; also when cancelled
        while waiting for the write: it is queued and lands).  A final end
        then takes the task out of memory (reads find it in the store), and
        the attempt's duration is measured.  Otherwise (``_end_soon``) the
        task stays in memory until its write is sure.  Counts and metrics
        move here, once per ending: an attempt or task already ended is not
        ended again (``Task.end``)."""
        before = task.status
        attempt = task.current
        running = attempt is not None and not attempt.status.terminal
        task.end(ending)
        if running and attempt is not None:
            self.tracing.attempt_ended(task.id, attempt.status, ending.error)
        if stored and running and attempt is not None and attempt.ended_at is not None:
            self.metrics.attempt_ended(attempt.ended_at - attempt.started_at)
        if ending.final:
            self.counts.moved(before, task.status)
            self.metrics.task_finished(str(task.status))
            self.tracing.task_ended(task.id, task.status, ending.error)
            if stored:
                self.tasks.pop(task.id, None)

    def _end_soon(self, task: Task, ending: Ending) -> None:
        """Apply ``ending`` before its write commits, where nothing can wait
        for the store (``_settle``: a run that never took its first step or
        crashed; ``recover_task``: the attempt a restart cut short).  A final
        end queues the task's row with its events and its webhook; an
        attempt's end queues its events, and is stored with the task's next
        write (its next attempt's start, or its end)."""
        events = self._ending_events(task, ending)
        deliver = self._delivery_at(task, ending)
        audit = self._ending_audit(task, ending)
        self._apply_end(task, ending, stored=False)
        if not ending.final:
            if events:
                self.store.put_events_soon(events)
            return
        self.store.put_task_soon(task.to_record(), events, deliver_at=deliver, audit=audit)
        if deliver is not None:
            self.deliveries_due.set()

    def _cut_by_store(self, task: Task, error: AttemptFailed) -> Ending:
        """The store, not the work, cut this attempt short (its start or an
        operator request could not be stored): an interruption, as a restart
        is — not counted against ``max_attempts``, counted against
        ``store.max_interruptions`` — and the task is dispatched again once
        this ending is stored (``_end`` waits for the store to answer)."""
        return task.interrupt(f"the store failed: {error.message}")

    def _let_go_of(self, task: Task, why: str, *, handed: bool = False) -> None:
        """Another node runs ``task`` now: forget it here without ending it.
        ``handed``: this node gave it away (no warning: nothing went wrong)."""
        if handed:
            log.info("handed the task to another node", reason=why)
        else:
            log.warning("another node took this task over; letting it go", reason=why)
        self._let_go.add(task.id)
        self.unleased.add(task.id)
        self.tasks.pop(task.id, None)
        self._cancelled_by.pop(task.id, None)  # its end is the other node's to audit
        self.tracing.task_let_go(task.id)
        task.let_go()

    def let_go_all(self, reason: str) -> int:
        """Cluster mode, cut off from the store for longer than a lease: the other
        nodes take these tasks over, so stop their runs here without ending them
        (no write could land anyway).  How many."""
        runs = list(self._runs.items())
        for task_id, run in runs:
            if (task := self.tasks.get(task_id)) is not None:
                task.cancelling(reason)
                self._let_go_of(task, reason)
            run.cancel(reason)
        return len(runs)

    def held(self) -> list[str]:
        """The tasks whose runs this node holds: the leases it renews (cluster mode)."""
        return [task_id for task_id in self._runs if task_id not in self._let_go]

    def _settle(self, task: Task, run: asyncio.Task[None]) -> None:
        """The run ended; if it never got to record that (cancelled before it
        took its first step, or crashed), record it here, before its write
        commits (nothing here can wait: ``_end_soon``), so the task stays in
        memory until the next sweep.
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
            self._end_soon(task, Ending(status, error=AttemptFailed(code, reason)))

    @staticmethod
    def _named_per_kind(spec: OperatorSpec | None) -> dict[str, str]:
        """The session or role the task's operator spec names, by request kind."""
        if spec is None:
            return {}
        names = spec.face_names()
        return {kind: name for kind, face in FACE_OF.items() if (name := names[face])}

    async def dispatch_attempt(self, task: Task, parent_req_id: str | None = None) -> Ending:
        """Run the next attempt of ``task`` through the middleware chain.

        Returns how the attempt ended without applying it: the caller stores the
        ending and then applies it (``_end``).  A cancelled attempt raises.
        """
        before = task.status
        self.counts.moved(before, TaskStatus.RUNNING)
        record = task.start_attempt()
        with self.tracing.attempt(task.id, record.number):
            return await self._dispatch(task, record, before, parent_req_id)

    async def _dispatch(
        self, task: Task, record: AttemptRecord, before: TaskStatus, parent_req_id: str | None
    ) -> Ending:
        """``dispatch_attempt`` once the attempt has started (its span current)."""
        events: list[TaskEvent] = []
        if self.recording:
            events.append(
                self.events.make(
                    task,
                    EventType.ATTEMPT_STARTED,
                    record.started_at,
                    record.number,
                    self.settings.node_id or None,
                )
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
        spec = task.operator
        ctx.deadlines = AttemptDeadlines(
            task_rules(
                self._config_rules,
                spec.deadline_s if spec else None,
                spec.on_timeout if spec else None,
                spec.deadlines if spec else None,
            ),
            self.settings.remind_at_fraction,
            task.dues,
            lambda: self._save_dues(task),
            chain_of(spec.escalate if spec else None),
            self._named_per_kind(spec),
        )
        self.contexts[task.id] = ctx
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
                await self.resolution.find_operators(task)
            except StoreError as exc:
                log.warning("could not look up the operator in the store", error=str(exc))
            ctx.operator = info = self.resolution.resolve_operator_info(task)
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
            await self.worker.withdraw_asks(task, record)
            self.contexts.pop(task.id, None)
        why = None
        if result.halted:
            status = TaskStatus.HALTED
        elif result.ok:
            status = TaskStatus.PASSED
        else:
            status = TaskStatus.BLOCKED
            # The worker's own words on why, when it gave them: a blocked
            # task whose error is null leaves its reader guessing.
            why = AttemptFailed(Code.WORKER_FAILED, result.error) if result.error else None
        log.debug("attempt ended", status=str(status))
        return Ending(status, result=result, error=why)

    async def _run_local_agent(self, ctx: AttemptContext) -> WorkerResult:
        agent = self.agents.get(ctx.agent)
        if agent is None:
            raise AttemptFailed(Code.AGENT_NOT_REGISTERED, f"agent not registered: {ctx.agent}")
        ctx.tail.append_final(await agent(ctx), "agent")
        return ctx.tail.decide()

    def _fire_and_forget(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        task_id = structlog.contextvars.get_contextvars().get("task_id")
        self.background.spawn(_report_failure(coro, what), name=f"{what}:{task_id}")

    # -- cluster routing ---------------------------------------------------
    # Each worker call (``engine/worker.py``) and each cancel is done by the
    # node running the attempt: another node passes it there.

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

    # -- cancel and shutdown ---------------------------------------------

    async def cancel(self, task_id: str, reason: str, principal: str = SERVER) -> bool:
        """Stop the task's run; True when it was still going.  Its end is
        audited as ``principal``'s cancel."""
        found = await self._on_owner(
            task_id,
            "cancel",
            lambda: {"task_id": task_id, "reason": reason, "principal": principal},
        )
        if found is not None:
            return bool(found["cancelled"])
        task = self.tasks.get(task_id)
        run = self._runs.get(task_id)
        if task is None or task.status.terminal or run is None:
            return False
        self._cancelled_by.setdefault(
            task_id,
            AuditEntry(
                Action.TASK_CANCELLED,
                principal,
                task_id=task_id,
                outcome="cancelled",
                reason=reason,
            ),
        )
        task.cancelling(reason)
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
                task.cancelling(reason)
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
