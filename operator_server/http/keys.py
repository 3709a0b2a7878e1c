"""API key routes (admin): make one, list them, revoke one.

``POST /v1/keys`` answers the key's text once; nothing shows it again (the
store keeps only a hash).  ``DELETE /v1/keys/{key_id}`` revokes: the key is
refused from the next request on, on this node at once (its cached principal
is dropped here) and on every other node of a cluster as the revocation
commits (``auth/authenticator.py``).  A revoked key stays listed, with its
``revoked_at``, so who held it remains known.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from marshmallow import Schema, fields, validate

from operator_server.auth.authenticator import AUTHENTICATOR
from operator_server.auth.keys import NAME_MAX, NOTE_MAX, SCOPES_MAX, key_view
from operator_server.auth.principal import Scope, principal_of
from operator_server.errors import ApiError, Code
from operator_server.wire.contract import Body, Operation, Security, documented
from operator_server.wire.requests import json_response

routes = web.RouteTableDef()

_SCOPES_HELP = (
    "tasks:create, tasks:read, tasks:cancel, events:read, operate:<glob> (mint sessions "
    "claiming matching roles; operate:* for all), admin (implies every other)"
)


class CreateKeySchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=NAME_MAX))
    scopes = fields.List(
        fields.String(validate=validate.Length(min=1, max=300)),
        required=True,
        validate=validate.Length(min=1, max=SCOPES_MAX),
        metadata={"description": _SCOPES_HELP},
    )
    expires_in_s = fields.Float(
        load_default=None,
        allow_none=True,
        validate=validate.Range(min=0, min_inclusive=False, max=100 * 365 * 86400),
        metadata={"description": "seconds from now until the key is refused; none: never"},
    )
    note = fields.String(load_default="", validate=validate.Length(max=NOTE_MAX))


class KeySchema(Schema):
    """A key as listed: never its secret."""

    id = fields.String(required=True)
    name = fields.String(required=True)
    scopes = fields.List(fields.String(), required=True)
    created_at = fields.DateTime(required=True)
    expires_at = fields.DateTime(required=True, allow_none=True)
    note = fields.String(required=True)
    revoked_at = fields.DateTime(required=True, allow_none=True)


class NewKeySchema(KeySchema):
    key = fields.String(
        required=True,
        metadata={"description": "osk_<id>_<secret>: shown only this once; send it as a Bearer"},
    )


class KeyListSchema(Schema):
    keys = fields.List(fields.Nested(KeySchema), required=True)


_ADMIN = (Security.API_KEY,)
_SCOPES = (Scope.ADMIN,)


@routes.post("/v1/keys")
@documented(
    Operation(
        "Make an API key with a name and scopes; its text is shown only in this answer",
        {201: Body("the key, with its text", NewKeySchema, headers={"Location": "its URL"})},
        errors={400: "an unknown scope (the message names it), or another bad field"},
        body=CreateKeySchema,
        security=_ADMIN,
        scopes=_SCOPES,
        tags=("keys",),
    )
)
async def create_key(request: web.Request, body: dict[str, Any]) -> web.Response:
    keys = request.app[AUTHENTICATOR].keys
    record, text = await keys.create(
        body["name"],
        body["scopes"],
        body["expires_in_s"],
        body["note"],
        by=principal_of(request).name,
    )
    return json_response(
        {**key_view(record), "key": text},
        status=201,
        headers={"Location": f"/v1/keys/{record.id}"},
    )


@routes.get("/v1/keys")
@documented(
    Operation(
        "List the API keys, oldest first, revoked ones too (never a secret)",
        {200: Body("every key", KeyListSchema)},
        security=_ADMIN,
        scopes=_SCOPES,
        tags=("keys",),
    )
)
async def list_keys(request: web.Request) -> web.Response:
    records = await request.app[AUTHENTICATOR].keys.list()
    return json_response({"keys": [key_view(r) for r in records]})


@routes.delete("/v1/keys/{key_id}")
@documented(
    Operation(
        "Revoke an API key: refused from now on, on every node",
        {204: Body("revoked (or it already was)", media=())},
        errors={404: "no such key (`not_found`)"},
        security=_ADMIN,
        scopes=_SCOPES,
        tags=("keys",),
    )
)
async def revoke_key(request: web.Request) -> web.Response:
    key_id = request.match_info["key_id"]
    authenticator = request.app[AUTHENTICATOR]
    record = await authenticator.keys.revoke(key_id, by=principal_of(request).name)
    if record is None:
        raise ApiError(Code.NOT_FOUND, f"no API key {key_id!r}")
    authenticator.forget(key_id)
    return web.Response(status=204)
