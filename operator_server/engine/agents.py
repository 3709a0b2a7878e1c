"""Local agents: what serves an attempt when no operator backend resolves.

An agent is ``async (ctx) -> WorkerResult``.  The built-in ``echo`` agent returns
the attempt's prompt (the task's directive) as its value, so the daemon does real,
visible work with no operator connected.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from operator_server.engine.faces import AttemptContext, WorkerResult

Agent = Callable[[AttemptContext], Awaitable[WorkerResult]]


async def echo(ctx: AttemptContext) -> WorkerResult:
    return WorkerResult(ctx.prompt, ok=True)


class AgentTable:
    def __init__(self) -> None:
        self._agents: dict[str, Agent] = {"echo": echo}

    def get(self, name: str) -> Agent | None:
        return self._agents.get(name)

    def names(self) -> list[str]:
        return sorted(self._agents)
