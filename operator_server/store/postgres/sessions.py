"""The operator session SQL: a session's row and the roles it claims."""

from __future__ import annotations

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
ROLE_HOLDERS = "SELECT role, sid FROM operator_roles WHERE role = ANY($2::text[]) AND sid <> $1"
