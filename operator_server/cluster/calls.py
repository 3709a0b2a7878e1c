"""Many nodes on one shared store: calls between them, and waking on their changes.

Built on the store's bus (``cluster/bus.py``: PostgreSQL ``LISTEN/NOTIFY``),
so there is no broker and no home-made consensus: the database is the only
thing the nodes share.

* **Calls** (``call``/``serve``): a node asks the node that owns a task (its
  lease) to do what only the owner can — take a worker's result, hold a
  worker's ask, cancel the run, accept an operator's reply — and gets the
  answer or the owner's error back.  A call that gets no answer within
  ``CALL_TIMEOUT_S`` fails with ``node_unreachable``: it ends, with a reason.
* **Ended tasks** (``wait_ended``): a long-poll on a node that does not run the
  task wakes when the store announces, as the end commits, that it ended.
* **Events**: every node's streams follow the store's event rows (``tail``),
  told to read on as each batch commits; one sequence orders them cluster-wide.

Whatever a lost ``NOTIFY`` might have carried is re-read on resync: waiters
look at their task again, the tail reads on.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from operator_server.background import Background
from operator_server.cluster.messages import (
    Answer,
    Call,
    EndedAs,
    EventsStored,
    M,
    Message,
    NodesGone,
    TasksEnded,
)
from operator_server.errors import (
    AttemptEnded,
    AttemptFailed,
    AttemptFull,
    CapabilityError,
    Code,
    CodedError,
    NodeUnreachable,
    ProtocolError,
)
from operator_server.logs import get_logger
from operator_server.store import StoreError
from operator_server.tracing import NoTracing, Tracing

log = get_logger(__name__)
CALL_TIMEOUT_S = 10.0
Served = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def error_to_wire(exc: CodedError) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(exc).__name__, "code": exc.code, "message": exc.message}
    if isinstance(exc, CapabilityError):
        out["forbidden"] = exc.forbidden
    if isinstance(exc, ProtocolError):
        out["req_id"] = exc.req_id
    if exc.detail:
        out["detail"] = exc.detail
    return out


def error_from_wire(err: dict[str, Any]) -> CodedError | StoreError:
    """The same error type the owner raised, so each surface maps it as usual."""
    kind, code, message = err.get("type"), str(err["code"]), str(err["message"])
    if kind == "StoreError":
        return StoreError(message)
    if kind == "AttemptEnded":
        return AttemptEnded(message)
    if kind == "AttemptFull":
        return AttemptFull(code, message, **err.get("detail", {}))
    if kind == "CapabilityError":
        return CapabilityError(Code(code), message, forbidden=bool(err.get("forbidden")))
    if kind == "ProtocolError":
        return ProtocolError(Code(code), message, err.get("req_id"))
    return AttemptFailed(code, message, **err.get("detail", {}))


class Cluster:
    def __init__(
        self, bus: Any, background: Background, lease_s: float, tracing: Tracing | None = None
    ) -> None:
        self.bus = bus
        # Each call is a span on both nodes, joined by the context it carries.
        self._tracing: Tracing = tracing or NoTracing()
        self._background = background
        self._served: dict[str, Served] = {}
        self._calls: dict[int, tuple[str, asyncio.Future[Answer]]] = {}
        self._ids = itertools.count(1)
        self._ended: dict[str, set[asyncio.Future[str | None]]] = {}
        self._tail: Callable[[int | None], Awaitable[None]] | None = None
        self._tailing: asyncio.Task[None] | None = None
        self._tail_again = False
        # The newest event id heard stored since the tail's last read began,
        # and whether what was stored is unknown (a resync: read it all).
        self._heard_stored = 0
        self._must_read = False
        bus.on(Call, self._called)
        bus.on(Answer, self._answered)
        bus.on(TasksEnded, self._heard_ended)
        bus.on(EndedAs, self._heard_ended_as)
        bus.on(EventsStored, lambda _node, message: self.read_events(message.last))
        bus.on(NodesGone, self._heard_gone)
        # Told of every burial after the calls are failed (``on_nodes_gone``).
        self._gone_watchers: list[Callable[[list[str]], None]] = []
        # Nodes found dead (when): a call to one fails at once rather than timing out.
        self._dead: dict[str, float] = {}
        self._forget_dead_s = lease_s
        bus.on_resync(self._resync)

    @property
    def node_id(self) -> str:
        # Read from the bus each time: the store names its node when the engine
        # leases it tasks, after this object is built (``cluster/wiring.py``).
        return str(self.bus.node_id)

    def on(self, kind: type[M], handler: Callable[[str, M], None]) -> None:
        """A plain message handler (the relay routes frames with these)."""
        self.bus.on(kind, handler)

    async def send(self, node: str | None, message: Message) -> None:
        await self.bus.send(node, message)

    # -- calls --------------------------------------------------------------

    def serve(self, method: str, fn: Served) -> None:
        self._served[method] = fn

    async def call(
        self,
        node: str,
        method: str,
        args: dict[str, Any],
        *,
        longer: float = 0,
        parent: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Run ``method`` on ``node``; its result, or its error raised here.
        ``longer``: the method itself may take that long (a long-poll);
        ``parent``: the W3C context the call's span continues, when it is not
        the current one (a reply to a request whose frame came from elsewhere)."""
        if self._known_dead(node):
            raise NodeUnreachable(f"node {node} stopped; its work is taken over by the others")
        with self._tracing.cluster_call(method, node, parent=parent):
            return await self._call(node, method, args, longer)

    async def _call(
        self, node: str, method: str, args: dict[str, Any], longer: float
    ) -> dict[str, Any]:
        call_id = next(self._ids)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = (node, future)
        try:
            await self.bus.send(node, Call(call_id, method, args, self._tracing.call_context()))
            async with asyncio.timeout(CALL_TIMEOUT_S + longer):
                answer = await future
        except TimeoutError:
            raise NodeUnreachable(
                f"node {node} did not answer {method} within {CALL_TIMEOUT_S:g}s"
            ) from None
        except OSError as exc:
            raise NodeUnreachable(f"cannot reach node {node}: {exc}") from exc
        finally:
            self._calls.pop(call_id, None)
        if answer.error is not None:
            raise error_from_wire(answer.error)
        assert answer.value is not None  # one or the other (``Answer.parse``)
        return answer.value

    def _called(self, node: str, call: Call) -> None:
        self._background.spawn(self._traced_call(node, call), name=f"call:{call.m}:{node}")

    async def _traced_call(self, node: str, call: Call) -> None:
        with self._tracing.cluster_call(call.m, node, call.t or {}):
            await self._run_call(node, call.id, call.m, call.a)

    async def _run_call(self, node: str, call_id: int, method: str, args: dict[str, Any]) -> None:
        fn = self._served.get(method)
        answer: Answer
        if fn is None:
            failed = AttemptFailed(Code.INTERNAL, f"no method {method}")
            answer = Answer(call_id, error=error_to_wire(failed))
        else:
            try:
                answer = Answer(call_id, value=await fn(args))
            except CodedError as exc:
                answer = Answer(call_id, error=error_to_wire(exc))
            except StoreError as exc:
                error = {"type": "StoreError", "code": "store_failed", "message": str(exc)}
                answer = Answer(call_id, error=error)
            except Exception:  # the caller gets an answer, never a silent timeout
                log.exception("call failed", method=method)
                failed = AttemptFailed(Code.INTERNAL, f"{method} failed on node {self.node_id}")
                answer = Answer(call_id, error=error_to_wire(failed))
        try:
            await self.bus.send(node, answer)
        except Exception as exc:  # the caller times out and says so
            log.warning("could not answer a call", node=node, method=method, error=str(exc))

    def _answered(self, node: str, answer: Answer) -> None:
        del node
        found = self._calls.get(answer.id)
        if found is not None and not found[1].done():
            found[1].set_result(answer)

    def on_nodes_gone(self, watcher: Callable[[list[str]], None]) -> None:
        """``watcher(nodes)`` each time nodes are found stopped (the bus keeps
        one handler per kind: this one's)."""
        self._gone_watchers.append(watcher)

    def _heard_gone(self, node: str, message: NodesGone) -> None:
        del node
        now = time.monotonic()
        for gone in message.nodes:
            self._dead[gone] = now
        for callee, future in self._calls.values():  # their answers will not come
            if callee in self._dead and not future.done():
                future.set_exception(NodeUnreachable(f"node {callee} stopped"))
        for watcher in self._gone_watchers:
            watcher(list(message.nodes))

    def _known_dead(self, node: str) -> bool:
        """Found dead lately: a node that comes back under the same id is
        believed again after a lease (it must have been away that long)."""
        since = self._dead.get(node)
        return since is not None and time.monotonic() - since < self._forget_dead_s

    # -- tasks other nodes end ----------------------------------------------

    def watch_ended(self, task_id: str) -> asyncio.Future[str | None]:
        """A future set when the store next announces ``task_id`` ended — to
        the task's record as it ended (JSON text) when the news carried it —
        or to None on a resync (look again); ``unwatch`` it when done."""
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._ended.setdefault(task_id, set()).add(future)
        return future

    def unwatch(self, task_id: str, future: asyncio.Future[str | None]) -> None:
        waiters = self._ended.get(task_id)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self._ended[task_id]

    def _heard_ended_as(self, node: str, message: EndedAs) -> None:
        del node
        for task_id, record in message.records.items():
            self._tell_ended(task_id, record)

    def _heard_ended(self, node: str, message: TasksEnded) -> None:
        del node
        for task_id in message.ids:
            self._tell_ended(task_id, None)

    def _tell_ended(self, task_id: str, record: str | None) -> None:
        """Wake ``task_id``'s watchers: with its record as it ended, or None
        (look again)."""
        for future in self._ended.get(task_id, ()):
            if not future.done():
                future.set_result(record)

    # -- events -------------------------------------------------------------

    def follow_events(self, tail: Callable[[int | None], Awaitable[None]]) -> None:
        """``tail`` reads every stored event after the newest published one;
        it is given the newest id heard stored, or None when that is unknown."""
        self._tail = tail

    def read_events(self, stored: int | None = None) -> None:
        """Have the tail read on: now, or again right after its current read.
        ``stored``: events up to this id are stored (None: unknown)."""
        if stored is None:
            self._must_read = True
        else:
            self._heard_stored = max(self._heard_stored, stored)
        if self._tail is None:
            return
        if self._tailing is not None and not self._tailing.done():
            self._tail_again = True
            return
        self._tailing = self._background.spawn(self._read_on(self._tail), name="event-tail")

    async def _read_on(self, tail: Callable[[int | None], Awaitable[None]]) -> None:
        while True:
            self._tail_again = False
            stored = None if self._must_read else self._heard_stored
            self._must_read = False
            try:
                await tail(stored)
            except Exception as exc:  # the next notice or resync reads on
                log.warning("could not read other nodes' events", error=str(exc))
            if not self._tail_again:
                return

    def _resync(self) -> None:
        for task_id in list(self._ended):
            self._tell_ended(task_id, None)
        self.read_events()
