"""A stand-in identity provider: real keys, a real JWKS endpoint, signed tokens.

``Provider`` holds signing keys (RSA, EC P-256, Ed25519, generated with
``cryptography``), publishes the public halves as a JWKS over HTTP on a real
port (``serve``), counts how often that JWKS is fetched, and signs tokens with
PyJWT, so the verifier under test sees exactly what a real provider sends.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://idp.example.com/realms/ops"
AUDIENCE = "operator-server"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def new_key(alg: str) -> PrivateKey:
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(alg)


def public_jwk(key: PrivateKey, kid: str) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        text = RSAAlgorithm.to_jwk(public)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        text = ECAlgorithm.to_jwk(public)
    else:
        text = OKPAlgorithm.to_jwk(public)
    return {**json.loads(text), "kid": kid, "use": "sig"}


@dataclass
class Provider:
    keys: dict[str, tuple[str, PrivateKey]] = field(default_factory=dict)  # kid -> (alg, key)
    published: list[str] = field(default_factory=list)  # the kids the JWKS shows
    hits: int = 0  # JWKS fetches answered
    status: int = 200  # what the JWKS endpoint answers
    stall: asyncio.Event | None = None  # set: the endpoint waits for it before answering
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # a fetch came in

    def add(self, kid: str, alg: str = "RS256", *, publish: bool = True) -> None:
        self.keys[kid] = (alg, new_key(alg))
        if publish:
            self.published.append(kid)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(self.keys[kid][1], kid) for kid in self.published]}

    def token(
        self, kid: str = "k1", *, headers: dict[str, Any] | None = None, **claims: Any
    ) -> str:
        alg, key = self.keys[kid]
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "iat": now,
            "exp": now + 300,
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}  # None: leave the claim out
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid, **(headers or {})})

    async def _serve_jwks(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.arrived.set()
        if self.stall is not None:
            await self.stall.wait()
        if self.status != 200:
            return web.json_response({"error": "down"}, status=self.status)
        return web.json_response(self.jwks())

    async def serve(self) -> TestServer:
        """The JWKS at ``/jwks.json`` on a real port of 127.0.0.1; the caller
        closes the returned server."""
        app = web.Application()
        app.router.add_get("/jwks.json", self._serve_jwks)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        return server
