"""Assemble the aiohttp ``Application``: app-wide objects, routes, lifecycle.

Start-up (``daemon.py`` binds the listening socket first, so a busy port stops
start-up before the store is touched): open the store (running migrations),
recover sessions and tasks from it and commit what recovery changed, then start
the periodic sweep, the webhook sender and, with ``[[notify]]`` rules, the
notification sender (and, with a shared store, the lease
keeper: renew this node's leases and take over lapsed ones every
``cluster.lease_s / 3``); only then are connections served.
Shutdown, in order: stop taking tasks and cancel every run (each task ends
``cancelled`` with the reason, operators get ``cancel`` frames — except with a
shared store, where the runs stop but their tasks stay running, to be handed
over), end every event stream, close every socket with 1001,
cancel and await every remaining background task, close the JWKS client
(``[auth.jwt]``), flush the store, let go of
this node's leases (a shared store: another node takes the tasks at its next
look, rather than after ``lease_s``), and last close the store so every state
change made on the way down is written.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from operator_server import __version__
from operator_server.appkeys import (
    ACTION_LINKS,
    BACKGROUND,
    ENGINE,
    JWT_VERIFIER,
    METRICS,
    NOTIFIER,
    OPERATOR_COUNTS,
    SETTINGS,
    STORE,
)
from operator_server.auth.authenticator import AUTHENTICATOR, Authenticator, JwtPrincipals
from operator_server.auth.jwt import JwtVerifier
from operator_server.auth.keys import ApiKeys
from operator_server.background import Background
from operator_server.cluster.leases import Leases
from operator_server.cluster.wiring import ClusterWiring
from operator_server.config import ConfigError, Settings
from operator_server.engine import Engine
from operator_server.engine.engine import RETENTION_BATCH
from operator_server.engine.tasks import TaskStatus
from operator_server.http import (
    audit,
    console,
    events,
    health,
    keys,
    metrics,
    openapi,
    tasks,
    whoami,
    worker,
)
from operator_server.http.admission import admission_middleware
from operator_server.http.errors import error_middleware
from operator_server.http.observe import observe_middleware
from operator_server.logs import get_logger
from operator_server.metrics import DisabledMetrics, Metrics
from operator_server.notify.links import ActionLinks
from operator_server.notify.news import FindPending, PendingView, TaskFacts
from operator_server.notify.rules import covers_role
from operator_server.notify.sender import Notifier
from operator_server.operators import admin, link_routes, login, reassign, request_routes
from operator_server.operators.census import session_counts
from operator_server.operators.directive import DirectiveTemplate
from operator_server.operators.directory import OperatorDirectory
from operator_server.operators.keys import DIRECTORY
from operator_server.operators.relay import NoRelay
from operator_server.operators.session import PendingRequest
from operator_server.recovery import recover
from operator_server.store import Store, StoreError, open_store
from operator_server.tracing import Tracing, start_tracing
from operator_server.webhooks import WebhookSender

log = get_logger(__name__)
SHUTDOWN_REASON = "server shutting down"
# Kept in cluster mode (``cluster/leases.py``); a no-op in one process.
LEASES = web.AppKey("leases", Leases)


def load_directive(settings: Settings) -> DirectiveTemplate:
    if not settings.directive_template:
        return DirectiveTemplate.builtin()
    path = Path(settings.directive_template)
    try:
        return DirectiveTemplate.from_file(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"directive_template: {path}: {exc}") from exc


def load_jwt_verifier(settings: Settings) -> JwtVerifier | None:
    """The verifier of ``[auth.jwt]`` (None without it); ``ConfigError`` for a
    ``jwks_file`` that holds no usable key, before anything has started."""
    jwt = settings.auth.jwt
    return JwtVerifier.started(jwt) if jwt is not None else None


def build_app(
    settings: Settings,
    directive: DirectiveTemplate | None = None,
    store: Store | None = None,
    jwt: JwtPrincipals | None = None,
    tracing: Tracing | None = None,
) -> web.Application:
    """The app; ``jwt``: the verifier of identity-provider tokens, built from
    ``[auth.jwt]`` when not given (None without that table); ``tracing``: the
    spans' owner, built from ``[tracing]`` when not given (its provider is
    shut down, flushing every span, last of all on the way down)."""
    jwt = jwt if jwt is not None else load_jwt_verifier(settings)
    background = Background()
    store = store or open_store(settings)
    meters = Metrics() if settings.metrics else DisabledMetrics()
    meters.identify(settings.node_id, __version__)
    tracing = tracing or start_tracing(settings)
    if tracing.enabled:
        system = "postgresql" if store.shared else "sqlite"

        def committed(seconds: float) -> None:
            meters.store_committed(seconds)
            tracing.store_committed(seconds, system)

        store.observe_commits(committed)
    else:
        store.observe_commits(meters.store_committed)
    directory: OperatorDirectory

    async def find_operator(name: str) -> None:
        # A task names a session or role no session here answers to: the
        # directory, which knows where sessions are stored, brings it here.
        await directory.find_name(name)

    cluster = ClusterWiring(store, background, settings, tracing)
    engine = Engine(
        settings,
        background,
        store,
        meters,
        find_operator=find_operator,
        routing=cluster.routing,
        tracing=tracing,
    )
    wired = cluster.finish(engine)
    # A role nobody holds waits for its deadline when a rule tells someone of
    # it (on a stand-in seat of the node running the task: ``vacancies.py``).
    rules = settings.notify
    directory = OperatorDirectory(
        engine,
        settings,
        directive or load_directive(settings),
        relay=wired.relay or NoRelay(),
        covered=(lambda role, kind: covers_role(rules, role, kind)) if rules else None,
    )
    wired.route(directory)
    # Who each request is: the bootstrap api_token, API keys from the store, JWTs.
    authenticator = Authenticator(ApiKeys(store), settings.api_token, jwt)
    wired.follow_revocations(authenticator.forget)
    _sample_current_counts(meters, engine, directory)
    if wired.bus is not None:
        meters.sample_cluster_messages = wired.bus.counts

    # Outermost first.  Observe sees every answer, admission's refusals (403
    # host_not_allowed) too; admission sees the error middleware's (to close
    # the connection after a 408).  Observe has nothing to do with neither
    # metrics nor the access log on.
    observing = (
        [observe_middleware(meters, settings.access_log)]
        if settings.metrics or settings.access_log
        else []
    )
    app = web.Application(
        middlewares=[*observing, admission_middleware(settings), error_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[BACKGROUND] = background
    app[ENGINE] = engine
    app[DIRECTORY] = directory

    async def operator_counts() -> dict[str, int]:
        return await session_counts(directory)

    app[OPERATOR_COUNTS] = operator_counts
    app[STORE] = store
    app[METRICS] = meters
    app[LEASES] = wired.leases
    app[JWT_VERIFIER] = jwt
    app[AUTHENTICATOR] = authenticator
    app[ACTION_LINKS] = links = ActionLinks(
        settings, store, link_routes.locator(directory), lambda: directory.base_url
    )
    app[NOTIFIER] = notifier = Notifier(
        settings,
        store,
        background,
        meters,
        find_pending=pending_view(directory),
        find_task=lambda task_id: _task_facts(engine, task_id),
        adopt=wired.adopt_notices,
        # Every message carries its requests' action links (``notify/links.py``).
        minter=links,
    )
    # What a stopped node owed is sent by a live one (``notify/sender.py``).
    wired.follow_stopped_nodes(notifier.nodes_gone)
    if settings.notify:
        engine.request_observers.append(notifier.request_reported)
        engine.due_soon_observers.append(notifier.due_soon)
    app.add_routes(health.routes)
    app.add_routes(tasks.routes)
    app.add_routes(worker.routes)
    app.add_routes(login.routes)
    app.add_routes(console.routes)
    app.on_response_prepare.append(console.secure_console_response)
    app.add_routes(admin.routes)
    app.add_routes(request_routes.routes)
    app.add_routes(reassign.routes)
    app.add_routes(metrics.routes)
    app.add_routes(openapi.routes)
    app.add_routes(events.routes)
    app.add_routes(keys.routes)
    app.add_routes(audit.routes)
    app.add_routes(whoami.routes)
    app.add_routes(link_routes.routes)
    app.on_startup.append(_open_and_recover)
    app.on_startup.append(_start_sweeper)
    app.on_startup.append(_start_webhooks)
    app.on_startup.append(_start_notifier)
    app.on_startup.append(_start_lease_keeper)
    app.on_shutdown.append(_shutdown)
    return app


def runner_options(settings: Settings) -> dict[str, Any]:
    """How aiohttp serves the app (for ``web.AppRunner``)."""
    return {
        "access_log": None,
        "shutdown_timeout": settings.shutdown_timeout_s,
        # aiohttp's keep-alive timer also runs from the connect until a request's
        # headers are complete: it is what bounds half-sent headers.
        "keepalive_timeout": settings.request_read_timeout_s,
    }


def listening_on(app: web.Application, url: str) -> None:
    """The app is served at ``url``: spawn directives name it (unless public_url)."""
    app[DIRECTORY].listening_on(url)


def _sample_current_counts(meters: Metrics, engine: Engine, directory: OperatorDirectory) -> None:
    """The gauges read their owners' own counts at scrape time: nothing kept twice,
    and no scan of the store."""

    def tasks() -> dict[str, int]:
        counts = engine.counts  # replaced wholesale at start-up: read it each time
        return {str(s): max(0, counts[str(s)]) for s in TaskStatus}

    def sessions() -> dict[str, int]:
        counts = directory.counts()
        return {"true": counts["connected"], "false": counts["sessions"] - counts["connected"]}

    meters.sample_tasks = tasks
    meters.sample_sessions = sessions
    meters.sample_pending = directory.pending_by_face


async def _open_and_recover(app: web.Application) -> None:
    await app[STORE].open()
    await recover(app[ENGINE], app[DIRECTORY], app[STORE])
    # What recovery changed is on disk before any client can read it.
    await app[STORE].flush()


async def sweep_once(app: web.Application) -> None:
    """Expire idle sessions, forget finished tasks and given-up notification
    messages past ``store.retention_s``, and prune audit rows past
    ``audit_retention_days`` (task retention never touches them: the trail
    outlives the tasks it speaks of)."""
    await app[DIRECTORY].sweep()
    now = time.time()
    try:
        gone = await app[ENGINE].expire_finished(now)
    except StoreError as exc:  # they go next time
        log.error("could not delete expired tasks", error=str(exc))
    else:
        if gone:
            log.info("expired finished tasks", count=gone)
    try:
        cutoff = now - app[SETTINGS].store.retention_s
        dropped = await app[STORE].delete_given_up(cutoff, RETENTION_BATCH)
    except StoreError as exc:  # they go next time
        log.error("could not delete given-up notifications", error=str(exc))
    else:
        if dropped:
            log.info("deleted given-up notifications past the retention", count=dropped)
    days = app[SETTINGS].audit_retention_days
    if days:
        try:
            pruned = await app[STORE].prune_audit(now - days * 86400)
        except StoreError as exc:  # pruned next time
            log.error("could not prune the audit trail", error=str(exc))
        else:
            if pruned:
                log.info("pruned the audit trail", count=pruned)


async def _sweep_forever(app: web.Application) -> None:
    interval = app[SETTINGS].sweep_interval_s
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep_once(app)
        except Exception:  # one bad sweep must not end idle expiry and retention
            log.exception("sweep failed; the next one runs in sweep_interval_s")


async def _start_sweeper(app: web.Application) -> None:
    app[BACKGROUND].spawn(_sweep_forever(app), name="sweeper")


async def _start_webhooks(app: web.Application) -> None:
    sender = WebhookSender(app[ENGINE], app[SETTINGS], app[BACKGROUND], app[METRICS])
    app[BACKGROUND].spawn(sender.run(), name="webhooks")


async def _start_notifier(app: web.Application) -> None:
    # No rules, nothing to send: what an earlier configuration left owed
    # waits for a rule like its own (a message for a rule gone is given up).
    if app[SETTINGS].notify:
        app[BACKGROUND].spawn(app[NOTIFIER].run(), name="notify")


def pending_view(directory: OperatorDirectory) -> FindPending:
    """How notifications read a pending request this node issued: from the
    sessions' index ``GET /v1/requests`` reads, or, moved to a role nobody
    holds yet, from where it waits; only the fields a notification may show."""

    def find(req_id: str) -> PendingView | None:
        held = directory.pending_index.held(req_id, directory.sessions)
        if held is not None:
            session, req = held
            roles, sid, connected = tuple(session.roles), session.sid, session.connected
        else:
            waiting = (
                (role, r)
                for role, reqs in directory.moves.waiting.items()
                for r in reqs
                if r.req_id == req_id and isinstance(r, PendingRequest)
            )
            found = next(waiting, None)
            if found is None:
                return None
            (role, req), sid, connected = found, "", False
            roles = (role,)
        frame = req.frame
        return PendingView(
            req_id,
            req.kind,
            req.task_id,
            sid,
            roles,
            connected,
            req.deadline_at,
            question=frame.get("question"),
            attempt=frame.get("attempt"),
            agent=frame.get("agent"),
        )

    return find


def _task_facts(engine: Engine, task_id: str) -> TaskFacts | None:
    task = engine.tasks.get(task_id)
    return None if task is None else TaskFacts(task.agent, task.directive)


async def _start_lease_keeper(app: web.Application) -> None:
    app[LEASES].start()


async def _shutdown(app: web.Application) -> None:
    log.info("shutting down")
    store = app[STORE]
    # A shared store: the running tasks go to another node rather than end cancelled.
    await app[ENGINE].shutdown(SHUTDOWN_REASON, hand_over=app[LEASES].hands_over)
    # After the runs ended, so streams carry their cancellations; then each ends cleanly.
    app[ENGINE].fanout.close()
    await app[DIRECTORY].close_sockets(1001, SHUTDOWN_REASON)
    await app[BACKGROUND].close(SHUTDOWN_REASON)  # the lease keeper too: no renewal now
    if (verifier := app[JWT_VERIFIER]) is not None:  # no request is left to need the JWKS
        await verifier.close()
    await app[LEASES].hand_over()
    await store.close()
    # Last: the spans of the way down (cancelled tasks, the final commits) go too.
    app[ENGINE].tracing.shutdown()
    log.info("shut down")
