"""The confirmation page of an action link (``notify/links.py``).

``GET /v1/links/{token}`` (and ``HEAD``) only shows: the request and a form
per decision, or what the link decided, or why it offers nothing.  Mail
scanners and link previewers open every link they see; none of them can
decide anything by it.  ``POST /v1/links/{token}`` is the decision, posted by
that page's form with the link's ``check``; it is a reply to the request like
any other (``inbox.settle``, ``via: "link"``), attributed to the link's
recipient, and it claims the link in the store first, so a link decides at
most once on any node.  A decision that does not go through (a bad answer,
a request answered meanwhile) gives the claim back.

Statuses: 200 a page that offers the decision or shows the link's own; 303
after a decision, to that page; 400 a malformed form (nothing decided, the
link still works); 403 a forged link or a form not from its page; 404 not a
link; 409 used already, or its request answered elsewhere or moved on to
another holder (an expired link too, when that is what became of its
request); 410 expired, or its request is no longer pending.  A refusal
is a page for a browser, and the usual ``{"error": {...}}`` for a client that
asks for JSON alone.
"""

from __future__ import annotations

import hmac
import json
import math
import time
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from operator_server.appkeys import ACTION_LINKS, STORE
from operator_server.audit.record import Action
from operator_server.auth.principal import Principal, Via
from operator_server.errors import ApiError, Code, CodedError, status_of
from operator_server.notify.links import Claims, LinkRefused, Locate
from operator_server.operators import inbox
from operator_server.operators import link_pages as pages
from operator_server.operators.directory import OperatorDirectory
from operator_server.operators.keys import DIRECTORY
from operator_server.store import LinkUse, StoreError
from operator_server.store.base import AuditQuery
from operator_server.wire.answer_schema import answer_problem
from operator_server.wire.contract import FORM, HTML, Body, Operation, documented
from operator_server.wire.times import iso
from operator_server.wire.values import ReplyVia

routes = web.RouteTableDef()

# The trail's actions that settle a request: how a page tells who answered it elsewhere.
_SETTLED = frozenset(
    {
        Action.ASK_ANSWERED,
        Action.ASK_DECLINED,
        Action.HOOK_APPROVED,
        Action.HOOK_REJECTED,
        Action.ESCALATION_OVERRIDDEN,
        Action.ESCALATION_UPHELD,
        Action.SPAWN_ACKED,
        Action.SPAWN_HALTED,
    }
)
_AUDIT_PAGE = 500
_REFUSALS = {
    400: "a form field is missing, repeated, unknown or malformed (`bad_request`), or the "
    "answer does not fill the ask's form (`bad_answer`); nothing was decided",
    403: "the link was altered or signed elsewhere (`link_forged`), or the form's `check` is "
    "not this link's (`forbidden`)",
    404: "not an action link (`link_not_found`)",
    409: "the link was used already (`link_used`), or its request was answered elsewhere "
    "(`already_answered`) or moved on to another holder (`already_moved`)",
    410: "the link expired (`link_expired`), or its request is no longer pending "
    "(`request_not_found`: withdrawn, timed out, or its task ended)",
    503: "the store, or the node holding the request, could not be reached",
}


def locator(directory: OperatorDirectory) -> Locate:
    """Where a request is pending now, for ``ActionLinks.mint``.  A request
    on a stand-in seat (``operators/vacancies.py``) waits for its role, held by
    nobody: its link binds no holder, so the session that joins with the role
    and is handed the request has not moved it away from the person told."""

    async def locate(req_id: str) -> tuple[str | None, str] | None:
        for found in await inbox.pending(directory, req_id):
            seat = directory.sessions.get(found.sid) if found.sid is not None else None
            holder = None if seat is not None and seat.stand_in else found.sid
            return holder, str(found.frame.get("task_id", ""))
        return None

    return locate


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, headers=pages.HEADERS)


def _refusal(request: web.Request, exc: CodedError) -> web.Response:
    status = exc.status if isinstance(exc, ApiError) else status_of(exc.code)
    accept = request.headers.get("Accept", "")
    if "application/json" in accept and HTML not in accept:
        raise ApiError(exc.code, exc.message, status=status)
    return _html(pages.refused_page(status, exc.code, exc.message), status)


