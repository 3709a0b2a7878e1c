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

APPROVE = HookVerdict(True)
Execute = Callable[[AttemptContext, str], Awaitable[WorkerResult | None]]


class FakeOperator:
    """SeniorBridge + SpawnHook + Operator with scripted answers and a call log."""

    def __init__(
        self,
        *,
        verdict: HookVerdict = APPROVE,
        answer: Any = "approved by senior",
        execute: Execute | None = None,
    ) -> None:
        self.verdict = verdict
        self.answer = answer
        self._execute = execute
        self.questions: list[tuple[str, Any]] = []
        self.before_calls: list[int] = []
        self.after_results: list[WorkerResult] = []
        self.after_called = asyncio.Event()
        self.executing = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.last_ctx: AttemptContext | None = None

    async def ask(self, task_id: str, question: Any, *, parent_req_id: str | None = None) -> Any:
        self.questions.append((task_id, question))
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
