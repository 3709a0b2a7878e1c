"""Worker routes: what a sub-agent calls with its capability token or handle.

The credential is the bearer (``Authorization: Bearer wh-...`` or the token).
It is checked before the body is read, so a caller without one learns that first:
it is the ``subject`` of each route's declaration.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from marshmallow import Schema, ValidationError, fields, validates_schema
from marshmallow import validate as checks
from marshmallow.validate import Equal

from operator_server.appkeys import ENGINE, SETTINGS
from operator_server.engine import WorkerResult
from operator_server.engine.asks import AskStatus, WorkerAsk
from operator_server.engine.capabilities import Claims, require_task
from operator_server.errors import ApiError, AttemptFailed, Code
from operator_server.wire.answer_schema import SchemaNotAllowed, check_schema
from operator_server.wire.contract import Body, Operation, Security, documented
from operator_server.wire.fields import QueryBoolean, StrictBoolean, StrictInteger
from operator_server.wire.requests import (
    bearer_of,
    json_response,
    read_body,
)
from operator_server.wire.trace import TraceContextSchema

routes = web.RouteTableDef()


class PromptQuerySchema(Schema):
    task_id = fields.String()


# Why the work failed, in the worker's words: a bounded line or two (a
# command's exit status and the tail of its stderr), not a log.
MAX_ERROR_CHARS = 4096


def _error_field() -> fields.String:
    return fields.String(
        validate=checks.Length(min=1, max=MAX_ERROR_CHARS),
        metadata={
            "description": "with ok=false only: why the work failed; it becomes the "
            "blocked attempt's error (`worker_failed`)"
        },
    )


class _FailureSaysWhy(Schema):
    @validates_schema
    def _error_only_when_failed(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("error") is not None and data["ok"]:
            raise ValidationError("only with ok=false", "error")


class ResultSchema(_FailureSaysWhy):
    value = fields.Raw(required=True, allow_none=True)
    ok = StrictBoolean(load_default=True)
    error = _error_field()
    task_id = fields.String()


class SubmitQuerySchema(_FailureSaysWhy):
    ok = QueryBoolean(load_default=True)
    error = _error_field()
    task_id = fields.String()


class PromptSchema(Schema):
    """What the sub-agent is asked to do (``WorkerApi.worker_view``)."""

    task_id = fields.String(required=True)
    attempt = fields.Integer(required=True)
    agent = fields.String(required=True)
    system = fields.String(metadata={"description": "present when the task has one"})
    prompt = fields.Raw(required=True, allow_none=True, metadata={"description": "the directive"})
    trace = fields.Nested(
        TraceContextSchema,
        metadata={
            "description": "when the server traces: the W3C context of the spawn; send it "
            "back as the traceparent (and tracestate) header of the worker's calls"
        },
    )


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
# What one attempt may accumulate (``engine/bounds.py``); nothing is kept.
_RESULT_ERRORS = {
    **_CREDENTIAL_ERRORS,
    413: "the body is larger than max_body_bytes (`too_large`), or this result would take "
    "the attempt's results past max_result_bytes_per_attempt (`attempt_too_large`)",
    429: "the attempt already has max_results_per_attempt results (`attempt_limit`)",
}


# How long ``POST /v1/worker/ask`` waits for the answer when the worker does
# not say (at most ``max_wait_s``).
DEFAULT_ASK_WAIT_S = 30


class AskSchema(Schema):
    question = fields.Raw(required=True, allow_none=True)
    answer_schema = fields.Dict()
    timeout_s = StrictInteger(validate=checks.Range(min=0))
    # The worker's own name for the ask: a retried POST with the same key
    # (its first call dropped) gets the same ask instead of asking again.
    key = fields.String(validate=checks.Length(min=1, max=200))
    task_id = fields.String()


class AskQuerySchema(Schema):
    wait = fields.Float(load_default=0, allow_nan=False, validate=checks.Range(min=0))


async def _claims(request: web.Request, verb: str, task_id: str | None = None) -> Claims:
    return await request.app[ENGINE].worker.verify_worker(bearer_of(request) or "", verb, task_id)


def _credential(verb: str) -> Callable[[web.Request], Awaitable[Claims]]:
    """A route's subject: the claims of its worker credential, checked for ``verb``."""

    async def claims(request: web.Request) -> Claims:
        return await _claims(request, verb)

    return claims


