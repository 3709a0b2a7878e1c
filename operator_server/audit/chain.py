"""Walking the chain: does every row still fit the one before it?

One chain per store, also in a cluster: every node's writer appends under the
lock it already takes to number task events (``store/postgres/tasks.py``), so
rows of all nodes form one sequence at no extra lock, each naming its node.

A row fits when its hash is the SHA-256 of its own canonical form and its
``prev_hash`` (an edited row does not), and its ``prev_hash`` is the hash of
the row before it (a deleted or moved row breaks the next link).  The first row
kept must follow the last row retention pruned (``Anchor``), or start the chain.
The newest rows have no successor to give them away: record the head hash
``verify`` prints to prove later that nothing was cut off the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from operator_server.audit.record import GENESIS, AuditRow, link


@dataclass(frozen=True)
class Anchor:
    """The last row retention pruned: the first kept row follows it."""

    seq: int
    hash: str


@dataclass
class Verdict:
    """What ``verify`` found."""

    checked: int = 0
    first_seq: int | None = None  # the first row walked
    head_seq: int | None = None  # the last row that fits
    head_hash: str = GENESIS
    pruned_through: int | None = None  # retention removed every row up to it
    broken_at: int | None = None  # the first row that does not fit
    why: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_at is None


async def verify(rows: AsyncIterator[AuditRow], anchor: Anchor | None) -> Verdict:
    """Walk ``rows`` (in seq order) from the chain's start, or from ``anchor``."""
    verdict = Verdict(pruned_through=None if anchor is None else anchor.seq)
    expected = GENESIS if anchor is None else anchor.hash
    previous: int | None = None if anchor is None else anchor.seq
    async for row in rows:
        if verdict.first_seq is None:
            verdict.first_seq = row.seq
        again = link(row.seq, row.node, row.entry, row.prev_hash)
        if again.hash != row.hash:
            verdict.broken_at, verdict.why = row.seq, "its content does not match its hash (edited)"
            return verdict
        if row.prev_hash != expected:
            verdict.broken_at = row.seq
            verdict.why = (
                f"it does not follow seq {previous} (a row before it was deleted, or rows moved)"
                if previous is not None
                else "it does not start the chain (rows before it were deleted)"
            )
            return verdict
        verdict.checked += 1
        expected, previous = row.hash, row.seq
        verdict.head_seq, verdict.head_hash = row.seq, row.hash
    return verdict
