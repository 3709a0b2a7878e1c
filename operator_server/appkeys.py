"""Typed keys for the app-wide objects hung off the ``Application``.

Only objects of the lower layers (settings, background tasks, engine, store, and
the neutral metrics) have keys here, so ``http/`` and ``operators/`` can both use
this module without depending on each other.  The operator directory's own key
lives in ``operators/keys.py``; what other surfaces need from it (session counts
for healthz) is handed over as a plain callable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

from aiohttp import web

from operator_server.auth.authenticator import JwtPrincipals
from operator_server.background import Background
from operator_server.config import Settings
from operator_server.engine import Engine
from operator_server.metrics import Metrics
from operator_server.notify.links import ActionLinks
from operator_server.notify.sender import Notifier
from operator_server.store import Store
from operator_server.wire import contract

# The key the route declarations read (``wire/contract.py``), typed as the whole ``Settings``.
SETTINGS = cast("web.AppKey[Settings]", contract.SETTINGS)
BACKGROUND = web.AppKey("background", Background)
ENGINE = web.AppKey("engine", Engine)
STORE = web.AppKey("store", Store)
METRICS = web.AppKey("metrics", Metrics)
# Notifications of pending requests, each message with its action links.
NOTIFIER = web.AppKey("notifier", Notifier)
# ``{"sessions": n, "connected": n}``, set by the app from the operator census
# (every node's sessions in a cluster).
OPERATOR_COUNTS: web.AppKey[Callable[[], Awaitable[dict[str, int]]]] = web.AppKey("operator_counts")
# Bearer JWTs from the identity provider of ``[auth.jwt]``; None without that table.
JWT_VERIFIER: web.AppKey[JwtPrincipals | None] = web.AppKey("jwt_verifier")
# Mints and verifies the action links of notifications (``notify/links.py``).
ACTION_LINKS = web.AppKey("action_links", ActionLinks)
