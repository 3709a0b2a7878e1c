"""The operator sessions as an admin sees them: every node's, connected or not.

In one process the directory holds every session and knows every socket.  In
a cluster a node holds only the sessions minted on it or named to it, and
knows only its own sockets, so its views would show an operator connected to
another node as not connected.  There the views and counts read the shared
rows instead (``ClusterStore.placed_sessions``): a session is connected while
a node whose heartbeat is current holds its socket, so a dead node's sessions
read as disconnected as soon as its heartbeat lapses (``cluster.lease_s``),
without waiting for a survivor to bury it.

``node`` says which node holds the socket; ``remote`` (the socket's peer
address) is known only on that node, and is null on the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from operator_server.cluster.store import cluster_store
from operator_server.operators.directory import OperatorDirectory
from operator_server.operators.session import OperatorSession
from operator_server.store.base import PlacedSession
from operator_server.wire.times import iso


@dataclass(frozen=True)
class SeenSession:
    """One session's view (``login.SessionSchema``), with its creation time to
    order and page by."""

    sid: str
    created_at: float
    view: dict[str, Any]


def session_view(session: OperatorSession, node: str | None) -> dict[str, Any]:
    """The view of a session whose socket, if any, is on this node (``node``)."""
    return {
        "sid": session.sid,
        "roles": session.roles,
        "desc": session.desc,
        "connected": session.connected,
        "node": node if session.connected else None,
        "pending": len(session.pending),
        "created_at": iso(session.created_at),
        "last_seen_at": iso(session.last_seen_at),
        "remote": session.remote,
        "minted_by": session.minted_by,
    }


def _placed_view(row: PlacedSession, here: OperatorSession | None, me: str) -> dict[str, Any]:
    record = row.record
    # This node touches the stored last_seen_at only now and then: its own
    # copy may be newer.
    last_seen = max(record.last_seen_at, here.last_seen_at if here else 0.0)
    return {
        "sid": record.sid,
        "roles": list(record.roles),
        "desc": record.desc,
        "connected": row.socket_node is not None,
        "node": row.socket_node,
        "pending": row.pending,
        "created_at": iso(record.created_at),
        "last_seen_at": iso(last_seen),
        "remote": here.remote if here is not None and row.socket_node == me else None,
        "minted_by": record.minted_by,
    }


async def session_views(directory: OperatorDirectory, sid: str | None = None) -> list[SeenSession]:
    """Every session (or only ``sid``), oldest first; in a cluster, every node's."""
    me = directory.settings.node_id
    shared = cluster_store(directory.engine.store)
    if shared is None:
        chosen = (
            list(directory.sessions.values())
            if sid is None
            else [s for s in (directory.sessions.get(sid),) if s is not None]
        )
        chosen.sort(key=lambda s: (s.created_at, s.sid))
        return [SeenSession(s.sid, s.created_at, session_view(s, me)) for s in chosen]
    rows = await shared.placed_sessions(sid)
    return [
        SeenSession(
            row.record.sid,
            row.record.created_at,
            _placed_view(row, directory.sessions.get(row.record.sid), me),
        )
        for row in rows
    ]


async def session_counts(directory: OperatorDirectory) -> dict[str, int]:
    """How many sessions there are and how many are connected; in a cluster,
    over every node (healthz)."""
    shared = cluster_store(directory.engine.store)
    if shared is None:
        return directory.counts()
    rows = await shared.placed_sessions()  # counted from the rows: no view is built
    connected = sum(1 for row in rows if row.socket_node is not None)
    return {"sessions": len(rows), "connected": connected}
