"""Safe action links: a signed, single-use token that lets a person decide one
pending request from a notification, and nothing else.

A link is a JWT (HS256, PyJWT) whose claims bind it to one request
(``req``), the actions its page offers for that request's kind (``act``),
the principal a decision through it is attributed to (``sub``; absent: the
principal is ``"link"``), the session that held the request when it was
minted (``hld``: a link sent for one holder does not decide the request after
it moved on to another) and its task (``tsk``: where the page finds who
decided it after the fact).  It expires with the request's deadline or
``link_max_age_s`` after minting, whichever comes first.  Changing any claim
breaks the signature.

The signing key must be the same on every node and across restarts, or links
in mailboxes would die with the process that sent them: with ``secret`` set
(required in a cluster) it is derived from it, so rotating ``secret`` voids
every link sent before; with no ``secret`` (one process) it is a random key
the store keeps, made once by the first daemon that needs it.

Opening a link decides nothing; its page posts the decision with ``check``,
an HMAC of the link's id under the same key, so only a page this server
rendered for this very link can post it (no cookie is involved).  What the
link decided, once, is recorded by the store (``Store.claim_link``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt

from operator_server.config import Settings
from operator_server.errors import Code, CodedError
from operator_server.store import Store
from operator_server.wire.times import iso

# What a person can do from a link, per request kind.  A spawn hands work to
# an operator's own agent, which a person in a mail client cannot run: the one
# decision a link can sensibly make for it is to halt the attempt.
ACTIONS: dict[str, tuple[str, ...]] = {
    "hook_before": ("approve", "reject"),
    "ask": ("answer", "decline"),
    "spawn": ("halt",),
}
# The principal of a link minted with no named recipient (a chat or webhook rule).
ANONYMOUS = "link"
_ALGORITHM = "HS256"
_KEY_CONTEXT = b"operator-server action links v1"
_REQUIRED = ["jti", "req", "act", "exp"]

# Where a pending request is now: the session holding it (None while it waits
# for a role nobody holds) and its task; None when nothing pending has that req_id.
Locate = Callable[[str], Awaitable[tuple[str | None, str] | None]]


class LinkRefused(CodedError):
    """A token that is no link of ours, or no longer one; the code says which.
    An expired link keeps its verified ``claims``: what became of its request
    since may say more than its clock does."""

    def __init__(self, code: Code, message: str, claims: Claims | None = None) -> None:
        super().__init__(code, message)
        self.claims = claims


@dataclass(frozen=True)
class Link:
    url: str  # absolute URL of the link's confirmation page
    actions: tuple[str, ...]  # what the page offers
    expires_at: float  # unix seconds


@dataclass(frozen=True)
class Claims:
    """A verified link, and ``check``: what its page's form must carry back."""

    link_id: str
    req_id: str
    actions: tuple[str, ...]
    recipient: str | None
    holder: str | None
    task_id: str | None
    due_at: float | None
    expires_at: float
    check: str

    @property
    def principal(self) -> str:
        return self.recipient or ANONYMOUS


class ActionLinks:
    """Mints links and verifies them.  ``locate`` finds the request a link is
    minted for; ``base_url``: where the daemon is reached (``public_url``, or
    where it listens)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        locate: Locate,
        base_url: Callable[[], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._store = store
        self._locate = locate
        self._base_url = base_url
        self._clock = clock
        self._key: bytes | None = None

    async def mint(
        self, *, req_id: str, kind: str, recipient: str | None, due_at: float | None
    ) -> Link:
        actions = ACTIONS.get(kind)
        if actions is None:
            raise ValueError(f"no action link for a {kind!r} request")
        now = self._clock()
        expires_at = now + self._settings.link_max_age_s
        if due_at is not None:
            expires_at = min(expires_at, due_at)
        claims: dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),
            "req": req_id,
            "act": list(actions),
            "iat": now,
            "exp": expires_at,
        }
        if recipient:
            claims["sub"] = recipient
        if due_at is not None:
            claims["due"] = due_at
        where = await self._locate(req_id)
        if where is not None:
            holder, claims["tsk"] = where
            # A request waiting for a role nobody holds binds no holder: the
            # session that joins for the role and is issued it is not a move.
            if holder is not None:
                claims["hld"] = holder
        token = jwt.encode(claims, await self._signing_key(), algorithm=_ALGORITHM)
        return Link(f"{self._base_url().rstrip('/')}/v1/links/{token}", actions, expires_at)

    async def verify(self, token: str) -> Claims:
        """The claims of ``token``, a link this server minted that has not
        expired; ``LinkRefused`` says why not (the signature is checked before
        anything else a token says, its expiry included)."""
        key = await self._signing_key()
        try:
            found = jwt.decode(
                token,
                key,
                algorithms=[_ALGORITHM],
                # Expiry is checked below, on our clock and to the second's fraction.
                options={"verify_exp": False, "verify_iat": False, "require": _REQUIRED},
            )
        except jwt.InvalidSignatureError:
            raise LinkRefused(
                Code.LINK_FORGED,
                "this link was not signed by this server: it was altered or made elsewhere",
            ) from None
        except jwt.DecodeError:
            raise LinkRefused(
                Code.LINK_NOT_FOUND, "this is not an action link (it may be cut short)"
            ) from None
        except jwt.PyJWTError as exc:  # signed by us, yet not as we mint: refuse it whole
            raise LinkRefused(Code.LINK_FORGED, f"this link is not valid: {exc}") from None
        claims = _claims(found, _check(key, found.get("jti")))
        if claims.expires_at <= self._clock():
            raise LinkRefused(
                Code.LINK_EXPIRED, f"this link expired at {iso(claims.expires_at)}", claims
            )
        return claims

    async def _signing_key(self) -> bytes:
        if self._key is None:
            if self._settings.secret:
                # Derived, not the secret itself: a capability's key stays its own.
                self._key = hmac.new(
                    self._settings.secret.encode(), _KEY_CONTEXT, hashlib.sha256
                ).digest()
            else:
                self._key = bytes.fromhex(await self._store.link_key(secrets.token_hex(32)))
        return self._key


def _check(key: bytes, link_id: Any) -> str:
    return hmac.new(key, f"form:{link_id}".encode(), hashlib.sha256).hexdigest()


def _claims(found: dict[str, Any], check: str) -> Claims:
    """The claims as types, or ``LinkRefused`` for any claim not as minted."""

    def text(name: str) -> str | None:
        value = found.get(name)
        if value is None or isinstance(value, str):
            return value
        raise LinkRefused(Code.LINK_FORGED, f"this link's {name!r} claim is not text")

    def seconds(name: str) -> float | None:
        value = found.get(name)
        if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
            return None if value is None else float(value)
        raise LinkRefused(Code.LINK_FORGED, f"this link's {name!r} claim is not a time")

    actions = found.get("act")
    if not isinstance(actions, list) or tuple(actions) not in ACTIONS.values():
        raise LinkRefused(Code.LINK_FORGED, "this link offers no action set this server mints")
    return Claims(
        link_id=text("jti") or "",
        req_id=text("req") or "",
        actions=tuple(actions),
        recipient=text("sub"),
        holder=text("hld"),
        task_id=text("tsk"),
        due_at=seconds("due"),
        expires_at=seconds("exp") or 0.0,
        check=check,
    )
