"""Whom an act is attributed to, where no route check names a principal.

An HTTP act names ``principal_of(request).name`` (``auth/principal.py``).  A
frame a session answers, and a socket it attaches, are its minter's acts
(``session_principal``).  What the server does on its own (issuing a request to
an operator) and what a sub-agent posts with its attempt's credential have
fixed names.
"""

from __future__ import annotations

from typing import Protocol

# The server itself: a request issued to an operator, an attempt's own end.
SERVER = "server"
# A sub-agent posting its attempt's result with the attempt's credential.
WORKER = "worker"
# Who minted a session before sessions remembered it (and with no route check).
UNKNOWN_MINTER = "local"


class Minted(Protocol):
    minted_by: str


def session_principal(session: Minted) -> str:
    """The principal a session's acts are attributed to: the one that minted it
    (``local`` for a session minted before sessions remembered it)."""
    return session.minted_by or UNKNOWN_MINTER
