"""The role-alias map: each role held by at most one operator session."""

from __future__ import annotations


class RolesConflict(Exception):
    def __init__(self, conflicts: dict[str, str]) -> None:
        super().__init__(", ".join(f"{r!r} is held by {s}" for r, s in conflicts.items()))
        self.conflicts = conflicts


class RoleAliases:
    """role -> sid.  Roles are exclusive: one holder each."""

    def __init__(self) -> None:
        self._holder: dict[str, str] = {}

    def claim(self, sid: str, roles: list[str]) -> None:
        """All or nothing: on conflict no role is taken."""
        conflicts = {r: h for r in roles if (h := self._holder.get(r)) is not None and h != sid}
        if conflicts:
            raise RolesConflict(conflicts)
        for role in roles:
            self._holder[role] = sid

    def release(self, sid: str) -> list[str]:
        mine = [r for r, h in self._holder.items() if h == sid]
        for role in mine:
            del self._holder[role]
        return mine

    def resolve(self, role: str) -> str | None:
        return self._holder.get(role)
