"""Who the caller is: ``GET /v1/whoami``, for a client to show and to plan by.

Any principal may ask (it holds no scope of its own: knowing what you may do
is not a privilege), so a console can say "Signed in as key:ci" and hide what
that principal may not do before it tries.  The answer is the principal the
route check found (``auth/authenticator.py``): the bootstrap token, an API
key, a JWT or, on an open daemon's loopback, ``local``.  It never echoes the
credential.
"""

from __future__ import annotations

from aiohttp import web
from marshmallow import Schema, fields, validate

from operator_server.auth.principal import Via, principal_of
from operator_server.wire.contract import Body, Operation, Security, documented
from operator_server.wire.requests import json_response
from operator_server.wire.times import iso

routes = web.RouteTableDef()


class WhoamiSchema(Schema):
    name = fields.String(
        required=True,
        metadata={
            "description": "what minted_by and the audit trail record: bootstrap, local, "
            "key:<key name>, or <issuer>#<claim> for a JWT"
        },
    )
    via = fields.String(
        required=True,
        validate=validate.OneOf([str(v) for v in Via]),
        metadata={"description": "how the caller proved it: bootstrap, key, jwt or loopback"},
    )
    scopes = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "what it holds, sorted (admin implies every other scope)"},
    )
    admin = fields.Boolean(required=True)
    expires_at = fields.DateTime(
        required=True,
        allow_none=True,
        metadata={"description": "when the credential stops being accepted; null: never"},
    )


@routes.get("/v1/whoami")
@documented(
    Operation(
        "Who the caller is: its principal's name, how it signed in and its scopes",
        {200: Body("the caller's principal", WhoamiSchema)},
        security=(Security.API_KEY,),
        any_principal=True,
        tags=("keys",),
    )
)
async def whoami(request: web.Request) -> web.Response:
    found = principal_of(request)
    return json_response(
        {
            "name": found.name,
            "via": str(found.via),
            "scopes": sorted(found.scopes),
            "admin": found.admin,
            "expires_at": iso(found.expires_at),
        }
    )
