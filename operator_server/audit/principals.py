"""Whom an act is attributed to, where no route check names a principal.

An HTTP act names ``principal_of(request).name`` (``auth/principal.py``).  A
frame a session answers, and a socket it attaches, are its minter's acts
(``session_principal``).  What the server does on its own (issuing a request to
an operator) and what a sub-agent posts with its attempt's credential have
fixed names.
"""

from __future__ import annotations

from typing import Any

# The server itself: a request issued to an operator, an attempt's own end.
SERVER = "server"
# A sub-agent posting its attempt's result with the attempt's credential.
WORKER = "worker"
# Who minted a session before sessions remembered it (and with no route check).
UNKNOWN_MINTER = "local"


def session_principal(session: Any) -> str:
    """The principal a session's acts are attributed to: the one that minted it.

    Reads ``OperatorSession.minted_by``, which the API keys work adds; until
    it is there every session was minted by the loopback caller (``local``).
    """
    return str(getattr(session, "minted_by", UNKNOWN_MINTER))
