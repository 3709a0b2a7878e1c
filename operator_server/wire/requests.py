"""Reading a request: JSON bodies, query strings, bearer credentials."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from marshmallow import Schema, ValidationError

from operator_server.errors import ApiError, Code, describe_validation
from operator_server.wire import json
from operator_server.wire.fastcheck import fast_check

# What aiohttp decompresses before the handler sees the body ("" = not encoded).
# It answers br and zstd itself (400, text/plain) unless their libraries are installed.
_DECODED_ENCODINGS = frozenset({"", "identity", "gzip", "deflate", "br", "zstd"})


async def read_body(request: web.Request) -> bytes:
    """The whole body, decompressed per ``Content-Encoding``; 400 when it cannot be.

    After such a failure the rest of the body is unreadable, so the connection
    is closed after the answer (and aiohttp is told the body is over, or it
    would try to drain it and log the same failure again as "unhandled").
    """
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in _DECODED_ENCODINGS:
        # aiohttp passes any other coding through undecoded: refuse rather than
        # read compressed bytes as if they were the body.
        raise ApiError(
            Code.BAD_ENCODING,
            f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or none",
        )
    try:
        return await request.read()
    except web.RequestPayloadError as exc:
        request.content.feed_eof()
        if isinstance(exc.__cause__, ContentEncodingError):
            raise ApiError(
                Code.BAD_ENCODING,
                f"the body is not valid {encoding} data (Content-Encoding: {encoding})",
                close_connection=True,
            ) from None
        raise ApiError(
            Code.BAD_REQUEST,
            f"the request body could not be read: {exc}",
            close_connection=True,
        ) from None


async def read_json(request: web.Request, max_depth: int) -> Any:
    """The body as JSON, nested at most ``max_depth`` deep (``max_json_depth``)."""
    raw = await read_body(request)
    if not raw.strip():
        raise ApiError(Code.BAD_JSON, "request body is empty; send a JSON object")
    try:
        return json.loads(raw, max_depth)
    except json.JsonError as exc:
        if exc.code == Code.BAD_JSON:
            raise ApiError(exc.code, f"request body is {exc.message}") from None
        raise ApiError(exc.code, exc.message) from None


def validate(schema: Schema, data: Any, what: str = "body") -> Any:
    """Load ``data`` with ``schema``; a 400 naming each bad field otherwise."""
    if not isinstance(data, Mapping):
        raise ApiError(Code.BAD_REQUEST, f"{what} must be a JSON object")
    quick = fast_check(schema)(data)  # plainly valid input skips marshmallow's machinery
    if quick is not None:
        return quick
    try:
        return schema.load(data)
    except ValidationError as exc:
        message = "; ".join(describe_validation(exc.messages))
        raise ApiError(Code.BAD_REQUEST, message, fields=exc.messages) from None


def query(request: web.Request, schema: Schema) -> Any:
    """The query string through ``schema``.  An empty value is a value, and
    refused like any other that does not fit: ``?ok=`` from an unset shell
    variable must not quietly mean the default ``ok=true``."""
    return validate(schema, dict(request.query), "query")


def bearer_of(request: web.Request) -> str | None:
    """The token of ``Authorization: Bearer <token>``; None if absent, empty or not Bearer.

    A token that is not UTF-8 text is refused (401) here, once, so no check
    further on ever meets the undecodable bytes aiohttp hands through.
    """
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return text_token(token, "Authorization")


def text_token(token: str, where: str) -> str:
    """``token`` if it is valid UTF-8 text; else 401 naming ``where`` it came from.

    aiohttp decodes header bytes as UTF-8 with ``surrogateescape``: a byte that is
    not UTF-8 arrives as a lone surrogate, which no token can contain.
    """
    try:
        token.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(Code.UNAUTHORIZED, f"{where}: the token is not valid UTF-8") from None
    return token


def require_bearer(request: web.Request, expected: str, what: str) -> None:
    """Constant-time check of a fixed bearer token (the API token)."""
    token = bearer_of(request)
    if token is None:
        raise ApiError(Code.UNAUTHORIZED, f"send Authorization: Bearer <{what}>")
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise ApiError(Code.UNAUTHORIZED, f"wrong {what}")


def json_response(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``web.json_response``, encoded by ``json.dumps_bytes`` (orjson)."""
    return web.Response(
        body=json.dumps_bytes(data),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )
