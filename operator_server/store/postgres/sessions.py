"""Operator sessions on PostgreSQL: a session's row and the roles it claims,
and the store's operations on them (a mixin of ``PostgresStore``)."""

from __future__ import annotations

import dataclasses
import json

import asyncpg

from operator_server.logs import get_logger
from operator_server.store.base import (
    Audit,
    RolesTaken,
    Row,
    SessionRecord,
    decode_session,
    decode_session_rows,
)
from operator_server.store.postgres.writer import GroupCommitWriter

log = get_logger(__name__)

SESSION_COLUMNS = "sid, token_sha256, roles, description, created_at, last_seen_at, minted_by"
UPSERT_SESSION = (
    f"INSERT INTO operator_sessions ({SESSION_COLUMNS}) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7) "
    "ON CONFLICT (sid) DO UPDATE SET token_sha256 = EXCLUDED.token_sha256, "
    "roles = EXCLUDED.roles, description = EXCLUDED.description, "
    "created_at = EXCLUDED.created_at, last_seen_at = EXCLUDED.last_seen_at, "
    "minted_by = EXCLUDED.minted_by"
)
# Claims every role the session does not already hold; whichever ones come back
# are the session's now.  A role held by another session does not come back.
CLAIM_ROLES = """
    INSERT INTO operator_roles (role, sid) SELECT DISTINCT unnest($2::text[]), $1
    ON CONFLICT (role) DO UPDATE SET sid = EXCLUDED.sid WHERE operator_roles.sid = EXCLUDED.sid
    RETURNING role
"""
# A handover: every role claim of the source becomes the target's.
MOVE_ROLES = "UPDATE operator_roles SET sid = $2 WHERE sid = $1"
ROLE_HOLDERS = "SELECT role, sid FROM operator_roles WHERE role = ANY($2::text[]) AND sid <> $1"
# A stand-in seat's row says so, and which node's it is, where a session's
# token hash is (no SHA-256 hex digest has a colon, so no token ever matches).
STAND_IN = "stand-in:"
NOT_A_SEAT = f"token_sha256 NOT LIKE '{STAND_IN}%'"


class SessionOps(GroupCommitWriter):
    """The PostgreSQL store's session operations: writes through the
    group-commit writer (roles claimed in the session's own op), reads on the pool."""

    _node_id: str

    async def put_session(self, record: SessionRecord, *, audit: Audit = ()) -> None:
        args = _session_args(record)
        roles = list(record.roles)

        async def work(c: asyncpg.Connection) -> None:
            await c.execute(UPSERT_SESSION, *args)
            taken = await c.fetch(CLAIM_ROLES, record.sid, roles)
            if len(taken) < len(set(roles)):
                held = await c.fetch(ROLE_HOLDERS, record.sid, roles)
                # Raised inside the op's savepoint: the session row goes too.
                raise RolesTaken({row["role"]: row["sid"] for row in held})

        await self._call(work, f"save session {record.sid}", audit=audit)

    async def hand_over_session(
        self, source: SessionRecord, target: SessionRecord, *, audit: Audit = ()
    ) -> None:
        async def work(c: asyncpg.Connection) -> None:
            await c.execute(UPSERT_SESSION, *_session_args(source))
            await c.execute(UPSERT_SESSION, *_session_args(target))
            await c.execute(MOVE_ROLES, source.sid, target.sid)

        await self._call(work, f"hand session {source.sid} over to {target.sid}", audit=audit)

    def touch_session_soon(self, sid: str, last_seen_at: float, *, audit: Audit = ()) -> None:
        sql = "UPDATE operator_sessions SET last_seen_at = $1 WHERE sid = $2"
        self._soon_plain(f"touch session {sid}", sql, float(last_seen_at), sid, audit=audit)

    async def delete_session(self, sid: str, *, audit: Audit = ()) -> None:
        await self._call(
            lambda c: c.execute("DELETE FROM operator_sessions WHERE sid = $1", sid),
            f"delete session {sid}",
            audit=audit,
        )

    def put_stand_in_soon(self, record: SessionRecord) -> None:
        seat = dataclasses.replace(record, token_sha256=f"{STAND_IN}{self._node_id}")
        self._soon_plain(f"seat stand-in {record.sid}", UPSERT_SESSION, *_session_args(seat))

    def delete_stand_in_soon(self, sid: str) -> None:
        sql = f"DELETE FROM operator_sessions WHERE sid = $1 AND token_sha256 LIKE '{STAND_IN}%'"
        self._soon_plain(f"unseat stand-in {sid}", sql, sid)

    async def load_sessions(self) -> list[Row]:
        rows = await self._read(
            lambda c: c.fetch(
                f"SELECT {SESSION_COLUMNS} FROM operator_sessions WHERE {NOT_A_SEAT} "
                "ORDER BY created_at"
            ),
            "load sessions",
        )
        return decode_session_rows(rows)

    async def get_session(self, sid: str) -> SessionRecord | None:
        row = await self._read(
            lambda c: c.fetchrow(
                f"SELECT {SESSION_COLUMNS} FROM operator_sessions WHERE sid = $1 AND {NOT_A_SEAT}",
                sid,
            ),
            f"read session {sid}",
        )
        if row is None:
            return None
        try:
            return decode_session(*row)
        except Exception as exc:  # a bad row is as good as none
            log.warning("skipping a stored session that cannot be decoded", sid=sid, error=str(exc))
            return None

    async def role_holder(self, role: str) -> str | None:
        sid = await self._read(
            lambda c: c.fetchval("SELECT sid FROM operator_roles WHERE role = $1", role),
            f"find role {role}",
        )
        return None if sid is None else str(sid)


def _session_args(record: SessionRecord) -> tuple[object, ...]:
    return (
        record.sid,
        record.token_sha256,
        json.dumps(record.roles),
        record.desc,
        float(record.created_at),
        float(record.last_seen_at),
        record.minted_by,
    )
