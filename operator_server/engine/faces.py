"""The three faces of the Operator role, and what flows through them.

``SeniorBridge`` (judgement), ``SpawnHook`` (observation) and ``Backend``
(execution) are ``typing.Protocol``s: anything with the right methods plugs into
the engine's registries — the WebSocket session does, and so do the in-test
fakes — with no change to the engine.

The values that flow through them (``Face``, ``Kind``, ``WorkerResult``,
``HookVerdict``) are declared in ``wire.values``, below the engine, so that the
wire frames and the client library can name them without loading the server;
the engine's modules import them from here or from there alike.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from operator_server.engine.outputs import OutputTail
from operator_server.wire.values import Face, HookVerdict, Kind, WorkerResult

if TYPE_CHECKING:
    from operator_server.engine.deadlines import AttemptDeadlines, RequestDeadline

# Told the req_id of a request as soon as it is issued (before any reply).
Issued = Callable[[str], None]


@runtime_checkable
class SeniorBridge(Protocol):
    async def ask(
        self,
        task_id: str,
        question: Any,
        *,
        parent_req_id: str | None = None,
        answer_schema: dict[str, Any] | None = None,
        issued: Issued | None = None,
        deadline: RequestDeadline | None = None,
    ) -> Any:
        """Ask for judgement; ``parent_req_id`` names the request it is nested
        under; an answer must validate against ``answer_schema`` when given (the
        bridge refuses one that does not and keeps waiting); ``issued`` learns
        the request's id; ``deadline`` (default: the config's for asks) says
        how long it waits and what it becomes then."""
        ...


@runtime_checkable
class SpawnHook(Protocol):
    async def before(self, ctx: AttemptContext) -> HookVerdict: ...

    async def after(self, ctx: AttemptContext, result: WorkerResult) -> None: ...


@runtime_checkable
class Backend(Protocol):
    async def execute(
        self, ctx: AttemptContext, system: str | None, prompt: Any, capability: str
    ) -> WorkerResult | None:
        """Run the attempt; ``None`` means "no value of my own, see the tail"."""
        ...


@dataclass(frozen=True)
class OperatorInfo:
    """Who serves one dispatch, looked up live by ``resolve_operator_info``:
    for each face that resolved, the sid and the object registered under it."""

    found: dict[Face, tuple[str, Any]] = field(default_factory=dict)

    def _face(self, face: Face) -> Any:
        entry = self.found.get(face)
        return None if entry is None else entry[1]

    @property
    def senior_bridge(self) -> SeniorBridge | None:
        face: SeniorBridge | None = self._face(Face.SENIOR_BRIDGE)
        return face

    @property
    def spawn_hook(self) -> SpawnHook | None:
        face: SpawnHook | None = self._face(Face.SPAWN_HOOK)
        return face

    @property
    def backend(self) -> Backend | None:
        face: Backend | None = self._face(Face.BACKEND)
        return face

    def served_by(self) -> dict[str, str]:
        return {str(face): sid for face, (sid, _) in self.found.items()}


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
    # Nesting of operator requests, owned here and nowhere else:
    # ``parent_req_id`` is the request this attempt's own requests are issued
    # under (set by the engine for a child task started during a parent's
    # spawn); ``open_request`` is this attempt's spawn while an operator holds
    # it (set by the session), the parent of whatever is issued during it.
    parent_req_id: str | None = None
    open_request: str | None = None
    # Its requests' deadlines, by the task's rules (None: the config's).
    deadlines: AttemptDeadlines | None = None