@routes.get("/v1/links/{token}")
@documented(
    Operation(
        "The confirmation page of an action link: shows the request, decides nothing",
        {200: Body("the request and its forms, or what this link decided", media=(HTML,))},
        errors={k: v for k, v in _REFUSALS.items() if k != 400},
        description="Safe to open any number of times, by anyone or anything (mail "
        "scanners, link previews, HEAD): only the page's own form decides. The token is the "
        "credential; no other is needed.",
        error_pages=True,
        tags=("links",),
    )
)
async def show_link(request: web.Request) -> web.Response:
    claims = await _verified(request)
    if not isinstance(claims, Claims):
        return claims
    try:
        used = await request.app[STORE].link_use(claims.link_id)
        if used is not None:
            return _html(pages.decided_page(used.action, used.principal, used.at, used.req_id))
        found = await _pending(request.app[DIRECTORY], claims)
        shown = await _shown(request.app[DIRECTORY], found, claims)
        return _html(pages.request_page(shown, claims.actions, claims.check))
    except ApiError as exc:
        return _refusal(request, exc)
    except StoreError as exc:
        return _refusal(request, ApiError(Code.STORE_FAILED, f"could not read this link: {exc}"))


async def _verified(request: web.Request) -> Claims | web.Response:
    """The link's claims, or the page refusing it."""
    try:
        return await request.app[ACTION_LINKS].verify(request.match_info["token"])
    except LinkRefused as exc:
        if exc.code == Code.LINK_EXPIRED and exc.claims is not None:
            return _refusal(request, await _expired(request.app[DIRECTORY], exc.claims, exc))
        return _refusal(request, exc)
    except StoreError as exc:  # the signing key could not be read
        return _refusal(request, ApiError(Code.STORE_FAILED, f"could not check this link: {exc}"))


@routes.post("/v1/links/{token}")
@documented(
    Operation(
        "Decide the request of an action link (the form of its confirmation page)",
        {
            303: Body(
                "decided: to the link's page, which shows the decision",
                media=(),
                headers={"Location": "the link's own page"},
            )
        },
        errors=_REFUSALS,
        form_body=(
            "`check` (from the page); `action`, one the link offers (`approve`/`reject` for a "
            "hook_before, `answer`/`decline` for an ask, `halt` for a spawn); `reason` "
            "(optional, for all but `answer`); for `answer`, one "
            f"`{pages.ANSWER_FIELD}<property>` field per property of the ask's answer_schema "
            f"or, with no schema, `{pages.ANSWER_JSON}` holding the answer as JSON. A link "
            "decides once; a decision that is refused leaves it usable."
        ),
        error_pages=True,
        tags=("links",),
    )
)
async def decide_link(request: web.Request) -> web.Response:
    directory = request.app[DIRECTORY]
    store = request.app[STORE]
    claims = await _verified(request)
    if not isinstance(claims, Claims):
        return claims
    try:
        form = await _form(request)
        if not hmac.compare_digest(_one(form, "check", required=True) or "", claims.check):
            raise ApiError(
                Code.FORBIDDEN,
                "this form was not made for this link (its check does not match); "
                "open the link and use the page it shows",
            )
        used = await store.link_use(claims.link_id)
        if used is not None:
            raise _used(used)
        found = await _pending(directory, claims)
        action, body = _reply_body(form, claims, found.frame.get("answer_schema"))
        kind, data = inbox.reply_of(claims.req_id, body)
        use = LinkUse(claims.link_id, claims.req_id, action, claims.principal, time.time())
        first = await store.claim_link(use)
        if first is not None:
            raise _used(first)
        principal = Principal(name=claims.principal, via=Via.LINK)
        try:
            await inbox.settle(directory, principal, found, kind, data, ReplyVia.LINK)
        except Exception:
            await store.release_link(claims.link_id)
            raise
    except ApiError as exc:
        if exc.code == Code.REQUEST_NOT_FOUND:  # settled or withdrawn while we looked
            exc = await _gone(directory, claims)
        return _refusal(request, exc)
    except StoreError as exc:
        return _refusal(request, ApiError(Code.STORE_FAILED, f"nothing was decided: {exc}"))
    raise web.HTTPSeeOther(request.path)


