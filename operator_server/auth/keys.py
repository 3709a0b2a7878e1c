"""API keys: their text, how their secret is kept, and what a key may be made with.

A key reads ``osk_<id>_<secret>``: the prefix makes it findable in logs and by
secret scanners, the ``id`` (16 hex digits) finds its row without a scan, and
the secret is 43 characters of ``[A-Za-z0-9]`` (about 256 random bits).  The
whole text is shown once, when the key is made; the store keeps the id, the
name, the scopes and ``secret_sha256`` only.

Why a keyed SHA-256 and not a password hash: the secret is random and long,
so no guessing attack can use a fast hash, and a slow one would cost every
request.  The key of the HMAC is a fixed label, not the configured ``secret``
and never a per-start random value: a key made by the CLI works in the daemon,
before and after a restart, whether or not ``secret`` is set (and changing
``secret`` does not void every key).

``ApiKeys`` works on any ``KeyBook`` — every store is one, and the CLI opens
PostgreSQL through ``store.postgres.offline.PostgresOffline`` — so the REST routes
and ``operator-server keys`` share every rule here.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from operator_server.audit.record import AuditEntry, key_act
from operator_server.auth.principal import Principal, Via, valid_scope
from operator_server.errors import ApiError, Code
from operator_server.store import KeyRecord
from operator_server.wire.times import iso

PREFIX = "osk_"
ID_HEX = 16
SECRET_LENGTH = 43
_ALPHABET = string.ascii_letters + string.digits
_KEY_TEXT = re.compile(rf"^{PREFIX}([0-9a-f]{{{ID_HEX}}})_([A-Za-z0-9]{{{SECRET_LENGTH}}})$")
_HASH_KEY = b"operator-server api key v1"
NAME_MAX = 200
NOTE_MAX = 2000
SCOPES_MAX = 64


class KeyBook(Protocol):
    """Where keys are kept: every ``Store``, and the CLI's PostgreSQL key book."""

    async def put_key(self, record: KeyRecord, audit: Sequence[AuditEntry] = ()) -> None: ...

    async def get_key(self, key_id: str) -> KeyRecord | None: ...

    async def list_keys(self) -> list[KeyRecord]: ...

    async def revoke_key(
        self, key_id: str, at: float, audit: Sequence[AuditEntry] = ()
    ) -> KeyRecord | None: ...


def looks_like_key(token: str) -> bool:
    """Whether ``token`` claims to be an API key (then it is checked as one)."""
    return token.startswith(PREFIX)


def secret_sha256(secret: str) -> str:
    return hmac.new(_HASH_KEY, secret.encode(), hashlib.sha256).hexdigest()


def new_key_text() -> tuple[str, str, str]:
    """A fresh ``(id, secret, text)``."""
    key_id = secrets.token_hex(ID_HEX // 2)
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(SECRET_LENGTH))
    return key_id, secret, f"{PREFIX}{key_id}_{secret}"


def principal_of_key(record: KeyRecord) -> Principal:
    return Principal(
        name=f"key:{record.name}",
        via=Via.KEY,
        scopes=frozenset(record.scopes),
        key_id=record.id,
        expires_at=record.expires_at,
    )


def key_view(record: KeyRecord) -> dict[str, Any]:
    """A key as anyone allowed to list keys sees it: never its secret or hash."""
    return {
        "id": record.id,
        "name": record.name,
        "scopes": list(record.scopes),
        "created_at": iso(record.created_at),
        "expires_at": iso(record.expires_at),
        "note": record.note,
        "revoked_at": iso(record.revoked_at),
    }


def refused_scopes(scopes: Iterable[str]) -> list[str]:
    """The names of ``scopes`` that name no scope, in order."""
    return [s for s in scopes if not valid_scope(s)]


class ApiKeys:
    """Make, list, revoke and verify keys kept in ``book``."""

    def __init__(self, book: KeyBook, clock: Callable[[], float] = time.time) -> None:
        self.book = book
        self._clock = clock

    async def create(
        self,
        name: str,
        scopes: list[str],
        expires_in_s: float | None = None,
        note: str = "",
        *,
        by: str,
    ) -> tuple[KeyRecord, str]:
        """A new key, stored, and its text (to be shown once); audited as
        ``by``'s act in the same commit.  ``ApiError`` (400) naming what is
        wrong with the input."""
        problems = []
        if not name.strip() or len(name) > NAME_MAX:
            problems.append(f"name must be 1 to {NAME_MAX} characters, not blank")
        if not scopes:
            problems.append("give at least one scope")
        elif len(scopes) > SCOPES_MAX:
            problems.append(f"at most {SCOPES_MAX} scopes")
        bad = refused_scopes(scopes)
        if bad:
            problems.append(
                f"unknown scope(s): {', '.join(bad)} (scopes are tasks:create, tasks:read, "
                "tasks:cancel, events:read, operate:<glob>, admin)"
            )
        if expires_in_s is not None and not expires_in_s > 0:
            problems.append("expires_in_s must be more than 0")
        if len(note) > NOTE_MAX:
            problems.append(f"note is at most {NOTE_MAX} characters")
        if problems:
            raise ApiError(Code.BAD_REQUEST, "; ".join(problems))
        key_id, secret, text = new_key_text()
        now = self._clock()
        record = KeyRecord(
            id=key_id,
            name=name,
            scopes=list(dict.fromkeys(scopes)),
            secret_sha256=secret_sha256(secret),
            created_at=now,
            expires_at=None if expires_in_s is None else now + expires_in_s,
            note=note,
        )
        await self.book.put_key(record, [key_act(True, by, key_id, name)])
        return record, text

    async def list(self) -> list[KeyRecord]:
        return await self.book.list_keys()

    async def revoke(self, key_id: str, *, by: str) -> KeyRecord | None:
        """Revoke ``key_id``, audited as ``by``'s act in the same commit; None
        when there is no such key (and nothing is written)."""
        known = await self.book.get_key(key_id)
        if known is None:
            return None
        return await self.book.revoke_key(
            key_id, self._clock(), [key_act(False, by, key_id, known.name)]
        )

    async def verify(self, text: str) -> Principal:
        """The principal of key ``text``, or ``ApiError`` 401: ``bad_credentials``
        (malformed, unknown, wrong secret), ``key_expired``, ``key_revoked``."""
        found = _KEY_TEXT.match(text)
        if found is None:
            raise ApiError(
                Code.BAD_CREDENTIALS,
                f"not a well-formed API key ({PREFIX}<16 hex digits>_<43 letters and digits>)",
            )
        key_id, secret = found.groups()
        record = await self.book.get_key(key_id)
        if record is None or not hmac.compare_digest(
            record.secret_sha256.encode(), secret_sha256(secret).encode()
        ):
            raise ApiError(Code.BAD_CREDENTIALS, "unknown API key, or its secret is wrong")
        if record.revoked_at is not None:
            raise ApiError(
                Code.KEY_REVOKED,
                f"API key {key_id} ({record.name}) was revoked at {iso(record.revoked_at)}",
            )
        if record.expires_at is not None and record.expires_at <= self._clock():
            raise ApiError(
                Code.KEY_EXPIRED,
                f"API key {key_id} ({record.name}) expired at {iso(record.expires_at)}",
            )
        return principal_of_key(record)