def _accepted(claims: Claims) -> web.Response:
    return json_response({"accepted": True, "task_id": claims.task_id, "attempt": claims.attempt})


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
async def worker_prompt(request: web.Request, query: dict[str, Any]) -> web.Response:
    claims = await _claims(request, "prompt", query.get("task_id"))
    engine = request.app[ENGINE]
    with engine.tracing.worker_call("prompt", claims.task_id, claims.attempt, request.headers):
        return json_response(await engine.worker.worker_prompt(claims))


@routes.post("/v1/worker/result")
@documented(
    Operation(
        "Post the attempt's final result as JSON",
        {200: _ACCEPTED},
        errors=_RESULT_ERRORS,
        security=(Security.WORKER,),
        body=ResultSchema,
        tags=("worker",),
    ),
    subject=_credential("result"),
)
async def worker_result(
    request: web.Request, subject: Claims, body: dict[str, Any]
) -> web.Response:
    claims = subject
    require_task(claims, body.get("task_id"))
    result = WorkerResult(body["value"], body["ok"], error=body.get("error"))
    engine = request.app[ENGINE]
    with engine.tracing.worker_call("result", claims.task_id, claims.attempt, request.headers):
        await engine.worker.worker_result(claims, result)
    return _accepted(claims)


@routes.post("/v1/worker/submit")
@documented(
    Operation(
        "Post the attempt's final result as raw text",
        {200: _ACCEPTED},
        errors={**_RESULT_ERRORS, 400: "a bad query parameter, or a body that is not UTF-8"},
        security=(Security.WORKER,),
        query=SubmitQuerySchema,
        text_body="the result value, as UTF-8 text (for agents that cannot build JSON)",
        tags=("worker",),
    ),
    subject=_credential("result"),
)
async def worker_submit(
    request: web.Request, subject: Claims, query: dict[str, Any]
) -> web.Response:
    claims = subject
    require_task(claims, query.get("task_id"))
    raw = await read_body(request)
    try:
        text: Any = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(Code.BAD_REQUEST, "body must be UTF-8 text") from None
    result = WorkerResult(text, query["ok"], error=query.get("error"))
    engine = request.app[ENGINE]
    with engine.tracing.worker_call("result", claims.task_id, claims.attempt, request.headers):
        await engine.worker.worker_result(claims, result)
    return _accepted(claims)


class AskAnswerSchema(Schema):
    """One worker ask as the worker sees it."""

    ask_id = fields.String(required=True)
    value = fields.Raw(allow_none=True, metadata={"description": "the senior's answer"})
    declined = fields.String(metadata={"description": "why the senior declined"})
    status = fields.String(
        validate=Equal("pending"), metadata={"description": "no answer yet (202)"}
    )


_ASK_ANSWERS = {
    200: Body("answered (`value`) or declined (`declined`)", AskAnswerSchema),
    202: Body(
        "not answered yet: continue with GET /v1/worker/ask/{ask_id}?wait=S", AskAnswerSchema
    ),
}
_ASK_ERRORS = {
    **_CREDENTIAL_ERRORS,
    409: "the attempt ended (`attempt_ended`), or the task has no senior (`no_senior`)",
    503: "nobody could answer: the senior timed out, is unavailable or was deleted",
}


def _wait_limit(request: web.Request, wait: float, what: str) -> float:
    limit = request.app[SETTINGS].max_wait_s
    if wait > limit:
        raise ApiError(Code.BAD_REQUEST, f"{what}: at most {limit:g} seconds (max_wait_s)")
    return wait


