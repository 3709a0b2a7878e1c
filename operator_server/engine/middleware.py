"""The middleware chain an attempt runs through, outermost first.

Each layer is ``async (ctx, call_next) -> WorkerResult``; the innermost
``call_next`` runs a local agent.  The default order
``main_ai -> senior_escalation -> operator_delegate`` means: the spawn hook gates
everything, the senior sees the settled result, and the operator (or local
agent) does the work.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from operator_server.engine.faces import AttemptContext, WorkerResult
from operator_server.errors import AttemptFailed, Code

Next = Callable[[AttemptContext], Awaitable[WorkerResult]]
Middleware = Callable[[AttemptContext, Next], Awaitable[WorkerResult]]


async def main_ai(ctx: AttemptContext, call_next: Next) -> WorkerResult:
    """Gate the spawn with ``SpawnHook.before``; report with a fire-and-forget ``after``."""
    hook = ctx.operator.spawn_hook
    if hook is None or not ctx.kind.fires_spawn_hooks:
        return await call_next(ctx)
    verdict = await hook.before(ctx)
    if not verdict.ok:
        reason = verdict.reason or "no reason given"
        raise AttemptFailed(Code.SPAWN_REJECTED, f"spawn rejected: {reason}")
    result = await call_next(ctx)
    if ctx.fire_and_forget is not None:
        ctx.fire_and_forget(hook.after(ctx, result), "hook-after")
    return result


# What an escalation asks for (beyond the seed, where any answer overrode):
# the senior says what it means, and "no" keeps the verdict.
ESCALATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "The worker reported ok=false",
    "properties": {
        "decision": {
            "type": "string",
            "enum": ["override", "uphold"],
            "title": "Decision",
            "description": "override: pass the attempt anyway; uphold: keep it blocked",
        },
        "note": {"type": "string", "title": "Note", "description": "why (shown on the task)"},
    },
    "required": ["decision"],
}


class Upheld(Exception):
    """The senior upheld an ``ok=false`` result: the attempt ends ``blocked``
    with the result as it was and the senior's note as its error."""

    def __init__(self, result: WorkerResult, note: str | None) -> None:
        super().__init__(note)
        self.result = result
        self.error = AttemptFailed(
            Code.SENIOR_UPHELD, note or "the senior upheld the worker's ok=false"
        )


async def senior_escalation(ctx: AttemptContext, call_next: Next) -> WorkerResult:
    """On ``ok=false`` ask the senior to ``override`` (pass) or ``uphold`` (stay
    blocked, with its note); its refusal leaves the verdict as it was."""
    result = await call_next(ctx)
    senior = ctx.operator.senior_bridge
    if result.ok or senior is None:
        return result
    question = {"reason": "worker reported ok=false", "value": result.value}
    if result.error:
        question["error"] = result.error
    try:
        answer = await senior.ask(
            ctx.task_id,
            question,
            parent_req_id=ctx.parent_req_id,
            answer_schema=ESCALATION_SCHEMA,
            deadline=ctx.deadlines.for_request("ask") if ctx.deadlines is not None else None,
        )
    except AttemptFailed as exc:
        if exc.code != Code.OPERATOR_ERROR:
            raise
        # The senior declined (an answer with ``error``): nobody overrode the
        # work's own verdict, so it stands and the task ends ``blocked``.
        return result
    # The bridge validated the answer against the schema; anything but an
    # explicit override keeps the verdict.
    decision = answer.get("decision") if isinstance(answer, dict) else None
    if decision != "override":
        note = answer.get("note") if isinstance(answer, dict) else None
        raise Upheld(result, note if isinstance(note, str) and note else None)
    return WorkerResult({"original": result.value, "senior_answer": answer}, ok=True)


async def operator_delegate(ctx: AttemptContext, call_next: Next) -> WorkerResult:
    """Hand the attempt to the operator backend when one resolves."""
    backend = ctx.operator.backend
    if backend is None:
        return await call_next(ctx)
    try:
        ack = await backend.execute(ctx, ctx.system, ctx.prompt, ctx.capability_token)
    except AttemptFailed as exc:
        # Decided on the results stored, not on one still being written.
        await ctx.tail.settle()
        # A worker's result the server accepted (200) decides the attempt even
        # when the spawn then fails without the operator saying so (session
        # deleted or expired, spawn timed out, reconnect grace ran out): only
        # the operator's own reply (an ``error`` ack, a halt) overrules it.
        if exc.code == Code.OPERATOR_ERROR or not ctx.tail.worker_posted():
            raise
        return ctx.tail.decide()
    await ctx.tail.settle()
    if ack is not None:
        ctx.tail.offer_ack(ack)
    return ctx.tail.decide()


MIDDLEWARE: dict[str, Middleware] = {
    "main_ai": main_ai,
    "senior_escalation": senior_escalation,
    "operator_delegate": operator_delegate,
}


def build_chain(layers: Sequence[str], terminal: Next) -> Next:
    """Compose ``layers`` (outermost first) around ``terminal``."""
    chain = terminal
    for name in reversed(layers):
        chain = _bind(MIDDLEWARE[name], chain)
    return chain


def _bind(layer: Middleware, call_next: Next) -> Next:
    async def step(ctx: AttemptContext) -> WorkerResult:
        return await layer(ctx, call_next)

    return step
