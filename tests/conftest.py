"""Shared fixtures: a real server on a real socket, with timeouts shortened."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from operator_server.app import build_app, listening_on
from operator_server.appkeys import ENGINE
from operator_server.config import Settings, load_settings
from operator_server.engine import Engine
from operator_server.operators.directory import OperatorDirectory
from operator_server.operators.keys import DIRECTORY
from tests.processes import stop_leftovers

# The throwaway PostgreSQL (fixtures `postgres`, `pg_url`).
pytest_plugins = ["tests.pg"]

# Short enough to keep the suite quick, long enough not to fire by accident.
FAST = {
    "secret": "test-secret",
    "reconnect_grace_s": 5,
    "ask_timeout_s": 10,
    "hook_timeout_s": 10,
    "spawn_timeout_s": 10,
    "heartbeat_s": 0,
    "sweep_interval_s": 3600,
    "shutdown_timeout_s": 5,
    "store.path": ":memory:",
}


def make_settings(**overrides: Any) -> Settings:
    values = dict(FAST)
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_settings(env={}, overrides=values)


Server = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture(autouse=True)
def stop_started_processes() -> Iterator[None]:
    """Whatever a test started (``tests/processes.py``) does not outlive it."""
    yield
    stop_leftovers()


@pytest.fixture
def server(aiohttp_client: Any) -> Server:
    """``await server(**settings)`` -> a client bound to a fresh, running server."""

    async def start(**overrides: Any) -> TestClient[Any, Any]:
        app = build_app(make_settings(**overrides))
        client: TestClient[Any, Any] = await aiohttp_client(app)
        listening_on(app, str(client.make_url("")).rstrip("/"))
        return client

    return start


def engine_of(client: TestClient[Any, Any]) -> Engine:
    app: web.Application = client.app  # type: ignore[assignment]
    return app[ENGINE]


def directory_of(client: TestClient[Any, Any]) -> OperatorDirectory:
    app: web.Application = client.app  # type: ignore[assignment]
    return app[DIRECTORY]


async def create_task(client: TestClient[Any, Any], **body: Any) -> dict[str, Any]:
    body.setdefault("directive", "do the thing")
    resp = await client.post("/v1/tasks", json=body)
    assert resp.status == 202, await resp.text()
    task: dict[str, Any] = await resp.json()
    return task


async def wait_task(client: TestClient[Any, Any], task_id: str, wait: float = 5) -> dict[str, Any]:
    resp = await client.get(f"/v1/tasks/{task_id}", params={"wait": str(wait)})
    assert resp.status == 200
    task: dict[str, Any] = await resp.json()
    return task
