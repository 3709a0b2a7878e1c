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
)
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
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **detail: Any
) -> web.Response:
    body = {"error": {"code": code, "message": message, **detail}}
    return json_response(body, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        response = error_response(exc.status, exc.code, exc.message, headers, **exc.detail)
        if exc.close_connection:
            response.force_close()
        return response
    except CapabilityError as exc:
        if exc.forbidden:
            return error_response(403, exc.code, exc.message)
        return error_response(401, exc.code, exc.message, {"WWW-Authenticate": "Bearer"})
    except AttemptEnded as exc:
        return error_response(409, exc.code, exc.message)
    except AttemptFull as exc:  # past a bound of its attempt: bytes 413, a count 429
        return error_response(413 if exc.too_large else 429, exc.code, exc.message, **exc.detail)
    except NodeUnreachable as exc:  # cluster mode: the owner of the work is away
        return error_response(503, exc.code, exc.message, {"Retry-After": "1"})
    except StoreError as exc:
        log.error("store write failed", method=request.method, path=request.path, error=str(exc))
        return error_response(
            503,
            Code.STORE_FAILED,
            f"could not save the change, so nothing was changed: {exc}",
        )
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].max_body_bytes
        return error_response(
            413, Code.TOO_LARGE, f"request body is larger than max_body_bytes ({limit})"
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
        return error_response(exc.status, code, message, allow)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error", method=request.method, path=request.path)
        return error_response(500, Code.INTERNAL, "internal error; see the server log")
