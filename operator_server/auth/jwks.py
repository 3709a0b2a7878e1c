"""The identity provider's signing keys (a JWKS), fetched and cached.

The set is loaded at the first token, from ``jwks_url`` (aiohttp, bounded by
``jwks_timeout_s``) or ``jwks_file``, and loaded again when

- a token names a ``kid`` the cached set lacks (the provider rotated its key),
- or the cached set is older than ``jwks_max_age_s`` (a key the provider
  removed, perhaps because it leaked, stops verifying tokens),

but never twice within ``jwks_refresh_s``: a stream of tokens with made-up
kids costs the provider one fetch per interval, not one per request.  One load
runs at a time: a request whose key is missing waits for it, one whose key is
at hand does not.

A failed load keeps the keys already held (a stale set still verifies the
tokens it knows).  A token whose key is unknown while the last load failed gets
503 ``jwks_unavailable`` (the client may retry: the key may well exist); with
the last load good, 401 ``bad_credentials`` "unknown kid".
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from jwt import PyJWK, PyJWTError

from operator_server.config import ConfigError, JwtSettings
from operator_server.errors import ApiError, Code
from operator_server.logs import get_logger

log = get_logger(__name__)

# A provider's JWKS holds a handful of keys; a larger answer is not one.
MAX_JWKS_BYTES = 1024 * 1024


class JwksError(Exception):
    """The key set could not be loaded; the message says why."""


def usable_keys(document: Any) -> list[dict[str, Any]]:
    """The signing keys of a JWKS document: ``{"keys": [...]}`` minus keys for
    encryption (``use: enc``) and symmetric ones (``kty: oct``: a secret has no
    place in a public key set, and HS* is never accepted)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError('not a JWKS: expected {"keys": [...]}')
    keys = [
        key
        for key in document["keys"]
        if isinstance(key, dict)
        and isinstance(key.get("kty"), str)
        and key["kty"] != "oct"
        and key.get("use", "sig") == "sig"
    ]
    if not keys:
        raise JwksError("the JWKS holds no signing key")
    return keys


