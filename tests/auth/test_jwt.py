"""``JwtVerifier`` against a provider serving its JWKS over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from operator_server.auth.jwks import KeySet
from operator_server.auth.jwt import JwtVerifier, looks_like_jwt
from operator_server.auth.principal import Via
from operator_server.config import ConfigError
from operator_server.errors import ApiError, Code
from tests.auth.conftest import Clock, jwt_settings
from tests.auth.idp import AUDIENCE, ISSUER, Provider, public_jwk

IdP = tuple[Provider, str]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], claims: dict[str, Any], sign: Any = None) -> str:
    """A token built without PyJWT, for the ones PyJWT refuses to make."""
    head = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{head}.{b64(sign(head.encode())) if sign else ''}"


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 300, **extra}


async def refusal(verifier: JwtVerifier, token: str) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await verifier.principal(token)
    return caught.value


@pytest.fixture
async def verifier(idp: IdP) -> Any:
    made = JwtVerifier(jwt_settings(jwks_url=idp[1]))
    yield made
    await made.close()


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_a_token_signed_with_each_default_algorithm_becomes_a_principal(
    idp: IdP, verifier: JwtVerifier, alg: str
) -> None:
    provider, _ = idp
    provider.add("k-" + alg, alg)
    token = provider.token("k-" + alg, scope="openid tasks:create profile events:read")
    who = await verifier.principal(token)
    assert who.name == f"{ISSUER}#alice"
    assert who.via is Via.JWT
    # Only scopes of ours: the provider's own (openid, profile) are not.
    assert who.scopes == {"tasks:create", "events:read"}
    exp = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["exp"]
    assert who.expires_at == exp


async def test_an_rsa_key_without_alg_verifies_each_configured_rsa_algorithm(idp: IdP) -> None:
    provider, url = idp
    provider.add("k-ps", "PS256")  # its JWK says RSA, not which RSA signature
    assert "alg" not in provider.jwks()["keys"][1]
    verifier = JwtVerifier(jwt_settings(jwks_url=url, algorithms=["RS256", "PS256"]))
    try:
        assert (await verifier.principal(provider.token("k-ps"))).via is Via.JWT
        assert (await verifier.principal(provider.token("k1"))).via is Via.JWT
    finally:
        await verifier.close()


async def test_claims_map_to_scopes_and_the_name_claim_is_configurable(idp: IdP) -> None:
    provider, url = idp
    verifier = JwtVerifier(
        jwt_settings(
            jwks_url=url,
            principal_claim="email",
            claim_scopes={
                "groups=sre": ["operate:*", "tasks:read"],
                "realm_access.roles=approver": ["operate:review-*"],
                "https://example.com/team=ops": ["tasks:cancel"],
                "email_verified=true": ["events:read"],
                "groups=finance": ["admin"],
            },
        )
    )
    try:
        who = await verifier.principal(
            provider.token(
                email="alice@example.com",
                groups=["dev", "sre"],
                realm_access={"roles": ["approver"]},
                **{"https://example.com/team": "ops"},
                email_verified=True,
                scope=["tasks:create"],
            )
        )
        assert who.name == f"{ISSUER}#alice@example.com"
        assert who.scopes == {
            "operate:*",
            "tasks:read",
            "operate:review-*",
            "tasks:cancel",
            "events:read",
            "tasks:create",
        }
        # None of the claims match: a principal with no scope at all.
        bare = await verifier.principal(
            provider.token(email="bob@example.com", groups="dev", email_verified=False)
        )
        assert bare.name == f"{ISSUER}#bob@example.com" and bare.scopes == frozenset()
        no_name = await refusal(verifier, provider.token())
        assert no_name.code == Code.BAD_CREDENTIALS
        assert "no usable 'email' claim" in no_name.message
    finally:
        await verifier.close()


def test_only_jwt_shaped_credentials_look_like_jwts() -> None:
    provider = Provider()
    provider.add("k1", "ES256")
    assert looks_like_jwt(provider.token())
    assert looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")  # alg none: refused by name
    assert not looks_like_jwt("osk_abc123.def_456.ghi")
    assert not looks_like_jwt("osk_0123456789_secretsecret")
    assert not looks_like_jwt("wh-0123456789abcdef")
    assert not looks_like_jwt("a.b")
    assert not looks_like_jwt("a.b.c.d")
    assert not looks_like_jwt("a b.c.d")
    assert not looks_like_jwt(".b.c")


async def test_expired_token_is_refused_as_expired(idp: IdP, verifier: JwtVerifier) -> None:
    provider, _ = idp
    gone = int(time.time()) - 3600
    error = await refusal(verifier, provider.token(exp=gone, iat=gone - 60))
    assert (error.code, error.status) == (Code.TOKEN_EXPIRED, 401)
    assert error.message.startswith("token expired at ")
    assert "leeway 30 s" in error.message


async def test_the_leeway_forgives_a_little_clock_skew(idp: IdP, verifier: JwtVerifier) -> None:
    provider, _ = idp
    just_gone = int(time.time()) - 5
    assert (await verifier.principal(provider.token(exp=just_gone))).name == f"{ISSUER}#alice"


REFUSALS = [
    # (claims changed, message part)
    ({"nbf": 4_000_000_000}, "token not yet valid: nbf"),
    ({"iat": 4_000_000_000}, "token not yet valid: iat"),
    ({"iss": "https://evil.example.com"}, "wrong issuer 'https://evil.example.com'"),
    ({"aud": "someone-else"}, "wrong audience 'someone-else' (expected 'operator-server')"),
    ({"exp": None}, "token has no 'exp' claim"),
    ({"aud": None}, "token has no 'aud' claim"),
    ({"iss": None}, "token has no 'iss' claim"),
    ({"exp": 10**400}, "is not a time"),
]


@pytest.mark.parametrize(("change", "says"), REFUSALS)
async def test_a_token_whose_claims_do_not_hold_is_refused_naming_why(
    idp: IdP, verifier: JwtVerifier, change: dict[str, Any], says: str
) -> None:
    provider, _ = idp
    error = await refusal(verifier, provider.token(**change))
    assert (error.code, error.status) == (Code.BAD_CREDENTIALS, 401)
    assert says in error.message


async def test_a_token_signed_by_another_key_under_a_known_kid_is_refused(
    idp: IdP, verifier: JwtVerifier
) -> None:
    provider, _ = idp
    provider.add("forger", "RS256", publish=False)
    forged = provider.token("forger", headers={"kid": "k1"})
    error = await refusal(verifier, forged)
    assert error.code == Code.BAD_CREDENTIALS
    assert error.message.startswith("bad signature")


async def test_alg_none_is_refused(idp: IdP, verifier: JwtVerifier) -> None:
    token = hand_made({"alg": "none", "typ": "JWT"}, claims())
    assert looks_like_jwt(token)
    error = await refusal(verifier, token)
    assert error.code == Code.BAD_CREDENTIALS
    assert error.message == "algorithm not allowed: 'none' (allowed: RS256, ES256, EdDSA)"


async def test_hs256_keyed_with_the_public_rsa_key_is_refused(
    idp: IdP, verifier: JwtVerifier
) -> None:
    """Algorithm confusion: the attacker knows the public key (it is published)
    and uses its bytes as an HMAC secret, hoping the verifier does the same."""
    provider, _ = idp
    public = provider.keys["k1"][1].public_key()
    for secret in (
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        json.dumps(provider.jwks()["keys"][0]).encode(),
    ):
        token = hand_made(
            {"alg": "HS256", "typ": "JWT", "kid": "k1"},
            claims(scope="admin"),
            lambda signing_input, key=secret: hmac.new(key, signing_input, hashlib.sha256).digest(),
        )
        error = await refusal(verifier, token)
        assert error.code == Code.BAD_CREDENTIALS
        assert error.message == "algorithm not allowed: 'HS256' (allowed: RS256, ES256, EdDSA)"
    assert provider.hits == 0  # refused before any key was looked up


async def test_an_algorithm_outside_the_configured_list_is_refused(idp: IdP) -> None:
    provider, url = idp
    provider.add("k-ec", "ES256")
    verifier = JwtVerifier(jwt_settings(jwks_url=url, algorithms=["RS256"]))
    try:
        error = await refusal(verifier, provider.token("k-ec"))
        assert error.message == "algorithm not allowed: 'ES256' (allowed: RS256)"
    finally:
        await verifier.close()


async def test_a_token_naming_an_rsa_key_with_an_ec_algorithm_is_refused(
    idp: IdP, verifier: JwtVerifier
) -> None:
    provider, _ = idp
    provider.add("k-ec", "ES256", publish=False)
    error = await refusal(verifier, provider.token("k-ec", headers={"kid": "k1"}))
    assert error.code == Code.BAD_CREDENTIALS
    assert error.message.startswith("key 'k1' (RSA) cannot verify ES256")


async def test_malformed_tokens_are_refused_as_malformed(idp: IdP, verifier: JwtVerifier) -> None:
    provider, _ = idp
    for alg in (["RS256"], None, {"RS256": 1}):
        error = await refusal(verifier, hand_made({"alg": alg, "kid": "k1"}, claims()))
        assert error.code == Code.BAD_CREDENTIALS
        assert error.message.startswith(f"algorithm not allowed: {alg!r}")
    error = await refusal(verifier, "a.b.c")
    assert error.code == Code.BAD_CREDENTIALS
    assert error.message.startswith("malformed token: Invalid header")
    # Signed by the right key, but what it signed is no claim set.
    signed_text = jwt.api_jws.encode(
        b"not json", provider.keys["k1"][1], algorithm="RS256", headers={"kid": "k1"}
    )
    error = await refusal(verifier, signed_text)
    assert error.code == Code.BAD_CREDENTIALS
    assert error.message.startswith("malformed token: Invalid payload string")


async def test_an_unknown_kid_is_refused_after_one_refetch(idp: IdP, verifier: JwtVerifier) -> None:
    provider, _ = idp
    provider.add("stranger", "RS256", publish=False)
    error = await refusal(verifier, provider.token("stranger"))
    assert error.code == Code.BAD_CREDENTIALS
    assert error.message == "unknown kid 'stranger': not in the provider's key set"
    assert provider.hits == 1


async def test_a_rotated_key_is_fetched_once_and_refetches_are_rate_limited(idp: IdP) -> None:
    provider, url = idp
    clock = Clock()
    settings = jwt_settings(jwks_url=url, jwks_refresh_s=30)
    verifier = JwtVerifier(settings, keys=KeySet(settings, clock=clock))
    try:
        assert (await verifier.principal(provider.token("k1"))).name == f"{ISSUER}#alice"
        await verifier.principal(provider.token("k1"))
        assert provider.hits == 1  # cached

        # The provider rotates: k2 appears (k1 stays, as providers keep the old
        # key a while).  Within jwks_refresh_s of the last fetch, no refetch.
        provider.add("k2", "ES256")
        clock.now += 29
        error = await refusal(verifier, provider.token("k2"))
        assert error.message == "unknown kid 'k2': not in the provider's key set"
        assert provider.hits == 1

        # Past it: one refetch, shared by every request waiting for it.
        clock.now += 1
        many = await asyncio.gather(*(verifier.principal(provider.token("k2")) for _ in range(5)))
        assert {who.name for who in many} == {f"{ISSUER}#alice"}
        assert provider.hits == 2
        await verifier.principal(provider.token("k1"))

        # A made-up kid right after: refused without asking the provider again.
        provider.add("k3", "EdDSA", publish=False)
        for _ in range(3):
            assert (await refusal(verifier, provider.token("k3"))).code == Code.BAD_CREDENTIALS
        assert provider.hits == 2
    finally:
        await verifier.close()


async def test_a_key_the_provider_removed_stops_working_once_the_set_is_old(idp: IdP) -> None:
    provider, url = idp
    clock = Clock()
    settings = jwt_settings(jwks_url=url, jwks_max_age_s=600)
    verifier = JwtVerifier(settings, keys=KeySet(settings, clock=clock))
    try:
        await verifier.principal(provider.token("k1"))
        provider.add("k2", "RS256")
        provider.published.remove("k1")  # k1 leaked: the provider withdraws it
        clock.now += 599
        await verifier.principal(provider.token("k1"))
        assert provider.hits == 1
        clock.now += 1
        error = await refusal(verifier, provider.token("k1"))
        assert error.message == "unknown kid 'k1': not in the provider's key set"
        assert provider.hits == 2
        await verifier.principal(provider.token("k2"))
    finally:
        await verifier.close()


async def test_a_known_key_does_not_wait_for_a_refresh_in_flight(idp: IdP) -> None:
    provider, url = idp
    clock = Clock()
    settings = jwt_settings(jwks_url=url, jwks_max_age_s=600)
    verifier = JwtVerifier(settings, keys=KeySet(settings, clock=clock))
    try:
        await verifier.principal(provider.token("k1"))
        provider.add("k2", "ES256")
        provider.stall = asyncio.Event()
        provider.arrived.clear()
        clock.now += 600  # the set is stale: the next token refreshes it
        refreshing = asyncio.ensure_future(verifier.principal(provider.token("k1")))
        await provider.arrived.wait()  # that refresh hangs at the provider
        # Meanwhile a token whose key is at hand is answered at once (the guard
        # only ends a test that would otherwise hang).
        who = await asyncio.wait_for(verifier.principal(provider.token("k1")), 10)
        assert who.name == f"{ISSUER}#alice" and not refreshing.done()
        provider.stall.set()
        assert (await refreshing).name == f"{ISSUER}#alice"
        await verifier.principal(provider.token("k2"))  # from the refreshed set
        assert provider.hits == 2
    finally:
        await verifier.close()


async def test_a_remembered_token_is_refused_once_it_expires(idp: IdP) -> None:
    provider, url = idp
    wall = Clock()
    wall.now = time.time()
    verifier = JwtVerifier(jwt_settings(jwks_url=url), wall=wall)
    try:
        token = provider.token(exp=int(wall.now) + 300)
        await verifier.principal(token)
        assert (await verifier.principal(token)).name == f"{ISSUER}#alice"
        assert verifier.remembered == 1
        wall.now += 300 + 29  # within the leeway
        await verifier.principal(token)
        wall.now += 1
        error = await refusal(verifier, token)
        assert error.code == Code.TOKEN_EXPIRED
        assert verifier.remembered == 0
        assert provider.hits == 1
    finally:
        await verifier.close()


async def test_remembered_tokens_are_forgotten_when_the_key_set_changes(idp: IdP) -> None:
    provider, url = idp
    clock = Clock()
    settings = jwt_settings(jwks_url=url)
    verifier = JwtVerifier(settings, keys=KeySet(settings, clock=clock), cache_size=2)
    try:
        old = provider.token("k1")
        await verifier.principal(old)
        for name in ("bob", "carol"):
            await verifier.principal(provider.token("k1", sub=name))
        assert verifier.remembered == 2  # bounded: alice's went first
        await verifier.principal(old)
        # The provider rotates and withdraws k1 at once; the next fetch (here
        # for a token it refuses) forgets what k1 verified.
        provider.add("k2", "ES256")
        provider.published.remove("k1")
        provider.add("k3", "ES256", publish=False)
        clock.now += 30
        assert (await refusal(verifier, provider.token("k3"))).message.startswith("unknown kid")
        assert provider.hits == 2
        error = await refusal(verifier, old)
        assert error.message == "unknown kid 'k1': not in the provider's key set"
        await verifier.principal(provider.token("k2"))
        assert verifier.remembered == 1
    finally:
        await verifier.close()


async def test_a_failing_jwks_endpoint_answers_503_and_is_not_hammered(idp: IdP) -> None:
    provider, url = idp
    provider.status = 500
    clock = Clock()
    settings = jwt_settings(jwks_url=url, jwks_refresh_s=30)
    verifier = JwtVerifier(settings, keys=KeySet(settings, clock=clock))
    try:
        for _ in range(3):
            error = await refusal(verifier, provider.token("k1"))
            assert (error.code, error.status) == (Code.JWKS_UNAVAILABLE, 503)
            assert error.message == (
                "the identity provider's keys could not be loaded: HTTP 500 "
                "(next try in at most 30 s)"
            )
        assert provider.hits == 1
        provider.status = 200
        clock.now += 30
        assert (await verifier.principal(provider.token("k1"))).name == f"{ISSUER}#alice"
        assert provider.hits == 2
    finally:
        await verifier.close()


async def test_a_jwks_endpoint_that_never_answers_fails_the_request_within_the_timeout(
    idp: IdP,
) -> None:
    provider, url = idp
    provider.stall = asyncio.Event()
    verifier = JwtVerifier(jwt_settings(jwks_url=url, jwks_timeout_s=0.2))
    try:
        error = await refusal(verifier, provider.token("k1"))
        assert error.code == Code.JWKS_UNAVAILABLE
        assert "no answer within 0.2 s" in error.message
    finally:
        await verifier.close()


async def test_a_jwks_without_a_signing_key_answers_503(idp: IdP) -> None:
    provider, url = idp
    provider.published.clear()
    # A secret (kty oct) has no place in a public key set; an encryption key
    # does not sign.  Neither is ever used to verify.
    provider.jwks = lambda: {  # type: ignore[method-assign]
        "keys": [
            {"kty": "oct", "kid": "k1", "k": b64(b"s" * 32)},
            {**public_jwk(provider.keys["k1"][1], "k1"), "use": "enc"},
        ]
    }
    verifier = JwtVerifier(jwt_settings(jwks_url=url))
    try:
        error = await refusal(verifier, provider.token("k1"))
        assert error.code == Code.JWKS_UNAVAILABLE
        assert error.message.endswith(": the JWKS holds no signing key (next try in at most 30 s)")
    finally:
        await verifier.close()


async def test_a_jwks_file_is_read_at_start_and_reread_for_a_new_kid(tmp_path: Path) -> None:
    provider = Provider()
    provider.add("k1", "EdDSA")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(provider.jwks()))
    clock = Clock()
    settings = jwt_settings(jwks_file=str(path))
    verifier = JwtVerifier.started(settings)
    try:
        path.unlink()  # read at start: the token needs nothing more
        assert (await verifier.principal(provider.token("k1"))).name == f"{ISSUER}#alice"
    finally:
        await verifier.close()

    path.write_text(json.dumps(provider.jwks()))
    verifier = JwtVerifier(settings, keys=KeySet(settings, clock=clock))
    await verifier.principal(provider.token("k1"))
    provider.add("k2", "ES256")
    path.write_text(json.dumps(provider.jwks()))
    clock.now += 30
    assert (await verifier.principal(provider.token("k2"))).name == f"{ISSUER}#alice"
    path.unlink()
    provider.add("k3", "ES256")
    clock.now += 30
    error = await refusal(verifier, provider.token("k3"))
    assert error.code == Code.JWKS_UNAVAILABLE
    assert error.message.startswith(
        "the identity provider's keys could not be loaded: jwks_file: No such file or directory"
    )
    assert str(tmp_path) not in error.message  # the client learns no path


def test_a_bad_jwks_file_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    for text, says in (("not json", "Expecting value"), ('{"keys": []}', "no signing key")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=rf"^auth\.jwt\.jwks_file: .*{says}"):
            JwtVerifier.started(jwt_settings(jwks_file=str(path)))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
CLAIM_NAMES = ["iss", "aud", "exp", "nbf", "iat", "sub", "scope", "groups", "email", "jti"]
HEADER_NAMES = ["alg", "kid", "typ", "crit", "b64", "jku", "x5c"]


@pytest.fixture(scope="module")
def signed_by_k1(tmp_path_factory: pytest.TempPathFactory) -> tuple[Provider, JwtVerifier]:
    provider = Provider()
    provider.add("k1", "RS256")
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps(provider.jwks()))
    settings = jwt_settings(
        jwks_file=str(path), principal_claim="email", claim_scopes={"groups=sre": ["admin"]}
    )
    return provider, JwtVerifier.started(settings)


@hyp_settings(max_examples=300, deadline=None)
@given(
    header=st.dictionaries(st.sampled_from(HEADER_NAMES), JSON, max_size=3),
    changed=st.dictionaries(st.sampled_from(CLAIM_NAMES), JSON, max_size=4),
)
def test_whatever_a_validly_signed_token_holds_the_answer_is_a_principal_or_an_api_error(
    signed_by_k1: tuple[Provider, JwtVerifier], header: dict[str, Any], changed: dict[str, Any]
) -> None:
    """Signed with the provider's real key, so every header and claim check is
    reached: hostile values there are refusals, never a crash (a 500)."""
    provider, verifier = signed_by_k1
    key = provider.keys["k1"][1]
    assert isinstance(key, rsa.RSAPrivateKey)
    token = hand_made(
        {"alg": "RS256", "kid": "k1", **header},
        {**claims(email="a@example.com"), **changed},
        lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256()),
    )
    try:
        asyncio.run(verifier.principal(token))
    except ApiError as error:
        assert error.code in (Code.BAD_CREDENTIALS, Code.TOKEN_EXPIRED), error