def _ask_answer(ask: WorkerAsk) -> web.Response:
    """One ask as the worker sees it: the answer, the refusal, or still pending."""
    if ask.status is AskStatus.ANSWERED:
        return json_response({"ask_id": ask.ask_id, "value": ask.answer})
    if ask.status is AskStatus.DECLINED:
        return json_response({"ask_id": ask.ask_id, "declined": ask.declined})
    if ask.status is AskStatus.PENDING:
        return json_response({"ask_id": ask.ask_id, "status": "pending"}, status=202)
    error = ask.error
    code = error.code if error is not None else Code.ATTEMPT_ENDED
    message = error.message if error is not None else "the ask ended unanswered"
    if ask.status is AskStatus.WITHDRAWN:
        raise ApiError(Code.ATTEMPT_ENDED, message, ask_id=ask.ask_id)
    # Nobody answered (operator timeout, unavailable, deleted): not the worker's fault.
    raise ApiError(code, message, status=503, ask_id=ask.ask_id)


@routes.post("/v1/worker/ask")
@documented(
    Operation(
        "Ask the task's senior for judgement mid-work, optionally with an answer form",
        _ASK_ANSWERS,
        errors={
            **_ASK_ERRORS,
            400: "a bad body, or an answer_schema outside the allowed subset",
            413: "the body is larger than max_body_bytes (`too_large`), or this question "
            "would take the attempt's questions past max_ask_bytes_per_attempt "
            "(`attempt_too_large`)",
            429: "the attempt already made max_asks_per_attempt asks (`attempt_limit`)",
        },
        security=(Security.WORKER,),
        body=AskSchema,
        tags=("worker",),
    ),
    subject=_credential("ask"),
)
async def worker_ask(request: web.Request, subject: Claims, body: dict[str, Any]) -> web.Response:
    claims = subject
    require_task(claims, body.get("task_id"))
    wait = _wait_limit(
        request,
        body.get("timeout_s", min(DEFAULT_ASK_WAIT_S, request.app[SETTINGS].max_wait_s)),
        "timeout_s",
    )
    schema = body.get("answer_schema")
    if schema is not None:
        try:
            check_schema(schema)
        except SchemaNotAllowed as exc:
            raise ApiError(Code.BAD_REQUEST, str(exc)) from None
    engine = request.app[ENGINE]
    # The senior's ask request is issued inside this span: it is its child.
    with engine.tracing.worker_call("ask", claims.task_id, claims.attempt, request.headers):
        try:
            ask = await engine.worker.ask_senior(claims, body["question"], schema, body.get("key"))
        except AttemptFailed as exc:
            if exc.code != Code.NO_SENIOR:
                raise
            raise ApiError(exc.code, exc.message) from None
        settled = await engine.worker.wait_ask(claims, ask.ask_id, wait)
    return _ask_answer(settled or ask)


@routes.get("/v1/worker/ask/{ask_id}")
@documented(
    Operation(
        "Pick up a worker ask's answer, long-polling up to `wait` seconds",
        _ASK_ANSWERS,
        errors={**_ASK_ERRORS, 400: "a bad query parameter", 404: "no such ask in this attempt"},
        security=(Security.WORKER,),
        query=AskQuerySchema,
        tags=("worker",),
    ),
    subject=_credential("ask"),
)
async def worker_ask_status(
    request: web.Request, subject: Claims, query: dict[str, Any]
) -> web.Response:
    claims = subject
    wait = _wait_limit(request, query["wait"], "wait")
    ask_id = request.match_info["ask_id"]
    engine = request.app[ENGINE]
    with engine.tracing.worker_call("ask wait", claims.task_id, claims.attempt, request.headers):
        ask = await engine.worker.wait_ask(claims, ask_id, wait)
    if ask is None:
        raise ApiError(
            Code.ASK_NOT_FOUND,
            f"attempt {claims.attempt} of task {claims.task_id} has no ask {ask_id}",
        )
    return _ask_answer(ask)