class KeySet:
    """The cached JWKS of one provider, and the ``PyJWK`` for a (kid, alg)."""

    def __init__(
        self, settings: JwtSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._clock = clock
        # Named in logs and start-up errors; not to clients (a file's path is
        # nobody's business, and the log line has it).
        self.source = settings.jwks_url or settings.jwks_file
        self._keys: list[dict[str, Any]] = []
        self._prepared: dict[tuple[str | None, str], PyJWK] = {}
        self._loaded_at: float | None = None  # last good load
        self.generation = 0  # counts good loads: what was verified with an older set is not trusted
        self._tried_at: float | None = None  # last load, good or not
        self._failure: str | None = None  # why the last load failed
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    def load_file_now(self) -> None:
        """Read ``jwks_file`` at start-up, so a bad file stops start-up naming
        the key rather than refusing every token later."""
        try:
            self._take(usable_keys(json.loads(Path(self.source).read_bytes())))
        except (OSError, ValueError, JwksError) as exc:
            raise ConfigError(f"auth.jwt.jwks_file: {self.source}: {exc}") from exc

    async def key(self, kid: str | None, alg: str) -> PyJWK:
        """The key that verifies a token with header ``kid`` and ``alg``.

        Raises ``ApiError``: ``bad_credentials`` (unknown kid, a key unfit
        for ``alg``) or ``jwks_unavailable``."""
        jwk = self._find(kid)
        # A key at hand is used at once, even while a refresh of a stale set
        # runs; the others wait for the one load in flight and see its result.
        if (jwk is None or self.stale()) and not (jwk is not None and self._lock.locked()):
            async with self._lock:
                if (self._find(kid) is None or self.stale()) and self._may_load():
                    await self._load()
            jwk = self._find(kid)
        if jwk is None:
            if self._failure is not None:
                raise ApiError(
                    Code.JWKS_UNAVAILABLE,
                    f"the identity provider's keys could not be loaded: "
                    f"{self._failure} (next try in at most "
                    f"{self._settings.jwks_refresh_s:g} s)",
                )
            if kid is None:
                raise ApiError(
                    Code.BAD_CREDENTIALS,
                    f"the token names no kid and the JWKS holds {len(self._keys)} keys",
                )
            raise ApiError(
                Code.BAD_CREDENTIALS, f"unknown kid {kid!r}: not in the provider's key set"
            )
        return self._prepare(jwk, kid, alg)

    @property
    def closed(self) -> bool:
        """No HTTP client left open (none was needed yet, or ``close`` ran)."""
        return self._session is None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _find(self, kid: str | None) -> dict[str, Any] | None:
        if kid is None:
            # No kid: only a set of one key says which key is meant.
            return self._keys[0] if len(self._keys) == 1 else None
        return next((key for key in self._keys if key.get("kid") == kid), None)

    def stale(self) -> bool:
        """The set is older than ``jwks_max_age_s``: the next token reloads it."""
        loaded = self._loaded_at
        return loaded is not None and self._clock() - loaded >= self._settings.jwks_max_age_s

    def _may_load(self) -> bool:
        tried = self._tried_at
        return tried is None or self._clock() - tried >= self._settings.jwks_refresh_s

    def _prepare(self, jwk: dict[str, Any], kid: str | None, alg: str) -> PyJWK:
        prepared = self._prepared.get((kid, alg))
        if prepared is not None:
            return prepared
        declared = jwk.get("alg")
        if declared is not None and declared != alg:
            raise ApiError(
                Code.BAD_CREDENTIALS,
                f"algorithm not allowed for key {kid!r}: the token says {alg}, the key {declared}",
            )
        try:
            # Bound to the token's alg (already checked against the allowed
            # list): an RSA key without "alg" may sign RS256 or PS256 alike.
            prepared = PyJWK(jwk, algorithm=alg)
        except PyJWTError as exc:
            raise ApiError(
                Code.BAD_CREDENTIALS, f"key {kid!r} ({jwk.get('kty')}) cannot verify {alg}: {exc}"
            ) from None
        self._prepared[(kid, alg)] = prepared
        return prepared

    async def _load(self) -> None:
        self._tried_at = self._clock()
        try:
            keys = usable_keys(await self._read())
        except JwksError as exc:
            self._failure = str(exc)
            log.warning("could not load the JWKS", source=self.source, error=self._failure)
            return
        self._take(keys)
        log.info("loaded the JWKS", source=self.source, keys=len(keys))

    def _take(self, keys: list[dict[str, Any]]) -> None:
        self._keys = keys
        self.generation += 1
        self._prepared = {}
        self._loaded_at = self._tried_at = self._clock()
        self._failure = None

    async def _read(self) -> Any:
        settings = self._settings
        try:
            if settings.jwks_file:
                raw = await asyncio.to_thread(Path(settings.jwks_file).read_bytes)
            else:
                raw = await self._fetch(settings.jwks_url)
            return json.loads(raw)
        except OSError as exc:  # its text would name the file to the client
            raise JwksError(f"jwks_file: {exc.strerror or type(exc).__name__}") from None
        except ValueError as exc:
            raise JwksError(f"not JSON: {exc}") from None

    async def _fetch(self, url: str) -> bytes:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._settings.jwks_timeout_s)
            )
        try:
            async with self._session.get(url, headers={"Accept": "application/json"}) as resp:
                if resp.status != 200:
                    raise JwksError(f"HTTP {resp.status}")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise JwksError(f"larger than {MAX_JWKS_BYTES} bytes")
        except TimeoutError:
            raise JwksError(f"no answer within {self._settings.jwks_timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise JwksError(str(exc) or type(exc).__name__) from None
        return bytes(body)
