"""The three faces of the Operator role, and what flows through them.

``SeniorBridge`` (judgement), ``SpawnHook`` (observation) and ``Operator``
(execution) are ``typing.Protocol``s: anything with the right methods plugs into
the engine's registries — the WebSocket session does, and so do the in-test
fakes — with no change to the engine.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from operator_server.engine.tasks import OutputTail


class Kind(StrEnum):
    MAIN_AI = "main_ai"
    COMPOSITE = "composite"
    AUTOMATE = "automate"

    @property
    def fires_spawn_hooks(self) -> bool:
        return self is not Kind.AUTOMATE


@dataclass(frozen=True)
class WorkerResult:
    value: Any
    ok: bool = True
    # A deliberate stop by the operator (``spawn_halt``): final even over a
    # worker-posted result, because the operator chose to end the attempt.
    halted: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ok": self.ok}


@dataclass(frozen=True)
class HookVerdict:
    ok: bool
    reason: str | None = None


@runtime_checkable
class SeniorBridge(Protocol):
    async def ask(self, task_id: str, question: Any) -> Any: ...


@runtime_checkable
class SpawnHook(Protocol):
    async def before(self, ctx: AttemptContext) -> HookVerdict: ...

    async def after(self, ctx: AttemptContext, result: WorkerResult) -> None: ...


@runtime_checkable
class Operator(Protocol):
    async def execute(
        self, ctx: AttemptContext, system: str | None, prompt: Any, capability: str
    ) -> WorkerResult | None:
        """Run the attempt; ``None`` means "no value of my own, see the tail"."""
        ...


@dataclass(frozen=True)
class OperatorInfo:
    """Who serves one dispatch, looked up live by ``resolve_operator_info``."""

    senior_bridge: SeniorBridge | None = None
    senior_bridge_id: str | None = None
    spawn_hook: SpawnHook | None = None
    spawn_hook_id: str | None = None
    backend: Operator | None = None
    backend_id: str | None = None


# The request an operator is handling while this code runs.  A session sets it
# for the duration of a spawn, and the engine copies it into the runs of child
# tasks, so their requests carry ``parent_req_id``.
current_request: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_request", default=None
)


@dataclass
class AttemptContext:
    task_id: str
    attempt: int
    agent: str
    system: str | None
    prompt: Any
    kind: Kind
    capability_token: str
    worker_handle: str
    tail: OutputTail
    operator: OperatorInfo = field(default_factory=OperatorInfo)
    # Starts fire-and-forget work (the after-hook) as a named background task.
    fire_and_forget: Callable[[Coroutine[Any, Any, Any], str], None] | None = None
    # The operator request in flight for this attempt (set by the session),
    # used as the parent of requests issued by child tasks.
    open_request: str | None = None
