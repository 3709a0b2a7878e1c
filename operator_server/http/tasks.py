"""Task routes: create, list, read (with long-poll), cancel.

Each needs a principal holding its scope (``tasks:create``, ``tasks:read``,
``tasks:cancel``; ``auth/``): an API key, the bootstrap ``api_token``, or —
with no token configured, when the daemon is loopback-only — a loopback
caller that sends no credential.

The task JSON and its schema are declared together in ``engine/task_json.py``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from marshmallow import (
    Schema,
    ValidationError,
    fields,
    validate,
    validates_schema,
)
from yarl import URL

from operator_server.appkeys import ENGINE, SETTINGS
from operator_server.auth.principal import Scope, principal_of
from operator_server.config import LAYER_NAMES, Settings, webhook_host_allowed
from operator_server.engine import Engine
from operator_server.engine.task_json import NAME as _NAME
from operator_server.engine.task_json import OperatorSpecSchema, TaskSchema, task_view
from operator_server.engine.tasks import Task, TaskStatus
from operator_server.errors import ApiError, AttemptFailed, Code
from operator_server.wire.contract import Body, Operation, Security, documented
from operator_server.wire.fields import QueryInteger, StrictInteger
from operator_server.wire.requests import json_response
from operator_server.wire.trace import trace_headers

routes = web.RouteTableDef()
# On a task list: where a live follower of GET /v1/events takes over from it.
LAST_EVENT_HEADER = "X-Last-Event-Id"


class TaskRequestSchema(Schema):
    agent = fields.String(required=True, validate=_NAME)
    directive = fields.Raw(required=True, allow_none=False, metadata={"not": {"type": "null"}})
    system = fields.String(allow_none=True)
    operator = fields.Nested(OperatorSpecSchema, allow_none=True)
    layers = fields.List(fields.String(validate=validate.OneOf(LAYER_NAMES)))
    max_attempts = StrictInteger(validate=validate.Range(min=1, max=100))
    parent_task_id = fields.String(validate=_NAME)
    callback_url = fields.String(
        validate=validate.Length(min=1, max=2000),
        metadata={
            "description": "POSTed the final task JSON when the task ends (signed); "
            "its host (or host:port) must be in webhook_allow_hosts"
        },
    )

    @validates_schema
    def _unique_layers(self, data: dict[str, Any], **_: Any) -> None:
        layers = data.get("layers") or []
        if len(set(layers)) != len(layers):
            raise ValidationError("a layer may appear only once", "layers")


class ListQuerySchema(Schema):
    status = fields.Enum(TaskStatus, by_value=True)
    limit = QueryInteger(load_default=50, validate=validate.Range(min=1, max=500))
    after = fields.String(
        validate=validate.Length(min=1),
        metadata={"description": "a `next` cursor from an earlier page, or a task id"},
    )


class GetQuerySchema(Schema):
    wait = fields.Float(
        load_default=0,
        allow_nan=False,
        validate=validate.Range(min=0),
        metadata={"description": "seconds to wait for the task to end; at most max_wait_s"},
    )


class TaskPageSchema(Schema):
    tasks = fields.List(fields.Nested(TaskSchema), required=True)
    next = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "cursor for `after`; null at the end"},
    )


class CancelSchema(Schema):
    reason = fields.String(metadata={"description": "why; shown on the task and to operators"})


_TASK = Body("the task", TaskSchema)
_UNAUTHORIZED = "no credential, or one that is not accepted"
_NO_TASK = "no such task (`task_not_found`)"


def _callback_url(settings: Settings, url: str) -> str:
    """``url`` if webhooks may go there; 400 ``callback_not_allowed`` otherwise, so
    the server never becomes a proxy into its own network."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        parsed = None
    host = (parsed.host or "").lower() if parsed is not None else ""
    if parsed is None or parsed.scheme not in ("http", "https") or not host:
        raise ApiError(Code.CALLBACK_NOT_ALLOWED, "callback_url: expected an http(s) URL")
    port = parsed.port if parsed is not None and parsed.port is not None else 0
    if not webhook_host_allowed(settings, host, port):
        raise ApiError(
            Code.CALLBACK_NOT_ALLOWED,
            f"callback_url: host {host!r} on port {port} is not in webhook_allow_hosts",
        )
    if not settings.webhook_secret:
        raise ApiError(
            Code.CALLBACK_NOT_ALLOWED,
            "callback_url: webhooks are off on this server (webhook_secret is not set)",
        )
    return url


async def _task(request: web.Request) -> Task:
    """The task named in the path: live from memory, finished from the store."""
    task_id = request.match_info["task_id"]
    return _known(task_id, await request.app[ENGINE].reads.find(task_id))


async def _task_to_wait(request: web.Request) -> Task:
    """As ``_task``; a task handed to another node from here may be the copy
    kept as created (``TaskReads.find_to_wait``): ``get_task`` reads it
    unless it waits for its end."""
    task_id = request.match_info["task_id"]
    return _known(task_id, await request.app[ENGINE].reads.find_to_wait(task_id))


def _known(task_id: str, task: Task | None) -> Task:
    if task is None:
        raise ApiError(Code.TASK_NOT_FOUND, f"no task {task_id!r}")
    return task


