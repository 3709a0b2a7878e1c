"""In-test operator faces: real objects satisfying the engine's Protocols.

They stand where an external operator would, so the engine's middleware paths
can be driven precisely; the WebSocket session is tested separately with real
sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from operator_server.engine import AttemptContext, HookVerdict, WorkerResult
from operator_server.engine.faces import Issued

APPROVE = HookVerdict(True)
# An escalation answer (the senior_escalation schema) that passes the attempt.
OVERRIDE = {"decision": "override", "note": "approved by senior"}
Execute = Callable[[AttemptContext, str], Awaitable[WorkerResult | None]]


class FakeOperator:
    """SeniorBridge + SpawnHook + Operator with scripted answers and a call log."""

    def __init__(
        self,
        *,
        verdict: HookVerdict = APPROVE,
        answer: Any = OVERRIDE,
        execute: Execute | None = None,
    ) -> None:
        self.verdict = verdict
        self.answer = answer
        self._execute = execute
        self.questions: list[tuple[str, Any]] = []
        self.schemas: list[dict[str, Any] | None] = []
        self.before_calls: list[int] = []
        self.after_results: list[WorkerResult] = []
        self.after_called = asyncio.Event()
        self.executing = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.last_ctx: AttemptContext | None = None

    async def ask(
        self,
        task_id: str,
        question: Any,
        *,
        parent_req_id: str | None = None,
        answer_schema: dict[str, Any] | None = None,
        issued: Issued | None = None,
        deadline: Any = None,
    ) -> Any:
        self.questions.append((task_id, question))
        self.schemas.append(answer_schema)
        if issued is not None:
            issued(f"op-fake-ask-{len(self.questions)}")
        return self.answer

    async def before(self, ctx: AttemptContext) -> HookVerdict:
        self.before_calls.append(ctx.attempt)
        return self.verdict

    async def after(self, ctx: AttemptContext, result: WorkerResult) -> None:
        self.after_results.append(result)
        self.after_called.set()

    async def execute(
        self, ctx: AttemptContext, system: str | None, prompt: Any, capability: str
    ) -> WorkerResult | None:
        self.last_ctx = ctx
        self.executing.set()
        try:
            if self._execute is None:
                return WorkerResult({"done": prompt})
            return await self._execute(ctx, capability)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
