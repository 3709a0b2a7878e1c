"""Worker credentials: signed capability tokens and short worker handles.

A capability is URL-safe base64 (no padding) of a JSON object: the claims plus an
HMAC-SHA256 ``sig`` over the claims' canonical JSON.  A worker handle
``wh-<32 hex>`` (128 random bits) maps server-side to the same claims.  Both are
bound to one (task, attempt) and live only while that attempt runs: the issuer
keeps the nonces of live attempts, and ``revoke`` drops them, so a late worker of
attempt 1 can never write into attempt 2.

Verification order (each step has its own code, see ``errors.Code``): decode and
signature, expiry, role x verb gate, task binding, attempt binding, revocation.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from operator_server import entropy
from operator_server.errors import CapabilityError, Code
from operator_server.wire import json as wire_json

HANDLE_PREFIX = "wh-"
# What each role may do; a verb needs its scope in the claims as well.
ROLE_VERBS = {"worker": {"prompt": "prompt:read", "result": "result:write", "ask": "ask:write"}}
WORKER_SCOPES = ("prompt:read", "result:write", "ask:write")


@dataclass(frozen=True)
class Claims:
    role: str
    task_id: str
    attempt: int
    scopes: tuple[str, ...]
    issued_at: float
    expire_at: float
    nonce: str


@dataclass(frozen=True)
class Grant:
    token: str
    handle: str
    claims: Claims


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _canonical(claims: dict[str, object]) -> bytes:
    return json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()


def require_task(claims: Claims, task_id: str | None) -> None:
    """A caller that names a task must name the one its credential is bound to."""
    if task_id is not None and task_id != claims.task_id:
        raise CapabilityError(
            Code.WRONG_TASK,
            f"this credential is for task {claims.task_id}, not {task_id}",
            forbidden=True,
        )


class CapabilityIssuer:
    def __init__(self, secret: bytes, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._ttl = ttl_s
        self._clock = clock
        self._live: dict[str, Claims] = {}  # nonce -> claims of a running attempt
        self._handles: dict[str, str] = {}  # handle -> nonce
        self._nonce_handle: dict[str, str] = {}
        self._current: dict[str, int] = {}  # task_id -> attempt being run

    def _sign(self, payload: bytes) -> str:
        return hmac.new(self._secret, payload, hashlib.sha256).hexdigest()

    def mint(self, task_id: str, attempt: int) -> Grant:
        now = self._clock()
        claims = Claims(
            role="worker",
            task_id=task_id,
            attempt=attempt,
            scopes=WORKER_SCOPES,
            issued_at=now,
            expire_at=now + self._ttl,
            nonce=entropy.token_hex(16),
        )
        # The claims' fields by hand: dataclasses.asdict deep-copies each value
        # recursively, and this runs once per attempt.
        body = {
            "role": claims.role,
            "task_id": claims.task_id,
            "attempt": claims.attempt,
            "scopes": list(claims.scopes),
            "issued_at": claims.issued_at,
            "expire_at": claims.expire_at,
            "nonce": claims.nonce,
        }
        signed = dict(body, sig=self._sign(_canonical(body)))
        # Only the signed body's bytes must be canonical (``_canonical``); the
        # envelope is read back as JSON, so the fast encoder will do.
        token = _b64(wire_json.dumps_bytes(signed))
        # The task id in the clear: any node of a cluster can tell which node
        # runs the attempt (the random part is the secret).
        handle = f"{HANDLE_PREFIX}{entropy.token_hex(16)}.{task_id}"
        self._live[claims.nonce] = claims
        self._handles[handle] = claims.nonce
        self._nonce_handle[claims.nonce] = handle
        self._current[task_id] = attempt
        return Grant(token, handle, claims)

    def revoke(self, grant: Grant) -> None:
        """End the attempt's credentials (token and handle alike)."""
        self._live.pop(grant.claims.nonce, None)
        handle = self._nonce_handle.pop(grant.claims.nonce, None)
        if handle is not None:
            self._handles.pop(handle, None)

    def forget_task(self, task_id: str) -> None:
        self._current.pop(task_id, None)

    def is_live(self, claims: Claims) -> bool:
        """Still valid right now: not revoked, not expired."""
        return claims.nonce in self._live and self._clock() < claims.expire_at

    def verify(self, bearer: str, verb: str, task_id: str | None = None) -> Claims:
        if not bearer:
            raise CapabilityError(Code.MISSING_CREDENTIAL, "send Authorization: Bearer <handle>")
        if bearer.startswith(HANDLE_PREFIX):
            nonce = self._handles.get(bearer)
            if nonce is None:
                raise CapabilityError(
                    Code.UNKNOWN_HANDLE,
                    "unknown worker handle (never issued, or its attempt has ended)",
                )
            claims = self._live[nonce]
        else:
            claims = self._decode(bearer)
        if self._clock() >= claims.expire_at:
            raise CapabilityError(Code.CAPABILITY_EXPIRED, "the capability has expired")
        scope = ROLE_VERBS.get(claims.role, {}).get(verb)
        if scope is None or scope not in claims.scopes:
            raise CapabilityError(
                Code.SCOPE_DENIED, f"role {claims.role!r} may not {verb}", forbidden=True
            )
        require_task(claims, task_id)
        current = self._current.get(claims.task_id)
        if current is not None and current != claims.attempt:
            raise CapabilityError(
                Code.WRONG_ATTEMPT,
                f"this credential is for attempt {claims.attempt}; "
                f"the task is on attempt {current}",
                forbidden=True,
            )
        if claims.nonce not in self._live:
            raise CapabilityError(
                Code.CAPABILITY_REVOKED,
                f"attempt {claims.attempt} of task {claims.task_id} has ended",
                forbidden=True,
            )
        return claims

    def task_named(self, bearer: str) -> str | None:
        """The task a credential names, without checking that it is live here:
        where a node of a cluster sends a credential it does not know."""
        if bearer.startswith(HANDLE_PREFIX):
            _, dot, task_id = bearer.partition(".")
            return task_id if dot else None
        try:
            return self._decode(bearer).task_id
        except CapabilityError:
            return None

    def _decode(self, token: str) -> Claims:
        invalid = CapabilityError(Code.INVALID_CAPABILITY, "malformed or tampered capability")
        try:
            signed = json.loads(_unb64(token))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise invalid from None
        if not isinstance(signed, dict) or not isinstance(signed.get("sig"), str):
            raise invalid
        sig = signed.pop("sig")
        if not hmac.compare_digest(sig, self._sign(_canonical(signed))):
            raise invalid
        try:
            signed["scopes"] = tuple(signed["scopes"])
            return Claims(**signed)
        except (TypeError, KeyError):
            raise invalid from None


def claims_wire(claims: Claims) -> dict[str, Any]:
    """``claims`` as a call between nodes carries them (``cluster/serving.py``)."""
    return dataclasses.asdict(claims)


def claims_from_wire(data: dict[str, Any]) -> Claims:
    return Claims(**{**data, "scopes": tuple(data["scopes"])})
