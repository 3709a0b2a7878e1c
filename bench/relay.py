"""The baseline for end-to-end tasks: a bare aiohttp relay of the thin path.

``python -m bench.relay PORT`` serves the same routes and sends the same frames
as the daemon for an operator-served task, so the same peer (``OperatorClient``,
``WorkerClient``, ``TaskClient``) drives it unchanged:

    POST /v1/operators            -> {sid, token, roles}
    GET  /v1/operators/{sid}/ws   -> the operator's socket
    POST /v1/tasks                -> 202 {task}; hook_before frame to the role
    hook_ack                      -> spawn frame (worker_handle, capability_token)
    GET  /v1/worker/prompt        -> {task_id, attempt, agent, prompt}
    POST /v1/worker/result        -> {accepted, task_id, attempt}
    spawn_ack                     -> hook_after frame; the task is passed
    GET  /v1/tasks/{id}?wait=S    -> {task} once it ended

What it leaves out is the point of the comparison: no engine, no validation, no
capabilities, no persistence, no logging.  It is the floor of what aiohttp and
the JSON module cost on this machine for this conversation.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

# The same size of text the daemon renders into every spawn frame.
DIRECTIVE = "x" * 900


@dataclass
class RelayTask:
    id: str
    body: dict[str, Any]
    created_at: float = field(default_factory=time.time)
    status: str = "pending"
    result: Any = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def view(self) -> dict[str, Any]:
        """About as many fields as the daemon's task view, so bodies cost the same."""
        return {
            "id": self.id,
            "status": self.status,
            "agent": self.body.get("agent"),
            "kind": "main_ai",
            "attempt": 1 if self.status != "pending" else 0,
            "max_attempts": 1,
            "interruptions": 0,
            "result": None if self.result is None else {"value": self.result, "ok": True},
            "error": None,
            "directive": self.body.get("directive"),
            "system": None,
            "operator": self.body.get("operator"),
            "layers": ["main_ai", "senior_escalation", "operator_delegate"],
            "parent_task_id": None,
            "created_at": self.created_at,
            "updated_at": time.time(),
            "attempts": [],
        }


class Relay:
    def __init__(self) -> None:
        self.tasks: dict[str, RelayTask] = {}
        # The peer runs one operator at a time: every task goes to the last socket up.
        self.operator: web.WebSocketResponse | None = None
        self.pending: dict[str, RelayTask] = {}  # req_id -> its task
        self.handles: dict[str, RelayTask] = {}  # worker handle -> its task

    async def mint(self, request: web.Request) -> web.Response:
        body = await request.json()
        sid = f"op-{uuid.uuid4()}"
        return web.json_response(
            {"sid": sid, "token": uuid.uuid4().hex, "roles": body.get("roles", [])}, status=201
        )

    async def socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        sid = request.match_info["sid"]
        self.operator = ws
        async for msg in ws:
            await self.on_frame(sid, ws, json.loads(msg.data))
        return ws

    async def send(self, ws: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        await ws.send_str(json.dumps(frame, separators=(",", ":")))

    async def on_frame(self, sid: str, ws: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        task = self.pending.pop(frame["req_id"], None)
        if task is None:
            return
        if frame["type"] == "hook_ack":
            handle = f"wh-{uuid.uuid4().hex}"
            self.handles[handle] = task
            req_id = f"{sid}-spawn-{uuid.uuid4()}"
            self.pending[req_id] = task
            await self.send(
                ws,
                {
                    "type": "spawn",
                    "req_id": req_id,
                    "task_id": task.id,
                    "agent": task.body["agent"],
                    "attempt": 1,
                    "capability_token": f"cap-{uuid.uuid4().hex}",
                    "worker_handle": handle,
                    "directive": DIRECTIVE,
                },
            )
        elif frame["type"] == "spawn_ack":
            task.status = "passed"
            await self.send(
                ws,
                {
                    "type": "hook_after",
                    "req_id": f"{sid}-ha-{uuid.uuid4()}",
                    "task_id": task.id,
                    "agent": task.body["agent"],
                    "attempt": 1,
                    "result": {"value": task.result, "ok": True},
                },
            )
            task.finished.set()

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        task = RelayTask(f"t-{uuid.uuid4().hex}", body)
        self.tasks[task.id] = task
        ws = self.operator
        if ws is None:
            raise web.HTTPConflict(text="no operator connected")
        task.status = "running"
        req_id = f"op-bench-hb-{uuid.uuid4()}"
        self.pending[req_id] = task
        await self.send(
            ws,
            {
                "type": "hook_before",
                "req_id": req_id,
                "task_id": task.id,
                "agent": body["agent"],
                "attempt": 1,
            },
        )
        return web.json_response(
            task.view(), status=202, headers={"Location": f"/v1/tasks/{task.id}"}
        )

    async def get(self, request: web.Request) -> web.Response:
        task = self.tasks[request.match_info["task_id"]]
        wait = float(request.query.get("wait", 0))
        if wait and not task.finished.is_set():
            try:
                async with asyncio.timeout(wait):
                    await task.finished.wait()
            except TimeoutError:
                pass
        return web.json_response(task.view())

    def _task_of(self, request: web.Request) -> RelayTask:
        _, _, handle = request.headers.get("Authorization", "").partition(" ")
        return self.handles[handle]

    async def prompt(self, request: web.Request) -> web.Response:
        task = self._task_of(request)
        return web.json_response(
            {
                "task_id": task.id,
                "attempt": 1,
                "agent": task.body["agent"],
                "prompt": task.body["directive"],
            }
        )

    async def result(self, request: web.Request) -> web.Response:
        task = self._task_of(request)
        body = await request.json()
        task.result = body["value"]
        return web.json_response({"accepted": True, "task_id": task.id, "attempt": 1})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})


def build() -> web.Application:
    relay = Relay()
    app = web.Application()
    app.router.add_post("/v1/operators", relay.mint)
    app.router.add_get("/v1/operators/{sid}/ws", relay.socket)
    app.router.add_post("/v1/tasks", relay.create)
    app.router.add_get("/v1/tasks/{task_id}", relay.get)
    app.router.add_get("/v1/worker/prompt", relay.prompt)
    app.router.add_post("/v1/worker/result", relay.result)
    app.router.add_get("/v1/healthz", relay.healthz)
    return app


if __name__ == "__main__":
    # ``python -m bench.relay PORT [uvloop]``: the standard loop unless told.
    loop = None
    if sys.argv[2:] == ["uvloop"]:
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(
        build(), host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, loop=loop
    )
