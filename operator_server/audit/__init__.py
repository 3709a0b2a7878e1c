"""The audit trail: who decided what, append-only and hash-chained.

``record`` declares an entry and its actions, ``chain`` links and checks rows,
``principals`` says whom an act is attributed to, ``cli`` is
``operator-server audit verify|export``.  The stores keep the rows, each in
the same commit as the decision it records (``store/base.py``).
"""

from operator_server.audit.record import GENESIS, Action, AuditEntry, AuditRow, payload_sha256

__all__ = ["GENESIS", "Action", "AuditEntry", "AuditRow", "payload_sha256"]