@routes.post("/v1/tasks")
@documented(
    Operation(
        "Create a task and start dispatching it",
        {202: Body("the task, accepted", TaskSchema, headers={"Location": "the task's URL"})},
        errors={
            400: "bad body, unknown parent_task_id, or an operator that cannot serve it",
            401: _UNAUTHORIZED,
            503: "the server is shutting down, or the store could not save the task",
        },
        security=(Security.API_KEY,),
        scopes=(Scope.TASKS_CREATE,),
        body=TaskRequestSchema,
        tags=("tasks",),
    )
)
async def create_task(request: web.Request, body: dict[str, Any]) -> web.Response:
    engine = request.app[ENGINE]
    if not engine.accepting:
        raise ApiError(Code.SHUTTING_DOWN, "the server is shutting down")
    callback = body.get("callback_url")
    if callback is not None:
        _callback_url(request.app[SETTINGS], callback)
    if (parent := body.get("parent_task_id")) and await engine.reads.find(parent) is None:
        # A body naming a missing task is a bad body (400), not a missing resource.
        raise ApiError(Code.TASK_NOT_FOUND, f"parent_task_id: no task {parent!r}", status=400)
    try:
        task = await engine.submit(
            agent=body["agent"],
            directive=body["directive"],
            system=body.get("system"),
            operator=body.get("operator"),
            layers=tuple(body["layers"]) if "layers" in body else None,
            max_attempts=body.get("max_attempts"),
            parent_task_id=parent,
            callback_url=callback,
            principal=principal_of(request).name,
            # The caller's span, if it sent one: the task's span is its child.
            trace_parent=trace_headers(request.headers),
        )
    except AttemptFailed as exc:
        # Refused at submission, whatever the code: the request asked for what cannot run.
        raise ApiError(exc.code, exc.message, status=400) from None
    location = f"/v1/tasks/{task.id}"
    return json_response(task_view(task), status=202, headers={"Location": location})


@routes.get("/v1/tasks")
@documented(
    Operation(
        "List tasks, oldest first, a page at a time",
        {
            200: Body(
                "a page of tasks; pass `next` as `after` for the following one",
                TaskPageSchema,
                headers={
                    LAST_EVENT_HEADER: "the newest event already published when this page was "
                    "read: GET /v1/events with this as Last-Event-ID follows every change after it"
                },
            )
        },
        errors={400: "a bad query parameter or `after` cursor", 401: _UNAUTHORIZED},
        security=(Security.API_KEY,),
        scopes=(Scope.TASKS_READ,),
        query=ListQuerySchema,
        tags=("tasks",),
    )
)
async def list_tasks(request: web.Request, query: dict[str, Any]) -> web.Response:
    engine = request.app[ENGINE]
    seen = engine.published_event_id  # before the read: the page is at least this new
    after = await _cursor(engine, query.get("after"))
    tasks, more = await engine.reads.page(query.get("status"), after, query["limit"])
    return json_response(
        {"tasks": [task_view(t) for t in tasks], "next": None if more is None else str(more)},
        headers={LAST_EVENT_HEADER: str(seen)},
    )


async def _cursor(engine: Engine, after: str | None) -> int:
    """``after`` is a ``next`` cursor from an earlier page, or a task id (the
    listing then continues after that task)."""
    if after is None:
        return 0
    if after.isdigit() and after.isascii():
        return int(after)
    seq = await engine.store.task_seq(after)
    if seq is None:
        raise ApiError(
            Code.BAD_REQUEST, f"after: {after!r} is neither a `next` cursor nor a known task"
        )
    return seq


@routes.get("/v1/tasks/{task_id}")
@documented(
    Operation(
        "Read a task; with `wait`, long-poll until it is terminal",
        {200: _TASK},
        errors={400: "a bad `wait` (more than max_wait_s)", 401: _UNAUTHORIZED, 404: _NO_TASK},
        security=(Security.API_KEY,),
        scopes=(Scope.TASKS_READ,),
        query=GetQuerySchema,
        tags=("tasks",),
    ),
    subject=_task_to_wait,
)
async def get_task(request: web.Request, subject: Task, query: dict[str, Any]) -> web.Response:
    task, reads = subject, request.app[ENGINE].reads
    wait = query["wait"]
    limit = request.app[SETTINGS].max_wait_s
    if wait > limit:
        raise ApiError(Code.BAD_REQUEST, f"wait: at most {limit:g} seconds")
    if wait and not task.status.terminal:
        # As it is after ``wait``, if it has not ended by then.
        task = await reads.wait_finished(task, wait)
    elif reads.kept(task):  # as created: read it as it is now
        task = await reads.find(task.id) or task
    return json_response(task_view(task))


@routes.post("/v1/tasks/{task_id}/cancel")
@documented(
    Operation(
        "Cancel a task: its attempt stops and it ends `cancelled`",
        {200: Body("the task, cancelled", TaskSchema)},
        errors={
            401: _UNAUTHORIZED,
            404: _NO_TASK,
            409: "the task already ended (`task_finished`; `error.task` holds it)",
            503: "the store could not save the change",
        },
        security=(Security.API_KEY,),
        scopes=(Scope.TASKS_CANCEL,),
        body=CancelSchema,
        body_required=False,
        tags=("tasks",),
    ),
    subject=_task,
)
async def cancel_task(request: web.Request, subject: Task, body: dict[str, Any]) -> web.Response:
    task = subject
    reason = body.get("reason") or "cancelled by request"
    engine = request.app[ENGINE]
    cancelled = await engine.cancel(task.id, reason, principal_of(request).name)
    task = await engine.reads.find(task.id) or task  # as it is now (ended on another node, say)
    if not cancelled:
        raise ApiError(
            Code.TASK_FINISHED,
            f"task {task.id} already ended with status {task.status}",
            task=task_view(task),
        )
    return json_response(task_view(task))
