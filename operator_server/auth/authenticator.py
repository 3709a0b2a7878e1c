"""How a request's credential becomes a ``Principal``, once per credential.

``Authorization: Bearer <credential>`` resolves, in this order:

* the configured ``api_token`` -> ``BOOTSTRAP`` (every scope; compared in
  constant time);
* ``osk_…`` -> that API key (``auth/keys.py``): 401 ``bad_credentials``,
  ``key_expired`` or ``key_revoked`` when it is not accepted;
* a JWT (three base64url parts) -> the JWT verifier, when one is configured
  (``[auth.jwt]``; any object with ``async def principal(token) -> Principal``
  that raises ``ApiError`` on a refusal);
* anything else -> 401 ``unauthorized``.

No ``Authorization`` header at all: with no ``api_token`` configured and the
caller on a loopback address, ``LOOPBACK`` (every scope: the open daemon's
trust, which binds loopback only); with no ``api_token`` and a caller
elsewhere (a proxy on the same host makes every caller look local: set
``api_token`` there), 403; with an ``api_token``, 401.  A credential that is
sent is always checked, token or not.

Verified keys are kept in a bounded LRU (``CACHE_SIZE`` credentials),
so a request with a known key costs a dict lookup and an expiry check, not a
store read and a hash.  A revocation clears the key's entries at once: here
by ``forget`` from the route that revoked it, and on every other node of a
cluster by the store's ``KeyRevoked`` notice, sent in the revoking
transaction (``store/postgres/keys.py``), which ``cluster/wiring.py`` hands
to ``forget``.  When a node's listener was cut it may have missed notices, so
it forgets everything it cached (``forget(None)``) as it listens again.
JWTs are not cached here: the verifier keeps its own cache, which also knows
when the identity provider's key set changed (``auth/jwt.py``).
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Protocol, cast

from aiohttp import web

from operator_server.auth.jwt import looks_like_jwt
from operator_server.auth.keys import ApiKeys, looks_like_key
from operator_server.auth.principal import BOOTSTRAP as BOOTSTRAP_PRINCIPAL
from operator_server.auth.principal import LOOPBACK, PRINCIPAL_ON_REQUEST, Principal
from operator_server.config import is_loopback
from operator_server.errors import ApiError, Code
from operator_server.logs import get_logger
from operator_server.wire import contract
from operator_server.wire.requests import bearer_of

log = get_logger(__name__)
CACHE_SIZE = 4096
_WHAT = "the api_token, an API key (osk_…) or a JWT from the configured identity provider"


class JwtPrincipals(Protocol):
    """The slot for ``[auth.jwt]`` (``auth/jwt.py``'s ``JwtVerifier``): a JWT's
    principal, or ``ApiError`` (401) saying why it is refused."""

    async def principal(self, token: str) -> Principal: ...

    async def close(self) -> None:
        """Let go of what it holds (its HTTP session for the JWKS)."""


class Authenticator:
    def __init__(
        self,
        keys: ApiKeys,
        api_token: str,
        jwt: JwtPrincipals | None = None,
        *,
        cache_size: int = CACHE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self._api_token = api_token.encode()
        self.jwt = jwt
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self._cache_size = cache_size
        self._clock = clock

    # -- resolving --------------------------------------------------------

    async def of_token(self, token: str) -> Principal | None:
        """The principal ``token`` proves; None when it is in no principal's
        form (a session token, say); ``ApiError`` 401 when it is a key or a
        JWT that is refused."""
        if self._api_token and hmac.compare_digest(token.encode(), self._api_token):
            return BOOTSTRAP_PRINCIPAL
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires_at is None or cached.expires_at > self._clock():
                self._cache.move_to_end(token)
                return cached
            del self._cache[token]  # expired: the slow path says so
        if looks_like_key(token):
            found = await self.keys.verify(token)
        elif self.jwt is not None and looks_like_jwt(token):
            return await self.jwt.principal(token)
        else:
            return None
        self._remember(token, found)
        return found

    async def principal(self, request: web.Request) -> Principal:
        """The caller of ``request`` (see the module docstring), or ``ApiError``."""
        token = bearer_of(request)
        if token is None:
            if "Authorization" in request.headers:
                raise ApiError(Code.UNAUTHORIZED, f"send Authorization: Bearer <{_WHAT}>")
            if self._api_token:
                raise ApiError(Code.UNAUTHORIZED, f"send Authorization: Bearer <{_WHAT}>")
            if not is_loopback(request.remote or ""):
                raise ApiError(
                    Code.FORBIDDEN,
                    "with no api_token configured, only loopback callers may come without "
                    "a credential; set api_token, or send an API key",
                )
            return LOOPBACK
        found = await self.of_token(token)
        if found is None:
            raise ApiError(Code.UNAUTHORIZED, f"the credential is not {_WHAT}")
        return found

    async def require(self, request: web.Request, scopes: Iterable[str]) -> Principal:
        """The caller, holding every one of ``scopes``; else 401, or 403
        ``forbidden`` naming the scope it lacks.  Left on the request
        (``PRINCIPAL_ON_REQUEST``) for the handler."""
        found = await self.principal(request)
        for scope in scopes:
            if not found.allows(scope):
                raise ApiError(
                    Code.FORBIDDEN,
                    f"{found.name} lacks the scope '{scope}', which this route needs",
                    scope=scope,
                )
        request[PRINCIPAL_ON_REQUEST] = found
        return found

    # -- the cache --------------------------------------------------------

    def _remember(self, token: str, found: Principal) -> None:
        self._cache[token] = found
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def forget(self, key_id: str | None) -> None:
        """Drop what is cached of key ``key_id`` (None: of every credential)."""
        if key_id is None:
            self._cache.clear()
            log.info("forgot every cached principal")
            return
        for token in [t for t, p in self._cache.items() if p.key_id == key_id]:
            del self._cache[token]
        log.info("API key revoked: refused from now on", key_id=key_id)

    @property
    def cached(self) -> int:
        return len(self._cache)


# The authenticator the route declarations ask (``wire/contract.py``), typed
# as the whole ``Authenticator``.
AUTHENTICATOR = cast("web.AppKey[Authenticator]", contract.PRINCIPALS)
