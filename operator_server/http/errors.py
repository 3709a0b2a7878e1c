"""The one place any error becomes an HTTP response.

Every non-2xx answer is ``{"error": {"code", "message", ...}}``: our own
``ApiError``/``CapabilityError``, aiohttp's HTTP exceptions (unknown route, wrong
method, body too large) and — as a last resort, logged — anything unexpected.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from operator_server.appkeys import SETTINGS
from operator_server.errors import (
    ApiError,
    AttemptEnded,
    AttemptFull,
    CapabilityError,
    Code,
    NodeUnreachable,
    status_of,
)
from operator_server.http.observe import loggable_path
from operator_server.logs import get_logger
from operator_server.store import StoreError
from operator_server.wire.requests import json_response

log = get_logger(__name__)

_STATUS_CODES = {
    400: Code.BAD_REQUEST,
    401: Code.UNAUTHORIZED,
    404: Code.NOT_FOUND,
    405: Code.METHOD_NOT_ALLOWED,
    413: Code.TOO_LARGE,
}


def error_response(
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    status: int | None = None,
    **detail: Any,
) -> web.Response:
    """The error answer for ``code``, with its status from ``errors.STATUS``
    unless ``status`` says otherwise."""
    status = status_of(code) if status is None else status
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
    body = {"error": {"code": code, "message": message, **detail}}
    return json_response(body, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as exc:
        response = error_response(exc.code, exc.message, status=exc.status, **exc.detail)
        if exc.close_connection:
            response.force_close()
        return response
    except (CapabilityError, AttemptEnded, AttemptFull) as exc:
        return error_response(exc.code, exc.message, **exc.detail)
    except NodeUnreachable as exc:  # the owner of the work is away: worth a retry soon
        return error_response(exc.code, exc.message, {"Retry-After": "1"})
    except StoreError as exc:
        log.error(
            "store write failed", method=request.method, path=loggable_path(request), error=str(exc)
        )
        return error_response(
            Code.STORE_FAILED,
            f"could not save the change, so nothing was changed: {exc}",
        )
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].max_body_bytes
        return error_response(
            Code.TOO_LARGE, f"request body is larger than max_body_bytes ({limit})"
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _STATUS_CODES.get(exc.status, Code.BAD_REQUEST)
        if exc.status == 404:
            message = f"no route for {request.method} {request.path}"
        elif exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        else:
            message = exc.reason
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(code, message, allow, status=exc.status)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error", method=request.method, path=loggable_path(request))
        return error_response(Code.INTERNAL, "internal error; see the server log")
