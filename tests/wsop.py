"""A bare WebSocket operator for tests: raw frames over a real socket."""

from __future__ import annotations

import asyncio
import json
import types
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient

from tests.conftest import create_task, wait_task


async def mint(client: TestClient[Any, Any], roles: list[str] | None = None) -> tuple[str, str]:
    resp = await client.post("/v1/operators", json={"roles": roles or []})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    return body["sid"], body["token"]


async def connect(
    client: TestClient[Any, Any], sid: str, token: str, **kwargs: Any
) -> ClientWebSocketResponse:
    return await client.ws_connect(
        f"/v1/operators/{sid}/ws", headers={"Authorization": f"Bearer {token}"}, **kwargs
    )


async def recv(ws: ClientWebSocketResponse, timeout: float = 5) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type is WSMsgType.TEXT, f"expected a text frame, got {msg.type} {msg.data!r}"
    frame: dict[str, Any] = json.loads(msg.data)
    return frame


async def expect(ws: ClientWebSocketResponse, kind: str, timeout: float = 5) -> dict[str, Any]:
    frame = await recv(ws, timeout)
    assert frame["type"] == kind, f"expected {kind}, got {frame}"
    return frame


async def no_frame(ws: ClientWebSocketResponse, within: float = 0.2) -> None:
    """Assert nothing arrives for a short while (the socket stays quiet and open)."""
    try:
        msg = await asyncio.wait_for(ws.receive(), within)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected frame {msg.type} {msg.data!r}")


async def eventually(condition: Any, within: float = 5, what: str = "condition") -> None:
    """Wait until ``condition()`` holds (server state observed from outside)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not happen within {within}s")
        await asyncio.sleep(0.01)


async def slow_body(first: bytes, gate: asyncio.Event, rest: bytes) -> AsyncIterator[bytes]:
    """A request body sent in two parts, the second once ``gate`` is set: the
    handler is then inside its body read (``handler_suspended``) meanwhile."""
    yield first
    await gate.wait()
    yield rest


def handler_suspended(name: str) -> bool:
    """Some task of this loop is inside the coroutine function ``name`` right now."""
    return handlers_suspended(name) > 0


def handlers_suspended(name: str) -> int:
    return sum(1 for task in asyncio.all_tasks() if _awaits_through(task.get_coro(), name))


def _awaits_through(coro: Any, name: str) -> bool:
    while isinstance(coro, types.CoroutineType):
        if coro.cr_code.co_name == name or _declared_handler(coro) == name:
            return True
        coro = coro.cr_await
    return False


def _declared_handler(coro: types.CoroutineType[Any, Any, Any]) -> str | None:
    """The handler a ``@documented`` route's wrapper runs: the wrapper reads the
    body before calling it, so a handler "waiting for its body" is its wrapper."""
    frame = coro.cr_frame
    handler = frame.f_locals.get("handler") if frame is not None else None
    return getattr(handler, "__name__", None) if coro.cr_code.co_name == "run" else None


async def thin_path_task(client: TestClient[Any, Any], ws: Any, sid: str) -> dict[str, Any]:
    """One task of operator ``sid`` (seated on ``ws``) through the whole thin
    path: hook_before, spawn, worker prompt and result, spawn_ack, hook_after,
    then a list; the task as it ended (``passed``)."""
    task = await create_task(client, agent="coder", directive="d", operator={"sid": sid})
    hook = await expect(ws, "hook_before")
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    spawn = await expect(ws, "spawn")
    auth = {"Authorization": f"Bearer {spawn['worker_handle']}"}
    assert (await client.get("/v1/worker/prompt", headers=auth)).status == 200
    assert (await client.post("/v1/worker/result", json={"value": 1}, headers=auth)).status == 200
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": {}})
    await expect(ws, "hook_after")
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed"
    listed = await client.get("/v1/tasks", params={"status": "passed", "limit": "5"})
    assert listed.status == 200
    return done
