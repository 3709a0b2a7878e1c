"""Assemble the aiohttp ``Application``: app-wide objects, routes, lifecycle.

Start-up starts the periodic sweep; shutdown, in order: stop taking tasks and
cancel every run (each task ends ``cancelled`` with the reason, operators get
``cancel`` frames), close every socket with 1001, then cancel and await every
remaining background task.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from operator_server.appkeys import BACKGROUND, DIRECTORY, ENGINE, SETTINGS
from operator_server.background import Background
from operator_server.config import ConfigError, Settings
from operator_server.engine import Engine
from operator_server.http import health, tasks, worker
from operator_server.http.errors import error_middleware
from operator_server.logs import get_logger
from operator_server.operators import login
from operator_server.operators.directive import DirectiveTemplate
from operator_server.operators.directory import OperatorDirectory

log = get_logger(__name__)
SHUTDOWN_REASON = "server shutting down"


def load_directive(settings: Settings) -> DirectiveTemplate:
    path = settings.directive_template_path
    try:
        return DirectiveTemplate.from_file(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"directive_template: {path}: {exc}") from exc


def build_app(settings: Settings, directive: DirectiveTemplate | None = None) -> web.Application:
    background = Background()
    engine = Engine(settings, background)
    directory = OperatorDirectory(engine, settings, directive or load_directive(settings))

    app = web.Application(middlewares=[error_middleware], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[BACKGROUND] = background
    app[ENGINE] = engine
    app[DIRECTORY] = directory
    app.add_routes(health.routes)
    app.add_routes(tasks.routes)
    app.add_routes(worker.routes)
    app.add_routes(login.routes)
    app.on_startup.append(_start_sweeper)
    app.on_shutdown.append(_shutdown)
    return app


async def _sweep_forever(directory: OperatorDirectory, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        directory.sweep()


async def _start_sweeper(app: web.Application) -> None:
    interval = app[SETTINGS].sweep_interval_s
    app[BACKGROUND].spawn(_sweep_forever(app[DIRECTORY], interval), name="sweeper")


async def _shutdown(app: web.Application) -> None:
    log.info("shutting down")
    await app[ENGINE].shutdown(SHUTDOWN_REASON)
    await app[DIRECTORY].close_sockets(1001, SHUTDOWN_REASON)
    await app[BACKGROUND].close(SHUTDOWN_REASON)
    log.info("shut down")