async def _expired(
    directory: OperatorDirectory, claims: Claims, expired: LinkRefused
) -> CodedError:
    """Why an expired link decides nothing.  A link expires with its holder's
    deadline, the very instant an escalation step moves the request on: that
    its request was escalated (moved on) or answered elsewhere tells the person
    more than the clock, so that is what the page says (409); otherwise the
    link's time is simply up (410)."""
    try:
        await _pending(directory, claims)
    except ApiError as why:
        if why.code in (Code.ALREADY_ANSWERED, Code.ALREADY_MOVED):
            return why
    except StoreError:
        pass  # the expiry is reason enough
    return expired


def _used(use: LinkUse) -> ApiError:
    return ApiError(
        Code.LINK_USED,
        f"this link was used already: {use.action} by {use.principal} at "
        f"{iso(use.at)}; it decides only once",
    )


async def _pending(directory: OperatorDirectory, claims: Claims) -> inbox.Found:
    """The link's request, pending with the holder the link was sent for."""
    for found in await inbox.pending(directory, claims.req_id):
        if claims.holder is not None and found.sid != claims.holder:
            raise ApiError(
                Code.ALREADY_MOVED,
                "the request has moved on to another holder (escalated, reassigned or "
                "handed over) since this link was sent; it decides nothing now",
            )
        return found
    raise await _gone(directory, claims)


async def _gone(directory: OperatorDirectory, claims: Claims) -> ApiError:
    """Why the link's request is not pending: answered (by whom, when, from the
    audit trail, which every node shares), moved, or simply no longer there."""
    if claims.task_id:
        query = AuditQuery(task_id=claims.task_id, limit=_AUDIT_PAGE)
        while rows := await directory.engine.store.audit_page(query):
            for row in rows:
                e = row.entry
                if e.req_id == claims.req_id and e.action in _SETTLED:
                    return ApiError(
                        Code.ALREADY_ANSWERED,
                        f"the request was already answered elsewhere: {e.outcome or e.action} "
                        f"by {e.principal} at {iso(e.at)}",
                    )
            query = AuditQuery(task_id=claims.task_id, after=rows[-1].seq, limit=_AUDIT_PAGE)
    session = directory.sessions.get(inbox.sid_of(claims.req_id))
    if session is not None:
        why = session.why_not_pending(claims.req_id)
        if why.code in (Code.ALREADY_ANSWERED, Code.ALREADY_MOVED):
            return ApiError(why.code, why.message)
    return ApiError(
        Code.REQUEST_NOT_FOUND,
        "the request is no longer pending (withdrawn, timed out, or its task ended)",
        status=410,
    )


async def _shown(directory: OperatorDirectory, found: inbox.Found, claims: Claims) -> pages.Shown:
    frame = found.frame
    task_id = str(frame.get("task_id", ""))
    agent = frame.get("agent")
    directive: str | None = None
    try:
        task = await directory.engine.reads.find(task_id)
    except StoreError:
        task = None  # the page still shows the request itself
    if task is not None:
        agent = agent or task.agent
        directive = task.directive if isinstance(task.directive, str) else None
    deadline = found.here.deadline_at if found.here is not None else claims.due_at
    attempt = frame.get("attempt")
    return pages.Shown(
        kind=found.kind,
        req_id=found.req_id,
        task_id=task_id,
        agent=str(agent) if agent else None,
        attempt=attempt if isinstance(attempt, int) else None,
        question=frame.get("question"),
        directive=directive,
        answer_schema=frame.get("answer_schema"),
        deadline_at=deadline,
        expires_at=claims.expires_at,
    )


