"""The pending requests of this process's sessions in the order ``GET
/v1/requests`` lists them, so that a page is read from where its cursor
points instead of every request being gathered and sorted for each page
(with 10,000 pending that was 40 times slower than with 100: ``make bench
requests``).

The sessions' ``pending`` maps stay the truth: a session adds what it comes
to hold and drops what it lets go, and a reader checks each entry against
its session, so an entry a session forgot to drop is skipped, never shown.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator, Mapping
from typing import Any, Generic, Protocol, TypeVar

# (issued_at in whole microseconds, req_id): the list's order and its cursor.
Key = tuple[int, str]


def key_of(issued_at: float, req_id: str) -> Key:
    return int(issued_at * 1_000_000), req_id


# What the index reads of a session and of its requests (``operators/session.py``
# imports this module, so it names them by shape, not by class).
class Request(Protocol):
    req_id: str
    issued_at: float
    expects_reply: bool


class Holder(Protocol):
    sid: str

    @property
    def pending(self) -> Mapping[str, Any]: ...


S = TypeVar("S", bound=Holder)
R = TypeVar("R", bound=Request)


class PendingIndex(Generic[S, R]):
    """Requests awaiting a reply, by ``Key``, each with the session holding it."""

    def __init__(self) -> None:
        self._keys: list[Key] = []  # sorted
        self._held: dict[str, tuple[S, R]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def add(self, session: S, req: R) -> None:
        """``session`` holds ``req`` now (issued there, or moved there)."""
        if not req.expects_reply:
            return  # a hook_after only tells: nobody lists it
        if req.req_id not in self._held:
            insort(self._keys, key_of(req.issued_at, req.req_id))
        self._held[req.req_id] = (session, req)

    def discard(self, session: S, req_id: str) -> None:
        """``session`` no longer holds ``req_id``; a no-op when another session
        has taken it meanwhile (a move adds at the target before or after the
        source lets go)."""
        held = self._held.get(req_id)
        if held is None or held[0] is not session:
            return
        del self._held[req_id]
        key = key_of(held[1].issued_at, req_id)
        i = bisect_left(self._keys, key)
        if i < len(self._keys) and self._keys[i] == key:
            del self._keys[i]

    def after(self, cursor: Key | None, sessions: Mapping[str, S]) -> Iterator[tuple[S, R]]:
        """Held requests past ``cursor`` in list order, each still pending at a
        session of ``sessions``.  Read it without awaiting in between."""
        i = 0 if cursor is None else bisect_right(self._keys, cursor)
        while i < len(self._keys):
            req_id = self._keys[i][1]
            i += 1
            session, req = self._held[req_id]
            if _still_held(sessions, session, req):
                yield session, req

    def held(self, req_id: str, sessions: Mapping[str, S]) -> tuple[S, R] | None:
        """The session holding ``req_id`` and the request, if it is still
        pending there: one lookup, whichever session it has moved to."""
        found = self._held.get(req_id)
        if found is None or not _still_held(sessions, *found):
            return None
        return found


def _still_held(sessions: Mapping[str, Holder], session: Holder, req: Request) -> bool:
    """The index's entry is the truth: ``session`` is still a live session of
    ``sessions`` and ``req`` is still pending in it."""
    return sessions.get(session.sid) is session and session.pending.get(req.req_id) is req
