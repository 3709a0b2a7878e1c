"""One audit entry: what was decided, by whom, about which task and request.

An entry is built by whoever decides (the engine, an operator session, a
route) and handed to the store with the write that commits the decision; the
store gives it its ``seq``, its node and its place in the hash chain
(``AuditRow``).  Answers, results and questions never enter the trail, only
the SHA-256 of their canonical JSON (``payload_sha256``), as they never enter
task events: the trail says *that* and *who*, the task says *what*.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from operator_server.wire.times import iso

# The previous hash of a chain's first row.
GENESIS = "0" * 64
# Compact JSON, encoder made once: every decision hashes its row with it.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_SORTED = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode


class Action(StrEnum):
    """Every action the trail records; the README's table lists them."""

    TASK_CREATED = "task.created"
    TASK_CANCELLED = "task.cancelled"
    REQUEST_ISSUED = "request.issued"
    REQUEST_ESCALATED = "request.escalated"
    REQUEST_REASSIGNED = "request.reassigned"
    ASK_ANSWERED = "ask.answered"
    ASK_DECLINED = "ask.declined"
    HOOK_APPROVED = "hook.approved"
    HOOK_REJECTED = "hook.rejected"
    ESCALATION_OVERRIDDEN = "escalation.overridden"
    ESCALATION_UPHELD = "escalation.upheld"
    SPAWN_ACKED = "spawn.acked"
    SPAWN_HALTED = "spawn.halted"
    WORKER_RESULT = "worker.result"
    SESSION_MINTED = "session.minted"
    SESSION_RESUMED = "session.resumed"
    SESSION_LEFT = "session.left"
    SESSION_FORCE_LEFT = "session.force_left"
    SESSION_EXPIRED = "session.expired"
    SESSION_HANDED_OVER = "session.handed_over"
    KEY_CREATED = "key.created"
    KEY_REVOKED = "key.revoked"


def payload_sha256(value: Any) -> str:
    """The SHA-256 of ``value``'s canonical JSON (sorted keys, compact): the
    same value always gives the same digest, whoever encoded it."""
    return hashlib.sha256(_SORTED(value).encode()).hexdigest()


@dataclass(slots=True)  # built for every decision: slots, no frozen setattr
class AuditEntry:
    """A decision as its maker sees it; the store chains it (``AuditRow``)."""

    action: str
    principal: str
    task_id: str | None = None
    req_id: str | None = None
    session_id: str | None = None
    outcome: str | None = None
    reason: str | None = None
    payload_sha256: str | None = None
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class AuditRow:
    """An entry as stored: its ``seq`` (increasing, never reused), the node that
    wrote it, and its link in the chain: ``hash`` = SHA-256 of its canonical
    form followed by ``prev_hash``, the hash of the row before it in its chain."""

    seq: int
    node: str
    entry: AuditEntry
    prev_hash: str
    hash: str

    def view(self) -> dict[str, Any]:
        """The row as ``GET /v1/audit`` and ``audit export`` give it."""
        e = self.entry
        return {
            "seq": self.seq,
            "at": iso(e.at),
            # What the hash covers: ``at`` exactly, for a verifier of an export.
            "at_s": e.at,
            "node": self.node,
            "principal": e.principal,
            "session_id": e.session_id,
            "action": e.action,
            "task_id": e.task_id,
            "req_id": e.req_id,
            "outcome": e.outcome,
            "reason": e.reason,
            "payload_sha256": e.payload_sha256,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def canonical(seq: int, node: str, entry: AuditEntry) -> bytes:
    """The bytes a row's hash covers: every column but the hashes, in a fixed
    order, as compact JSON (a float's ``repr`` round-trips, so a row read back
    from any store encodes the same)."""
    return _COMPACT(
        [
            seq,
            node,
            entry.at,
            entry.principal,
            entry.session_id,
            entry.action,
            entry.task_id,
            entry.req_id,
            entry.outcome,
            entry.reason,
            entry.payload_sha256,
        ]
    ).encode()


def link(seq: int, node: str, entry: AuditEntry, prev_hash: str) -> AuditRow:
    """``entry`` as the row after ``prev_hash`` in its chain."""
    digest = hashlib.sha256(canonical(seq, node, entry) + prev_hash.encode()).hexdigest()
    return AuditRow(seq, node, entry, prev_hash, digest)


def chained_columns(
    start_seq: int, node: str, entries: list[AuditEntry], prev_hash: str
) -> list[tuple[Any, ...]]:
    """``chain``'s rows as stored columns (``COLUMNS`` order), built straight
    from the entries: what a store's writer runs in every commit."""
    out = []
    sha256 = hashlib.sha256
    for seq, e in enumerate(entries, start_seq):
        digest = sha256(canonical(seq, node, e) + prev_hash.encode()).hexdigest()
        out.append(
            (
                seq,
                node,
                e.at,
                e.principal,
                e.session_id,
                e.action,
                e.task_id,
                e.req_id,
                e.outcome,
                e.reason,
                e.payload_sha256,
                prev_hash,
                digest,
            )
        )
        prev_hash = digest
    return out


def chain(start_seq: int, node: str, entries: list[AuditEntry], prev_hash: str) -> list[AuditRow]:
    """``entries`` as consecutive rows from ``start_seq``, after ``prev_hash``."""
    rows = []
    for i, entry in enumerate(entries):
        row = link(start_seq + i, node, entry, prev_hash)
        rows.append(row)
        prev_hash = row.hash
    return rows


# The stored columns, in this order, for every store.
COLUMNS = (
    "seq",
    "node",
    "at",
    "principal",
    "session_id",
    "action",
    "task_id",
    "req_id",
    "outcome",
    "reason",
    "payload_sha256",
    "prev_hash",
    "hash",
)


def from_columns(values: Any) -> AuditRow:
    """A stored row (``COLUMNS`` order) as read back, as it is: verify judges it."""
    seq, node, at, principal, session, action, task, req, outcome, reason, sha, prev, h = values
    entry = AuditEntry(
        action=action,
        principal=principal,
        task_id=task,
        req_id=req,
        session_id=session,
        outcome=outcome,
        reason=reason,
        payload_sha256=sha,
        at=float(at),
    )
    return AuditRow(int(seq), node, entry, prev, h)


def key_act(created: bool, principal: str, key_id: str, name: str) -> AuditEntry:
    """An API key created (``created``) or revoked by ``principal``: the key's
    id is the outcome, its name the reason (never its secret, nor its hash).
    Appended with the key's own write (``Store.append_audit`` where that write
    cannot take it along)."""
    action = Action.KEY_CREATED if created else Action.KEY_REVOKED
    return AuditEntry(action, principal, outcome=key_id, reason=name)
