"""Worker routes: what a sub-agent calls with its capability token or handle.

The credential is the bearer (``Authorization: Bearer wh-...`` or the token).
It is checked before the body is read, so a caller without one learns that first.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from marshmallow import Schema, fields

from operator_server.appkeys import ENGINE, SETTINGS
from operator_server.engine import WorkerResult
from operator_server.engine.capabilities import Claims, require_task
from operator_server.errors import ApiError, Code
from operator_server.wire.fields import QueryBoolean, StrictBoolean
from operator_server.wire.requests import bearer_of, query, read_body, read_json, validate

routes = web.RouteTableDef()


class PromptQuerySchema(Schema):
    task_id = fields.String()


PROMPT_QUERY = PromptQuerySchema()  # built once: construction deep-copies every field


class ResultSchema(Schema):
    value = fields.Raw(required=True, allow_none=True)
    ok = StrictBoolean(load_default=True)
    task_id = fields.String()


RESULT_BODY = ResultSchema()  # built once: construction deep-copies every field


class SubmitQuerySchema(Schema):
    ok = QueryBoolean(load_default=True)
    task_id = fields.String()


SUBMIT_QUERY = SubmitQuerySchema()  # built once: construction deep-copies every field


def _claims(request: web.Request, verb: str, task_id: str | None = None) -> Claims:
    return request.app[ENGINE].capabilities.verify(bearer_of(request) or "", verb, task_id)


def _accepted(claims: Claims) -> web.Response:
    return web.json_response(
        {"accepted": True, "task_id": claims.task_id, "attempt": claims.attempt}
    )


@routes.get("/v1/worker/prompt")
async def worker_prompt(request: web.Request) -> web.Response:
    q = query(request, PROMPT_QUERY)
    claims = _claims(request, "prompt", q.get("task_id"))
    return web.json_response(request.app[ENGINE].worker_view(claims))


@routes.post("/v1/worker/result")
async def worker_result(request: web.Request) -> web.Response:
    claims = _claims(request, "result")
    body = validate(RESULT_BODY, await read_json(request, request.app[SETTINGS].max_json_depth))
    require_task(claims, body.get("task_id"))
    request.app[ENGINE].post_worker_result(claims, WorkerResult(body["value"], body["ok"]))
    return _accepted(claims)


@routes.post("/v1/worker/submit")
async def worker_submit(request: web.Request) -> web.Response:
    claims = _claims(request, "result")
    q = query(request, SUBMIT_QUERY)
    require_task(claims, q.get("task_id"))
    raw = await read_body(request)
    try:
        text: Any = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, Code.BAD_REQUEST, "body must be UTF-8 text") from None
    request.app[ENGINE].post_worker_result(claims, WorkerResult(text, q["ok"]))
    return _accepted(claims)
