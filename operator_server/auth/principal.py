"""A principal: the named caller behind a credential, and what it may do.

Every credential the daemon accepts for a person, a script or an agent (the
bootstrap ``api_token``, an API key, a JWT from an identity provider, or —
with no ``api_token`` configured — a credential-less loopback caller) resolves
to one ``Principal``.  A route asks ``allows(scope)``; minting a session asks
``may_operate(role)`` for every role it claims.

``admin`` implies every other scope, ``operate:*`` among them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any

from aiohttp import web

OPERATE_PREFIX = "operate:"


class Scope(StrEnum):
    """The fixed scopes; ``operate:<glob>`` is the one open family (see ``operate``)."""

    TASKS_CREATE = "tasks:create"
    TASKS_READ = "tasks:read"
    TASKS_CANCEL = "tasks:cancel"
    EVENTS_READ = "events:read"
    ADMIN = "admin"


# What a route that mints sessions declares: *some* ``operate:<glob>`` scope.
# Which roles it covers is checked against the roles a mint claims
# (``Principal.roles_refused``), since the route alone cannot know them.
OPERATE_ANY = f"{OPERATE_PREFIX}<glob>"


def operate(glob: str) -> str:
    """The scope that lets a principal mint sessions claiming roles matching ``glob``."""
    return f"{OPERATE_PREFIX}{glob}"


def valid_scope(text: str) -> bool:
    """Whether ``text`` names a scope: a fixed one, or ``operate:`` and a non-empty glob."""
    if text in Scope.__members__.values():
        return True
    return text.startswith(OPERATE_PREFIX) and len(text) > len(OPERATE_PREFIX)


class Via(StrEnum):
    """How the principal proved who it is."""

    BOOTSTRAP = "bootstrap"  # the configured api_token: every scope
    KEY = "key"  # an API key (osk_<id>_<secret>)
    JWT = "jwt"  # a token from the configured identity provider
    LOOPBACK = "loopback"  # no api_token configured and no credential sent
    # An action link from a notification: its signature is the credential, and
    # it decides the one request it names (``notify/links.py``).
    LINK = "link"


@dataclass(frozen=True)
class Principal:
    """``name`` is what the audit trail and ``minted_by`` record: ``bootstrap``,
    ``local``, ``key:<key name>``, or ``<issuer>#<claim value>`` for a JWT."""

    name: str
    via: Via
    scopes: frozenset[str] = field(default_factory=frozenset)
    key_id: str | None = None
    # Unix seconds after which the credential is no longer accepted (a key's
    # expiry, a JWT's ``exp``); None: no end of its own.
    expires_at: float | None = None

    @property
    def admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    def allows(self, scope: str) -> bool:
        """Whether the principal holds ``scope`` (``admin`` holds them all).

        For an ``operate:<role>`` scope this is ``may_operate(<role>)``; for
        ``OPERATE_ANY``, whether it holds any ``operate:`` scope at all."""
        if self.admin or scope in self.scopes:
            return True
        if scope == OPERATE_ANY:
            return any(True for _ in self._operate_globs())
        if scope.startswith(OPERATE_PREFIX):
            return self.may_operate(scope[len(OPERATE_PREFIX) :])
        return False

    def may_operate(self, role: str) -> bool:
        """Whether a session minted by this principal may claim ``role``."""
        if self.admin:
            return True
        return any(fnmatchcase(role, glob) for glob in self._operate_globs())

    def may_operate_any(self, roles: Iterable[str]) -> bool:
        """Whether the principal may act on what a holder of ``roles`` holds:
        an admin always (no roles too), else one role it may operate."""
        return self.admin or any(self.may_operate(role) for role in roles)

    def roles_refused(self, roles: Iterable[str]) -> list[str]:
        """The roles of ``roles`` this principal may not claim, in order."""
        return [role for role in roles if not self.may_operate(role)]

    def _operate_globs(self) -> Iterable[str]:
        for scope in self.scopes:
            if scope.startswith(OPERATE_PREFIX):
                yield scope[len(OPERATE_PREFIX) :]


EVERY_SCOPE = frozenset({str(Scope.ADMIN)})
BOOTSTRAP = Principal(name="bootstrap", via=Via.BOOTSTRAP, scopes=EVERY_SCOPE)
LOOPBACK = Principal(name="local", via=Via.LOOPBACK, scopes=EVERY_SCOPE)


# Where the route check leaves the caller's principal on the ``web.Request``
# (``request[PRINCIPAL_ON_REQUEST]``), for handlers that record who acted.
PRINCIPAL_ON_REQUEST = web.RequestKey("operator_server.principal", Principal)


def principal_of(request: Mapping[Any, object]) -> Principal:
    """The principal the route check found for ``request``; the loopback
    principal where no check ran (a route open to every caller)."""
    found = request.get(PRINCIPAL_ON_REQUEST)
    return found if isinstance(found, Principal) else LOOPBACK
