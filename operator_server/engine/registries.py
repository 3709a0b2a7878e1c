"""Registries keyed by operator session id, and the role-alias map."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """sid -> face.  Registering a taken id is a programming error."""

    def __init__(self, face: str) -> None:
        self.face = face
        self._items: dict[str, T] = {}

    def register(self, key: str, item: T) -> None:
        if key in self._items:
            raise KeyError(f"{self.face} {key!r} is already registered")
        self._items[key] = item

    def unregister(self, key: str) -> T | None:
        return self._items.pop(key, None)

    def get(self, key: str) -> T | None:
        return self._items.get(key)

    def ids(self) -> list[str]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)


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