async def _form(request: web.Request) -> MultiDictProxy[str | Any]:
    if request.content_type not in (FORM, "multipart/form-data"):
        raise ApiError(
            Code.BAD_REQUEST,
            "a decision is the page's form (application/x-www-form-urlencoded), "
            f"not {request.content_type or 'an empty body'}",
        )
    try:
        return await request.post()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(Code.TOO_LARGE, "the form is larger than max_body_bytes") from None
    except (ValueError, LookupError) as exc:  # no form at all, or a charset nobody knows
        raise ApiError(Code.BAD_REQUEST, f"the form could not be read: {exc}") from None


def _one(form: MultiDictProxy[Any], name: str, *, required: bool = False) -> str | None:
    values = form.getall(name, [])
    if len(values) > 1:
        raise ApiError(Code.BAD_REQUEST, f"{name}: given {len(values)} times, once at most")
    if not values:
        if required:
            raise ApiError(Code.BAD_REQUEST, f"{name}: missing")
        return None
    value = values[0]
    if not isinstance(value, str):
        raise ApiError(Code.BAD_REQUEST, f"{name}: must be text, not a file")
    return value


def _reply_body(
    form: MultiDictProxy[Any], claims: Claims, schema: dict[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """The action the form asks for, and the reply frame (as a REST body) it makes."""
    action = _one(form, "action", required=True)
    if action not in claims.actions:
        raise ApiError(
            Code.BAD_REQUEST,
            f"action: {action!r} is not one this link offers ({', '.join(claims.actions)})",
        )
    allowed = {"check", "action"}
    if action == "answer":
        if schema is None:
            allowed.add(pages.ANSWER_JSON)
        else:
            allowed.update(pages.ANSWER_FIELD + name for name in schema.get("properties", {}))
    else:
        allowed.add("reason")
    unknown = sorted(set(form) - allowed)
    if unknown:
        raise ApiError(
            Code.BAD_REQUEST,
            f"{unknown[0]}: not a field of the {action} form "
            f"(it takes {', '.join(sorted(allowed))})",
        )
    reason = (_one(form, "reason") or "").strip() or None
    if reason is not None and len(reason) > pages.REASON_MAX:
        raise ApiError(Code.BAD_REQUEST, f"reason: at most {pages.REASON_MAX} characters")
    if action in ("approve", "reject"):
        return action, {"type": "hook_ack", "ok": action == "approve", "reason": reason}
    if action == "decline":
        return action, {"type": "answer", "error": reason or "declined through an action link"}
    if action == "halt":
        return action, {"type": "spawn_halt", "reason": reason or "halted through an action link"}
    return action, {"type": "answer", "value": _answer(form, schema)}


def _answer(form: MultiDictProxy[Any], schema: dict[str, Any] | None) -> Any:
    """The answer the form's fields hold, checked against the ask's form."""
    if schema is None:
        try:
            return json.loads(_one(form, pages.ANSWER_JSON, required=True) or "")
        except ValueError as exc:
            raise ApiError(
                Code.BAD_ANSWER,
                f'{pages.ANSWER_JSON}: not JSON ({exc}); write text in "quotes"',
            ) from None
    value: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        field = pages.ANSWER_FIELD + name
        text = _one(form, field)
        kind = prop.get("type")
        if kind == "boolean":
            if text not in (None, "true"):
                raise ApiError(Code.BAD_ANSWER, f"{field}: a checkbox is 'true' or absent")
            value[name] = text == "true"
        elif text is None or text.strip() == "":
            continue  # left empty: "required" says whether it may be
        elif kind in ("number", "integer"):
            value[name] = _number(field, text.strip(), integer=kind == "integer")
        else:
            value[name] = text
    problem = answer_problem(schema, value)
    if problem is not None:
        raise ApiError(Code.BAD_ANSWER, problem.replace("value.", pages.ANSWER_FIELD, 1))
    return value


def _number(field: str, text: str, *, integer: bool) -> int | float:
    try:
        number = float(text)
    except ValueError:
        raise ApiError(Code.BAD_ANSWER, f"{field}: {text!r} is not a number") from None
    if not math.isfinite(number):
        raise ApiError(Code.BAD_ANSWER, f"{field}: {text!r} is not a finite number")
    if integer:
        if not number.is_integer():
            raise ApiError(Code.BAD_ANSWER, f"{field}: {text!r} is not a whole number")
        return int(number)
    return number
