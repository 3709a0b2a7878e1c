"""The authenticator's cache of verified principals: bounded, honest about
expiry, cleared by a revocation; and its slot for a JWT verifier."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from operator_server.app import build_app
from operator_server.auth.authenticator import Authenticator
from operator_server.auth.keys import ApiKeys
from operator_server.auth.principal import Principal, Via
from operator_server.errors import ApiError, Code
from operator_server.store import MemoryStore
from tests.conftest import make_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def code_of(authenticator: Authenticator, token: str) -> str | None:
    try:
        await authenticator.of_token(token)
    except ApiError as exc:
        return exc.code
    return None


async def test_the_cache_holds_at_most_its_size_most_recent_first() -> None:
    store = MemoryStore()
    keys = ApiKeys(store)
    authenticator = Authenticator(keys, "", cache_size=2)
    texts = [(await keys.create(f"k{i}", ["tasks:read"], by="test"))[1] for i in range(3)]
    for text in texts:
        found = await authenticator.of_token(text)
        assert found is not None and found.via is Via.KEY
    assert authenticator.cached == 2
    # The oldest went; reading it again puts it back and pushes out the next oldest.
    store.keys.clear()  # no store behind it now: only the cache can answer
    assert await code_of(authenticator, texts[2]) is None
    assert await code_of(authenticator, texts[1]) is None
    assert await code_of(authenticator, texts[0]) == Code.BAD_CREDENTIALS


async def test_a_cached_key_is_refused_once_it_expires() -> None:
    clock = Clock()
    keys = ApiKeys(MemoryStore(), clock=clock)
    authenticator = Authenticator(keys, "", clock=clock)
    _, text = await keys.create("short", ["tasks:read"], expires_in_s=60, by="test")
    assert await code_of(authenticator, text) is None
    assert authenticator.cached == 1
    clock.now += 61
    assert await code_of(authenticator, text) == Code.KEY_EXPIRED
    assert authenticator.cached == 0


async def test_forgetting_a_key_drops_only_its_entries() -> None:
    keys = ApiKeys(MemoryStore())
    authenticator = Authenticator(keys, "")
    _, kept_text = await keys.create("kept", ["tasks:read"], by="test")
    gone, gone_text = await keys.create("gone", ["tasks:read"], by="test")
    for text in (kept_text, gone_text):
        await authenticator.of_token(text)
    await keys.revoke(gone.id, by="test")
    assert await code_of(authenticator, gone_text) is None  # still cached: not yet told
    authenticator.forget(gone.id)
    assert authenticator.cached == 1
    assert await code_of(authenticator, gone_text) == Code.KEY_REVOKED
    assert await code_of(authenticator, kept_text) is None
    authenticator.forget(None)
    assert authenticator.cached == 0


class OneIssuer:
    """A JWT verifier in the slot's shape: one token it accepts, others refused."""

    def __init__(self, accepted: str) -> None:
        self.accepted = accepted
        self.asked = 0

    async def principal(self, token: str) -> Principal:
        self.asked += 1
        if token != self.accepted:
            raise ApiError(Code.BAD_CREDENTIALS, "not signed by the issuer")
        return Principal("https://idp.example#alice", Via.JWT, frozenset({"tasks:read"}))

    async def close(self) -> None:
        pass


async def test_a_jwt_goes_to_the_configured_verifier_every_time_which_keeps_its_own_cache(
    aiohttp_client: Any,
) -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln"
    verifier = OneIssuer(token)
    app = build_app(make_settings(api_token="boot"), jwt=verifier)
    client = await aiohttp_client(app)
    for _ in range(3):
        resp = await client.get("/v1/tasks", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200
    # Not cached here: the verifier's cache knows when the key set changed.
    assert verifier.asked == 3
    refused = await client.post(
        "/v1/tasks", json={"agent": "echo"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert refused.status == 403
    assert "https://idp.example#alice" in (await refused.json())["error"]["message"]
    other = await client.get("/v1/tasks", headers={"Authorization": "Bearer a.b.c"})
    assert (await other.json())["error"]["code"] == "bad_credentials"


async def test_with_no_verifier_a_jwt_is_no_credential_the_daemon_knows(
    aiohttp_client: Any,
) -> None:
    app: web.Application = build_app(make_settings(api_token="boot"))
    client = await aiohttp_client(app)
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln"
    resp = await client.get("/v1/tasks", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"
