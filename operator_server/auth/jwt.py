"""Principals from an identity provider's JWTs (``[auth.jwt]``).

``JwtVerifier.principal(token)`` checks a bearer JWT the way RFC 8725 asks:
its ``alg`` must be one of the configured asymmetric algorithms (so ``none``
and HS256 "signed" with the provider's public key are refused before any key
is touched), its ``kid`` must name a key of the provider's JWKS (``jwks.py``),
its signature must verify with that key, and ``nbf``, ``iat``, ``iss``
(required, equal to ``issuer``), ``aud`` (required, naming ``audience``) and
``exp`` (required; checked here, on the clock the cache reads) must hold,
``leeway_s`` allowing for clock skew.  PyJWT does the
cryptography; this module only decides what is asked of it.

The principal it yields:

- name ``<issuer>#<value of principal_claim>`` (``sub`` by default): two
  providers' subjects never collide, and the audit trail says whose they are;
- scopes: those of the ``scope`` claim (space-separated, or a list) that name
  one of ours (``openid``, ``profile`` and the like are ignored), plus every
  ``claim_scopes`` entry ``"claim=value"`` the token matches;
- ``expires_at`` = ``exp``.

A claim is named as the provider writes it (``groups``,
``https://example.com/roles``); a name absent at the top level is read as a
dotted path (``realm_access.roles`` for Keycloak's realm roles).  A claim
matches ``value`` when it is that string, a list holding it, or a number or
boolean that JSON spells so (``email_verified=true``).

A verified token is remembered (the ``cache_size`` most recently used) until
its ``exp``: a client sends the same token for its whole life, and checking a
signature costs hundreds of microseconds.  What the cache holds is trusted only
while the key set it was verified with is the current one and not stale, so a
key the provider withdraws is noticed exactly as without the cache.

Every refusal is an ``ApiError``: 401 ``token_expired`` for a token past its
``exp``, 401 ``bad_credentials`` for everything else a client cannot fix by
retrying, with a message naming what was wrong, and 503 ``jwks_unavailable``
when the key set could not be loaded.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import jwt

from operator_server.auth.jwks import KeySet
from operator_server.auth.principal import Principal, Via, valid_scope
from operator_server.config import JwtSettings
from operator_server.errors import ApiError, Code

# header.payload.signature, each base64url without padding; the signature may
# be empty (alg none), so that such a token is refused by name, not as a
# malformed key.
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
API_KEY_PREFIX = "osk_"
VERIFIED_CACHE_SIZE = 4096


def looks_like_jwt(token: str) -> bool:
    """Whether a bearer credential has the shape of a JWT (so the authenticator
    hands it to ``JwtVerifier``); an API key (``osk_...``) never does."""
    return not token.startswith(API_KEY_PREFIX) and _JWT_SHAPE.fullmatch(token) is not None


def _refused(message: str) -> ApiError:
    return ApiError(Code.BAD_CREDENTIALS, message)


def read_claim(claims: dict[str, Any], name: str) -> Any:
    """The claim ``name``: as written, else as a dotted path; None if absent."""
    if name in claims:
        return claims[name]
    found: Any = claims
    for part in name.split("."):
        if not isinstance(found, dict) or part not in found:
            return None
        found = found[part]
    return found


def claim_matches(found: Any, value: str) -> bool:
    if isinstance(found, list):
        return any(claim_matches(item, value) for item in found)
    if isinstance(found, str):
        return found == value
    if isinstance(found, bool | int | float):
        return json.dumps(found) == value
    return False


class JwtVerifier:
    """Turns a bearer JWT from the configured provider into a ``Principal``."""

    def __init__(
        self,
        settings: JwtSettings,
        *,
        keys: KeySet | None = None,
        wall: Callable[[], float] = time.time,
        cache_size: int = VERIFIED_CACHE_SIZE,
    ) -> None:
        self._settings = settings
        self._keys = keys or KeySet(settings)
        self._wall = wall
        # token -> its principal, least recently used first: a client sends the
        # same token for its whole life, and a signature check costs far more
        # than the request it guards (hundreds of microseconds).
        self._verified: OrderedDict[str, Principal] = OrderedDict()
        self._verified_with = self._keys.generation
        self._cache_size = cache_size
        self._algorithms = frozenset(settings.algorithms)
        self._claim_scopes = [
            (claim, value, frozenset(scopes))
            for key, scopes in settings.claim_scopes.items()
            for claim, _, value in [key.partition("=")]
        ]

    @classmethod
    def started(cls, settings: JwtSettings) -> JwtVerifier:
        """A verifier for the daemon: a ``jwks_file`` is read now, so a bad one
        stops start-up (``ConfigError``) instead of refusing every token."""
        verifier = cls(settings)
        if settings.jwks_file:
            verifier._keys.load_file_now()
        return verifier

    @property
    def remembered(self) -> int:
        """How many verified tokens are held, at most ``cache_size``."""
        return len(self._verified)

    async def principal(self, token: str) -> Principal:
        """The principal ``token`` proves, or ``ApiError`` saying why not."""
        known = self._remembered(token)
        if known is not None:
            return known
        who = await self._verify(token)
        self._remember(token, who)
        return who

    def _remembered(self, token: str) -> Principal | None:
        """A principal verified before, while its token has not expired and
        the key set it was verified with is the current one and not stale
        (so a key the provider withdrew is noticed as without the cache)."""
        if self._verified_with != self._keys.generation or self._keys.stale():
            return None
        who = self._verified.get(token)
        if who is None:
            return None
        if who.expires_at is None or self._wall() >= who.expires_at + self._settings.leeway_s:
            del self._verified[token]  # verified again: it is refused as expired
            return None
        self._verified.move_to_end(token)
        return who

    def _remember(self, token: str, who: Principal) -> None:
        if self._verified_with != self._keys.generation:
            self._verified.clear()
            self._verified_with = self._keys.generation
        self._verified[token] = who
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)

    async def _verify(self, token: str) -> Principal:
        settings = self._settings
        header = self._header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise _refused(
                f"algorithm not allowed: {alg!r} (allowed: {', '.join(settings.algorithms)})"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _refused("malformed token: kid is not a string")
        key = await self._keys.key(kid, alg)
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway_s,
                # exp is checked below, on the clock the cache reads too.
                options={"require": ["exp", "iss", "aud"], "verify_exp": False},
            )
        except jwt.PyJWTError as exc:
            raise self._why(token, exc) from None
        return Principal(
            name=f"{settings.issuer}#{self._subject(claims)}",
            via=Via.JWT,
            scopes=self._scopes(claims),
            expires_at=self._expiry(claims["exp"]),
        )

    def _expiry(self, exp: Any) -> float:
        """``exp`` as Unix seconds, refused when past (by more than ``leeway_s``)."""
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise _refused(f"exp {exp!r} is not a time")
        try:
            expires_at = float(exp)
        except OverflowError:
            raise _refused(f"exp {exp!r} is not a time") from None
        if expires_at + self._settings.leeway_s <= self._wall():
            raise ApiError(
                Code.TOKEN_EXPIRED,
                f"token expired at {_when(exp)} (leeway {self._settings.leeway_s:g} s); "
                f"get a fresh one from {self._settings.issuer}",
            )
        return expires_at

    @property
    def closed(self) -> bool:
        return self._keys.closed

    async def close(self) -> None:
        await self._keys.close()

    @staticmethod
    def _header(token: str) -> dict[str, Any]:
        try:
            return jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _refused(f"malformed token: {exc}") from None

    def _why(self, token: str, exc: jwt.PyJWTError) -> ApiError:
        """The refusal for what PyJWT found, in the terms of this config."""
        settings = self._settings
        # Claims are read unverified only to say what was wrong with them:
        # PyJWT checks them after the signature, so they are genuine here.
        seen = _unverified_claims(token).get
        if isinstance(exc, jwt.ImmatureSignatureError):
            claim = "nbf" if "nbf" in str(exc) else "iat"
            return _refused(
                f"token not yet valid: {claim} {_when(seen(claim))} is in the future "
                f"(leeway {settings.leeway_s:g} s)"
            )
        if isinstance(exc, jwt.MissingRequiredClaimError):
            return _refused(f"token has no {exc.claim!r} claim")
        if isinstance(exc, jwt.InvalidIssuerError):
            return _refused(f"wrong issuer {seen('iss')!r} (expected {settings.issuer!r})")
        if isinstance(exc, jwt.InvalidAudienceError):
            return _refused(f"wrong audience {seen('aud')!r} (expected {settings.audience!r})")
        if isinstance(exc, jwt.InvalidSignatureError):
            return _refused("bad signature: the token was not signed by the key it names")
        if isinstance(exc, jwt.InvalidAlgorithmError):
            return _refused(f"algorithm not allowed: {exc}")
        return _refused(f"malformed token: {exc}")

    def _subject(self, claims: dict[str, Any]) -> str:
        name = self._settings.principal_claim
        found = read_claim(claims, name)
        if isinstance(found, bool) or not isinstance(found, str | int) or found == "":
            raise _refused(f"token has no usable {name!r} claim to name its principal")
        return str(found)

    def _scopes(self, claims: dict[str, Any]) -> frozenset[str]:
        listed = claims.get("scope")
        words = listed.split() if isinstance(listed, str) else listed
        scopes = (
            {w for w in words if isinstance(w, str) and valid_scope(w)}
            if isinstance(words, list)
            else set()
        )
        for claim, value, granted in self._claim_scopes:
            if claim_matches(read_claim(claims, claim), value):
                scopes |= granted
        return frozenset(scopes)


def _unverified_claims(token: str) -> dict[str, Any]:
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims if isinstance(claims, dict) else {}


def _when(stamp: Any) -> str:
    if isinstance(stamp, int | float) and not isinstance(stamp, bool):
        try:
            return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        except (OverflowError, OSError, ValueError):
            pass
    return repr(stamp)
