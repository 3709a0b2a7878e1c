"""Every operator session the server knows, from mint to teardown.

A session is registered into the engine's three registries under its sid the
moment it is minted — never by the connect path — and unregistered (roles
released, pending requests failed, socket closed) when it is deleted or expires.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid

from operator_server.config import Settings
from operator_server.engine import Engine
from operator_server.errors import AttemptFailed, Code
from operator_server.logs import get_logger
from operator_server.operators.directive import DirectiveTemplate
from operator_server.operators.pump import SocketPump
from operator_server.operators.session import WSOperatorSession, hash_token

log = get_logger(__name__)


class OperatorDirectory:
    def __init__(self, engine: Engine, settings: Settings, directive: DirectiveTemplate) -> None:
        self.engine = engine
        self.settings = settings
        self.directive = directive
        self.sessions: dict[str, WSOperatorSession] = {}

    def mint(self, roles: list[str], desc: str) -> tuple[WSOperatorSession, str]:
        """A new session and its token.  Raises ``RolesConflict`` and takes nothing."""
        sid = f"op-{uuid.uuid4()}"
        token = secrets.token_urlsafe(32)  # 256 bits
        self.engine.roles.claim(sid, roles)
        session = WSOperatorSession(
            sid=sid,
            token_hash=hash_token(token),
            roles=list(roles),
            desc=desc,
            settings=self.settings,
            directive=self.directive,
        )
        self.add(session)
        log.info("operator minted", sid=sid, roles=roles)
        return session, token

    def add(self, session: WSOperatorSession) -> None:
        self.sessions[session.sid] = session
        self.engine.register_operator(session.sid, session)

    def remove(
        self, sid: str, code: Code, message: str, close_code: int = 1000
    ) -> SocketPump | None:
        """Unregister everywhere, fail what is pending, close the socket."""
        session = self.sessions.pop(sid)
        self.engine.unregister_operator(sid)
        return session.end(AttemptFailed(code, message), close_code, message)

    def expired(self, now: float | None = None) -> list[str]:
        ttl = self.settings.session_idle_ttl_s
        if not ttl:
            return []
        now = time.time() if now is None else now
        return [
            sid
            for sid, s in self.sessions.items()
            if (idle := s.idle_since()) is not None and now - idle >= ttl
        ]

    def sweep(self) -> list[str]:
        """Tear down sessions idle with no socket for ``session_idle_ttl_s``."""
        gone = self.expired()
        for sid in gone:
            ttl = self.settings.session_idle_ttl_s
            self.remove(sid, Code.OPERATOR_EXPIRED, f"session idle with no socket for {ttl:g}s")
            log.info("operator session expired", sid=sid)
        return gone

    async def close_sockets(self, code: int, reason: str) -> None:
        """Close every attached socket (shutdown); sessions stay."""
        pumps = [p for s in self.sessions.values() if (p := s.close_socket(code, reason))]
        if pumps:
            await asyncio.gather(*(p.wait_closed(self.settings.shutdown_timeout_s) for p in pumps))
