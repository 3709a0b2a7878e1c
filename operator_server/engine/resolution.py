"""Operator resolution: which session serves each face of a task's dispatch.

One map of the operator sessions this node holds, by sid, and the role
aliases (role -> sid).  A session is one object that serves all three faces
(``SeniorBridge``, ``SpawnHook``, ``Backend``): a task's ``OperatorSpec``
names a sid or a role per face, and each name is looked up live, at dispatch
time, first as a sid, then as a role.

In cluster mode a task may name a session minted on another node:
``find_elsewhere`` (given at construction, by whoever knows where sessions
are stored: the operator directory) brings it here first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from operator_server.engine.faces import Face, OperatorInfo
from operator_server.engine.registries import RoleAliases
from operator_server.errors import AttemptFailed, Code

if TYPE_CHECKING:
    from operator_server.engine.tasks import OperatorSpec, Task

# Looks up a name (sid or role) no session here answers to, and registers it here.
FindElsewhere = Callable[[str], Awaitable[None]]
# Serves a face for a role nobody holds, when someone is told of its requests
# (``operators/vacancies.py``); None: nobody serves it.
StandIn = Callable[[str, Face], Any]


class OperatorResolution:
    def __init__(self, find_elsewhere: FindElsewhere | None = None) -> None:
        # sid -> the session; it serves every face a task names it for.
        self.sessions: dict[str, Any] = {}
        self.roles = RoleAliases()
        self._find_elsewhere = find_elsewhere
        # Set by the operator directory when notification rules cover roles.
        self.stand_in: StandIn | None = None

    def register(self, sid: str, session: Any) -> None:
        """Registering a taken sid is a programming error."""
        if sid in self.sessions:
            raise KeyError(f"operator session {sid!r} is already registered")
        self.sessions[sid] = session

    def unregister(self, sid: str) -> None:
        self.sessions.pop(sid, None)
        self.roles.release(sid)

    def get(self, sid: str) -> Any:
        return self.sessions.get(sid)

    async def find_operators(self, task: Task) -> None:
        """Bring here any session ``task`` names that this node does not know
        yet (minted on another node; a role held there)."""
        spec = task.operator
        if spec is None or self._find_elsewhere is None:
            return
        for name in spec.face_names().values():
            if name is None or name in self.sessions:
                continue
            if self.roles.resolve(name) is None:
                await self._find_elsewhere(name)

    def resolve_operator_info(self, task: Task) -> OperatorInfo:
        """Look up, live, who serves this dispatch of ``task``."""
        spec = task.operator
        if spec is None:
            return OperatorInfo()
        found: dict[Face, tuple[str, Any]] = {}
        for face, name in spec.face_names().items():
            if name is None:
                continue
            key = name if name in self.sessions else self.roles.resolve(name)
            item = self.sessions.get(key) if key is not None else None
            if (key is None or item is None) and self.stand_in is not None:
                item = self.stand_in(name, face)
                key = item.sid if item is not None else None
            if key is None or item is None:
                raise AttemptFailed(Code.OPERATOR_NOT_FOUND, _nobody_serves(spec, face, name))
            found[face] = (key, item)
        return OperatorInfo(found)


def _nobody_serves(spec: OperatorSpec, face: Face, name: str) -> str:
    """What a user reads when ``name`` resolves to no session: who is missing
    and how to seat one.  A name is tried as a sid first, then as a role; one
    shaped like a minted sid (``op-…``) is a session that left or expired."""
    # The face is named only when the task chose one per face; a task that
    # names one operator for all three faces would otherwise read as if only
    # the first face looked were missing.
    where = f" for its {face}" if getattr(spec, face) == name else ""
    if name.startswith("op-"):
        return (
            f"no operator session {name!r}{where}: it left or expired "
            "(GET /v1/operators lists the sessions)"
        )
    return (
        f"no operator holds role {name!r}{where}: start one with "
        f"`operator-server operator --role {name}` (or join with that role in the console), "
        "or see who holds which role with GET /v1/operators"
    )
