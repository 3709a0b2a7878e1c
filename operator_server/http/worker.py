"""Worker routes: what a sub-agent calls with its capability token or handle.

The credential is the bearer (``Authorization: Bearer wh-...`` or the token).
It is checked before the body is read, so a caller without one learns that first.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from marshmallow import Schema, fields
from marshmallow.validate import Equal

from operator_server.appkeys import ENGINE, SETTINGS
from operator_server.engine import WorkerResult
from operator_server.engine.capabilities import Claims, require_task
from operator_server.errors import ApiError, Code
from operator_server.wire.contract import Body, Operation, Security, documented
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


class PromptSchema(Schema):
    """What the sub-agent is asked to do (``Engine.worker_view``)."""

    task_id = fields.String(required=True)
    attempt = fields.Integer(required=True)
    agent = fields.String(required=True)
    system = fields.String(metadata={"description": "present when the task has one"})
    prompt = fields.Raw(required=True, allow_none=True, metadata={"description": "the directive"})


class AcceptedSchema(Schema):
    accepted = fields.Boolean(required=True, validate=Equal(True))
    task_id = fields.String(required=True)
    attempt = fields.Integer(required=True)


_ACCEPTED = Body("the result is recorded for this attempt", AcceptedSchema)
_CREDENTIAL_ERRORS = {
    401: "missing, malformed, expired, revoked or unknown credential",
    403: "the credential is for another task, or may not do this",
    409: "the attempt ended while the request was on its way (`attempt_ended`)",
}


def _claims(request: web.Request, verb: str, task_id: str | None = None) -> Claims:
    return request.app[ENGINE].capabilities.verify(bearer_of(request) or "", verb, task_id)


def _accepted(claims: Claims) -> web.Response:
    return web.json_response(
        {"accepted": True, "task_id": claims.task_id, "attempt": claims.attempt}
    )


@routes.get("/v1/worker/prompt")
@documented(
    Operation(
        "The prompt of the attempt the credential belongs to",
        {200: Body("the attempt's prompt", PromptSchema)},
        errors={400: "a bad query parameter", **_CREDENTIAL_ERRORS},
        security=(Security.WORKER,),
        query=PromptQuerySchema,
        tags=("worker",),
    )
)
async def worker_prompt(request: web.Request) -> web.Response:
    q = query(request, PROMPT_QUERY)
    claims = _claims(request, "prompt", q.get("task_id"))
    return web.json_response(request.app[ENGINE].worker_view(claims))


@routes.post("/v1/worker/result")
@documented(
    Operation(
        "Post the attempt's final result as JSON",
        {200: _ACCEPTED},
        errors=_CREDENTIAL_ERRORS,
        security=(Security.WORKER,),
        body=ResultSchema,
        tags=("worker",),
    )
)
async def worker_result(request: web.Request) -> web.Response:
    claims = _claims(request, "result")
    body = validate(RESULT_BODY, await read_json(request, request.app[SETTINGS].max_json_depth))
    require_task(claims, body.get("task_id"))
    request.app[ENGINE].post_worker_result(claims, WorkerResult(body["value"], body["ok"]))
    return _accepted(claims)


@routes.post("/v1/worker/submit")
@documented(
    Operation(
        "Post the attempt's final result as raw text",
        {200: _ACCEPTED},
        errors={**_CREDENTIAL_ERRORS, 400: "a bad query parameter, or a body that is not UTF-8"},
        security=(Security.WORKER,),
        query=SubmitQuerySchema,
        text_body="the result value, as UTF-8 text (for agents that cannot build JSON)",
        tags=("worker",),
    )
)
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
