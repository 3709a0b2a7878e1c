"""What an operator's reply decided, as an audit entry.

The frame says it: an ``answer`` answers or (with ``error``) declines an ask,
and answers an escalation with ``override`` or ``uphold``; a ``hook_ack``
approves or rejects a spawn; a ``spawn_ack`` or ``spawn_halt`` settles a spawn.
Only the SHA-256 of a value enters the trail; a reason or a note does, whole:
it is why, not what.
"""

from __future__ import annotations

from typing import Any

from operator_server.audit.record import Action, AuditEntry, payload_sha256
from operator_server.engine.middleware import ESCALATION_SCHEMA


def reply_entry(
    kind: str,
    data: dict[str, Any],
    answer_schema: dict[str, Any] | None,
    *,
    principal: str,
    task_id: str,
    session_id: str | None,
) -> AuditEntry:
    """The entry for ``data``, a reply of ``kind`` accepted for its request
    (``answer_schema``: the ask's answer form, which tells an escalation)."""
    action, outcome, reason, value = _decided(kind, data, answer_schema is ESCALATION_SCHEMA)
    return AuditEntry(
        action=action,
        principal=principal,
        task_id=task_id,
        req_id=str(data["req_id"]),
        session_id=session_id,
        outcome=outcome,
        reason=reason,
        payload_sha256=None if value is None else payload_sha256(value),
    )


def _decided(
    kind: str, data: dict[str, Any], escalation: bool
) -> tuple[Action, str, str | None, Any]:
    """(action, outcome, reason or note, the value whose digest is kept)."""
    error = data.get("error")
    if kind == "answer":
        value = data.get("value")
        if error:
            return Action.ASK_DECLINED, "declined", str(error), None
        if escalation:
            note = value.get("note") if isinstance(value, dict) else None
            note = note if isinstance(note, str) and note else None
            if isinstance(value, dict) and value.get("decision") == "override":
                return Action.ESCALATION_OVERRIDDEN, "overridden", note, value
            return Action.ESCALATION_UPHELD, "upheld", note, value
        return Action.ASK_ANSWERED, "answered", None, value
    if kind == "hook_ack":
        if data.get("ok"):
            return Action.HOOK_APPROVED, "approved", data.get("reason"), None
        return Action.HOOK_REJECTED, "rejected", data.get("reason") or "no reason given", None
    if kind == "spawn_halt":
        return Action.SPAWN_HALTED, "halted", data.get("reason"), data.get("value")
    # spawn_ack
    if error:
        return Action.SPAWN_ACKED, "error", str(error), data.get("value")
    return Action.SPAWN_ACKED, "ok" if data.get("ok", True) else "not_ok", None, data.get("value")
