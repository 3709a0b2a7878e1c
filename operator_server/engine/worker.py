"""The worker API: what a worker (the sub-agent an operator spawned) does
with its attempt's credential — read its prompt, post its result, ask the
task's senior and wait for the answer.

Each call is done by the node running the attempt: another node passes it
there (``Engine._on_owner``; ``cluster/serving.py`` serves it), so every check
(the attempt still live, the credential not revoked, the same ask ``key``) is
made where the state is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from operator_server.audit.principals import WORKER
from operator_server.audit.record import Action, AuditEntry, payload_sha256
from operator_server.engine.asks import AskStatus, WorkerAsk
from operator_server.engine.capabilities import Claims, claims_from_wire, claims_wire
from operator_server.engine.deadlines import RequestDeadline
from operator_server.engine.faces import AttemptContext, Face, SeniorBridge, WorkerResult
from operator_server.engine.tasks import AttemptRecord, Task
from operator_server.errors import AttemptEnded, AttemptFailed, CapabilityError, Code
from operator_server.logs import get_logger
from operator_server.store import Fenced
from operator_server.tracing import NoTracing, Tracing

if TYPE_CHECKING:
    from operator_server.background import Background
    from operator_server.config import Settings
    from operator_server.engine.capabilities import CapabilityIssuer
    from operator_server.metrics import Metrics
    from operator_server.store import Store

# Runs a worker call on the node that runs its task (cluster mode): the
# method's name, its arguments (built only then), how much longer it may
# take; None when the task runs here (``Engine._on_owner``).
OnOwner = Callable[..., Awaitable[dict[str, Any] | None]]

log = get_logger(__name__)
# What a node says of a credential another node issued: ask that node instead.
ELSEWHERE_CODES = frozenset({Code.UNKNOWN_HANDLE, Code.CAPABILITY_REVOKED})


class WorkerApi:
    """Given the engine's state it reads (live tasks, their attempts'
    contexts), not the engine: nothing here drives a run."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        background: Background,
        metrics: Metrics,
        capabilities: CapabilityIssuer,
        tasks: dict[str, Task],
        contexts: dict[str, AttemptContext],
        on_owner: OnOwner,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings, self.store, self.background = settings, store, background
        self.metrics, self.capabilities = metrics, capabilities
        self.tasks, self.contexts = tasks, contexts
        self._on_owner = on_owner
        self.tracing: Tracing = tracing or NoTracing()

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
            return {
                "claims": claims_wire(claims),
                "value": result.value,
                "ok": result.ok,
                "error": result.error,
            }

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
        # The spawn's W3C context: the sub-agent's calls continue the task's trace.
        if (carrier := self.tracing.work_context(task.id)) is not None:
            view["trace"] = carrier
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
            audit = AuditEntry(
                Action.WORKER_RESULT,
                WORKER,
                task_id=task.id,
                outcome="ok" if result.ok else "not_ok",
                payload_sha256=payload_sha256(result.value),
            )
            await self.store.put_output(task.id, record.number, event.to_record(), audit=[audit])
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

    def _live_attempt(self, claims: Claims) -> tuple[Task, AttemptRecord, AttemptContext]:
        """The attempt a verified credential belongs to, if it still runs."""
        task = self.tasks.get(claims.task_id)
        record = task.current if task is not None else None
        ctx = self.contexts.get(claims.task_id)
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
        self.ask_changed(task, ask)
        # A worker's ask is never re-issued after its attempt ends: its due
        # time needs no storing (``engine/deadlines.py``).
        deadline = ctx.deadlines.for_request("ask", durable=False) if ctx.deadlines else None
        ask.runner = self.background.spawn(
            self._hold_ask(task, ask, senior, sid, deadline),
            name=f"worker-ask:{task.id}:{ask.ask_id}",
        )
        log.debug("worker asked", ask_id=ask.ask_id, parent_req_id=ask.parent_req_id)
        return ask

    def ask_changed(self, task: Task, ask: WorkerAsk) -> None:
        """One ask, new or changed, is written on its own: its cost is the ask's,
        never the task's with every ask before it (the task's row holds none)."""
        self.store.put_ask_soon(task.id, ask.attempt, ask.to_record())

    async def _hold_ask(
        self,
        task: Task,
        ask: WorkerAsk,
        senior: SeniorBridge,
        sid: str,
        deadline: RequestDeadline | None,
    ) -> None:
        """Hold the senior's ask until it is answered or the attempt ends."""

        def issued(req_id: str) -> None:
            ask.req_id = req_id
            self.ask_changed(task, ask)

        try:
            value = await senior.ask(
                task.id,
                ask.question,
                parent_req_id=ask.parent_req_id,
                answer_schema=ask.schema,
                issued=issued,
                deadline=deadline,
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
            self.ask_changed(task, ask)
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

    async def withdraw_asks(self, task: Task, record: AttemptRecord) -> None:
        runners = [a.runner for a in record.asks if a.runner is not None and not a.runner.done()]
        reason = task.cancel_reason or "the attempt ended"
        for runner in runners:
            runner.cancel(reason)
        if runners:
            await asyncio.wait(runners)
