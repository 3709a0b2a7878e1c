"""Settings: one schema, four sources (default < file < env < flag).

A key is written twice: in ``Settings`` (its name, type and default, which
the code reads) and in ``SettingsSchema`` (its limits and its help, with the
default read from ``Settings``); ``tests/test_config.py`` holds the two to the
same keys and defaults.  The TOML file, the ``OPERATOR_SERVER_<KEY>``
environment variables and the ``--key`` CLI flags are all derived from the
schema, so they cannot drift apart.  A nested table such as ``[store]``
becomes ``store.path`` in messages, ``OPERATOR_SERVER_STORE_PATH`` in the
environment and ``--store-path`` on the command line.

Loading fails with ``ConfigError`` naming the key; the CLI turns that into exit
code 2.
"""

# size: every setting is declared here, its limits and help beside it: the one
# place a key is looked up.
from __future__ import annotations

import ipaddress
import json
import os
import socket
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from marshmallow import (
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from operator_server.auth.principal import valid_scope
from operator_server.errors import describe_validation
from operator_server.wire.json import DEFAULT_MAX_DEPTH, MAX_CONFIG_DEPTH
from operator_server.wire.values import ON_TIMEOUT_ALLOWED

ENV_PREFIX = "OPERATOR_SERVER_"
# Read by the clients (``operator-server operator|task|mcp``), not the daemon:
# a shell that runs both keeps them set, so the daemon's config passes them by.
CLIENT_ENV = frozenset({"OPERATOR_SERVER_API_KEY", "OPERATOR_SERVER_URL"})
LAYER_NAMES = ("main_ai", "senior_escalation", "operator_delegate")
DEFAULT_LAYERS = list(LAYER_NAMES)


def default_store_path() -> str:
    """``$XDG_DATA_HOME/operator-server/operator-server.sqlite`` (``~/.local/share``
    when unset): the same file whatever directory the daemon starts in. The shipped
    ``config/operator-server.toml`` (``make run``) sets ``data/...`` in the checkout."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "operator-server" / "operator-server.sqlite")


class ConfigError(Exception):
    """A setting is unknown or invalid; the message names the key."""


@dataclass(frozen=True)
class StoreSettings:
    path: str = field(default_factory=default_store_path)
    url: str = ""
    retention_s: float = 7 * 24 * 3600
    max_interruptions: int = 3


@dataclass(frozen=True)
class ClusterSettings:
    lease_s: float = 10


# The only algorithms ``[auth.jwt]`` accepts: asymmetric ones, whose verifying
# key is public.  ``none`` and HS* are refused outright: an HS256 token "signed"
# with the provider's public key as the HMAC secret would otherwise verify
# (algorithm confusion).
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
DEFAULT_JWT_ALGORITHMS = ("RS256", "ES256", "EdDSA")


@dataclass(frozen=True)
class JwtSettings:
    """``[auth.jwt]``: bearer JWTs from one identity provider (``auth/jwt.py``)."""

    issuer: str
    audience: str
    jwks_url: str = ""
    jwks_file: str = ""
    algorithms: tuple[str, ...] = DEFAULT_JWT_ALGORITHMS
    leeway_s: float = 30
    principal_claim: str = "sub"
    jwks_refresh_s: float = 30
    jwks_max_age_s: float = 600
    jwks_timeout_s: float = 5
    # "claim=value" -> the scopes a token whose claim holds value is granted.
    claim_scopes: dict[str, tuple[str, ...]] = field(default_factory=dict)


# Request kinds a notification rule may name (``[[notify]] kinds``).
NOTIFY_KINDS = ("ask", "hook_before", "spawn")
NOTIFY_CHANNELS = ("email", "chat", "webhook")


@dataclass(frozen=True)
class NotifyRule:
    """One ``[[notify]]`` table: who hears of which pending requests, how
    (``operator_server/notify``)."""

    channel: str
    roles: tuple[str, ...] = ("*",)
    kinds: tuple[str, ...] = NOTIFY_KINDS
    batch_s: float = 60
    to: tuple[str, ...] = ()
    url: str = ""
    only_unattended: bool = False
    include_text: bool = True


@dataclass(frozen=True)
class SmtpSettings:
    """``[smtp]``: the mail server email rules send through; the user and
    password are read from the environment variables named here."""

    host: str = ""
    port: int = 587
    tls: str = "starttls"
    sender: str = ""
    user_env: str = ""
    password_env: str = ""
    ca_file: str = ""


@dataclass(frozen=True)
class TracingSettings:
    """``[tracing]``: OpenTelemetry spans exported over OTLP/HTTP (``tracing.py``)."""

    enabled: bool = False
    # Empty: the exporter reads the standard OTEL_EXPORTER_OTLP_* variables.
    otlp_endpoint: str = ""
    service_name: str = "operator-server"
    sampling_ratio: float = 1.0


@dataclass(frozen=True)
class AuthSettings:
    jwt: JwtSettings | None = None  # None: no [auth.jwt], JWTs are not accepted


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 7786
    public_url: str = ""
    secret: str = ""
    api_token: str = ""
    metrics_token: str = ""
    access_log: bool = False
    metrics: bool = True
    events: bool = True
    log_level: str = "info"
    log_format: str = "auto"
    event_loop: str = "uvloop"
    capability_ttl_s: float = 1800
    max_body_bytes: int = 1024 * 1024
    max_frame_bytes: int = 1024 * 1024
    max_wait_s: float = 300
    request_read_timeout_s: float = 30
    max_json_depth: int = DEFAULT_MAX_DEPTH
    max_roles: int = 64
    max_role_length: int = 200
    max_asks_per_attempt: int = 64
    max_ask_bytes_per_attempt: int = 4 * 1024 * 1024
    max_results_per_attempt: int = 64
    max_result_bytes_per_attempt: int = 16 * 1024 * 1024
    default_layers: tuple[str, ...] = tuple(DEFAULT_LAYERS)
    default_max_attempts: int = 1
    reconnect_grace_s: float = 30
    ask_timeout_s: float = 300
    hook_timeout_s: float = 60
    spawn_timeout_s: float = 1800
    # What each kind's deadline (the three above) decides: see wire.values.OnTimeout.
    ask_on_timeout: str = "decline"
    hook_on_timeout: str = "fail"
    spawn_on_timeout: str = "fail"
    # A request still unanswered at this fraction of its deadline raises
    # ``request_due_soon`` (0 = no reminders).
    remind_at_fraction: float = 0.8
    link_max_age_s: float = 86400
    heartbeat_s: float = 20
    session_idle_ttl_s: float = 3600
    sweep_interval_s: float = 30
    audit_retention_days: float = 365
    outbound_queue_max: int = 8192
    write_timeout_s: float = 10
    allowed_origins: tuple[str, ...] = ()
    directive_template: str = ""
    shutdown_timeout_s: float = 10
    node_id: str = ""  # loading fills in hostname-pid when empty
    event_keepalive_s: float = 15
    webhook_secret: str = ""
    webhook_allow_hosts: tuple[str, ...] = ()
    webhook_allow_private: bool = False
    webhook_max_attempts: int = 8
    webhook_backoff_s: float = 5
    webhook_backoff_max_s: float = 3600
    webhook_timeout_s: float = 10
    store: StoreSettings = field(default_factory=StoreSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    notify: tuple[NotifyRule, ...] = ()
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)


_URL = validate.URL(schemes={"http", "https"}, require_tld=False)
_NON_NEGATIVE = validate.Range(min=0)
_POSITIVE = validate.Range(min=0, min_inclusive=False)


def _help(text: str) -> dict[str, str]:
    """A key's meaning, declared with its field: ``serve --help`` shows it."""
    return {"help": text}


def _switch(default: bool, text: str) -> fields.Boolean:
    """A true/false setting: TOML booleans, or exactly "true"/"false" from the
    environment and the command line (never "yes", "1" or "on")."""
    return fields.Boolean(
        load_default=default, truthy={"true", True}, falsy={"false", False}, metadata=_help(text)
    )


def _seconds(default: float, help: str, *, allow_zero: bool = True) -> fields.Float:
    return fields.Float(
        load_default=default,
        allow_nan=False,
        validate=_NON_NEGATIVE if allow_zero else _POSITIVE,
        metadata=_help(help),
    )


def _on_timeout(kind: str, default: str) -> fields.String:
    """A kind's default on-timeout action: only one that makes sense for it."""
    allowed = [str(a) for a in ON_TIMEOUT_ALLOWED[kind]]
    return fields.String(
        load_default=default,
        validate=validate.OneOf(
            allowed, error=f"{{input!r}} cannot end {kind} requests: one of {{choices}}"
        ),
        metadata=_help(f"what an unanswered {kind} becomes at its deadline ({', '.join(allowed)})"),
    )


class StoreSchema(Schema):
    path = fields.String(
        load_default=default_store_path,
        validate=validate.Length(min=1),
        metadata=_help(
            "SQLite file holding sessions and tasks, by default under"
            ' $XDG_DATA_HOME/operator-server/; ":memory:" keeps nothing'
        ),
    )
    url = fields.String(
        load_default=StoreSettings.url,
        validate=lambda v: not v or _is_postgres_url(v),
        metadata=_help(
            "PostgreSQL URL (postgresql://user:pass@host:port/db) every node of a "
            "cluster shares; empty: store.path"
        ),
    )
    retention_s = _seconds(StoreSettings.retention_s, "finished tasks are removed after this long")
    max_interruptions = fields.Integer(
        load_default=StoreSettings.max_interruptions,
        validate=validate.Range(min=0),
        metadata=_help('restarts a running task survives before it fails "interrupted"'),
    )

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> StoreSettings:
        return StoreSettings(**data)


class ClusterSchema(Schema):
    lease_s = _seconds(
        ClusterSettings.lease_s,
        "PostgreSQL store: a running task whose node has not renewed its lease for this "
        "long is taken over by another node",
        allow_zero=False,
    )

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> ClusterSettings:
        return ClusterSettings(**data)


class TracingSchema(Schema):
    enabled = _switch(
        TracingSettings.enabled,
        "export OpenTelemetry traces of tasks over OTLP/HTTP (false: none made)",
    )
    otlp_endpoint = fields.String(
        load_default=TracingSettings.otlp_endpoint,
        validate=lambda v: not v or _URL(v),
        metadata=_help(
            "OTLP/HTTP collector, e.g. http://localhost:4318 (/v1/traces is added to a bare "
            "host); empty: the OTEL_EXPORTER_OTLP_* variables, else localhost:4318"
        ),
    )
    service_name = fields.String(
        load_default=TracingSettings.service_name,
        validate=validate.Length(min=1, max=200),
        metadata=_help("service.name of every span (node_id goes beside it)"),
    )
    sampling_ratio = fields.Float(
        load_default=TracingSettings.sampling_ratio,
        allow_nan=False,
        validate=validate.Range(min=0, max=1),
        metadata=_help(
            "share of new traces kept (a task whose caller sent a traceparent follows its choice)"
        ),
    )

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> TracingSettings:
        return TracingSettings(**data)


def _asymmetric_algorithm(name: str) -> None:
    if name not in ASYMMETRIC_ALGORITHMS:
        raise ValidationError(
            f"{name!r} is not allowed: only asymmetric algorithms "
            f"({', '.join(ASYMMETRIC_ALGORITHMS)}); none and HS* would let a token be "
            "forged (an HS256 token keyed with the provider's public key)"
        )


def _jwks_url(url: str) -> None:
    """https, or http to a loopback host only: keys fetched in clear text from
    elsewhere could be swapped on the way, and then any token verifies."""
    if not url:
        return
    _URL(url)
    parsed = urlsplit(url)
    if parsed.scheme != "https" and not is_loopback(parsed.hostname or ""):
        raise ValidationError("must be https:// (http:// only to a loopback host)")


def _claim_scopes(table: Mapping[str, Any]) -> None:
    """Each key ``claim=value`` with a claim name; each value a list of scopes."""
    for key, scopes in table.items():
        claim, sep, _ = key.partition("=")
        if not sep or not claim:
            raise ValidationError(f'{key!r}: expected "claim=value", e.g. "groups=sre"')
        bad = [s for s in scopes if not valid_scope(s)]
        if bad:
            raise ValidationError(
                f"{key!r}: not a scope: {', '.join(map(repr, bad))} (tasks:create, "
                "tasks:read, tasks:cancel, events:read, operate:<glob>, admin)"
            )


class JwtSchema(Schema):
    issuer = fields.String(
        required=True,
        validate=validate.Length(min=1),
        metadata=_help("the identity provider's issuer: a token's iss must equal it"),
    )
    audience = fields.String(
        required=True,
        validate=validate.Length(min=1),
        metadata=_help("this daemon's audience: a token's aud must name it"),
    )
    jwks_url = fields.String(
        load_default="",
        validate=_jwks_url,
        metadata=_help("URL of the provider's JWKS (https; or jwks_file)"),
    )
    jwks_file = fields.String(
        load_default="",
        metadata=_help("a JWKS file instead of jwks_url, re-read as jwks_url is refetched"),
    )
    algorithms = fields.List(
        fields.String(validate=_asymmetric_algorithm),
        load_default=list(DEFAULT_JWT_ALGORITHMS),
        validate=validate.Length(min=1),
        metadata=_help("signature algorithms accepted (asymmetric only)"),
    )
    leeway_s = _seconds(
        JwtSettings.leeway_s, "clock skew allowed when checking a token's exp, nbf and iat"
    )
    principal_claim = fields.String(
        load_default=JwtSettings.principal_claim,
        validate=validate.Length(min=1),
        metadata=_help("the claim naming the principal (<issuer>#<value>); a.b reads nested"),
    )
    jwks_refresh_s = _seconds(
        JwtSettings.jwks_refresh_s,
        "least time between two fetches of the JWKS for a token with an unknown kid",
        allow_zero=False,
    )
    jwks_max_age_s = _seconds(
        JwtSettings.jwks_max_age_s,
        "a JWKS older than this is fetched again at the next token (removed keys stop working)",
        allow_zero=False,
    )
    jwks_timeout_s = _seconds(
        JwtSettings.jwks_timeout_s,
        "longest a JWKS fetch may take; past it the request gets 503 jwks_unavailable",
        allow_zero=False,
    )
    claim_scopes = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        load_default=dict,
        validate=_claim_scopes,
        metadata=_help('scopes granted by a claim: {"groups=sre": ["operate:*", "tasks:read"]}'),
    )

    @validates_schema
    def _one_key_source(self, data: dict[str, Any], **_: Any) -> None:
        url, file = data.get("jwks_url"), data.get("jwks_file")
        if bool(url) == bool(file):
            raise ValidationError("set exactly one of jwks_url and jwks_file", "jwks_url")
        if file and not Path(file).is_file():
            raise ValidationError(f"file not found: {file}", "jwks_file")

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> JwtSettings:
        data["algorithms"] = tuple(data["algorithms"])
        data["claim_scopes"] = {k: tuple(v) for k, v in data["claim_scopes"].items()}
        return JwtSettings(**data)


class AuthSchema(Schema):
    jwt = fields.Nested(JwtSchema, load_default=None)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> AuthSettings:
        return AuthSettings(**data)


_EMAIL = validate.Email(error="{input!r} is not an email address")


class NotifyRuleSchema(Schema):
    channel = fields.String(
        required=True,
        validate=validate.OneOf(NOTIFY_CHANNELS),
        metadata=_help("email | chat (a Slack-style incoming webhook) | webhook (signed JSON)"),
    )
    roles = fields.List(
        fields.String(validate=validate.Length(min=1)),
        load_default=lambda: list(NotifyRule.roles),
        validate=validate.Length(min=1),
        metadata=_help("role globs: a request held under a matching role is covered"),
    )
    kinds = fields.List(
        fields.String(validate=validate.OneOf(NOTIFY_KINDS)),
        load_default=lambda: list(NotifyRule.kinds),
        validate=validate.Length(min=1),
        metadata=_help("request kinds covered: ask, hook_before, spawn"),
    )
    batch_s = _seconds(
        NotifyRule.batch_s, "at most one message per recipient in this long (0: one per request)"
    )
    to = fields.List(
        fields.String(validate=_EMAIL),
        load_default=list,
        metadata=_help("email: the recipients' addresses"),
    )
    url = fields.String(
        load_default="",
        validate=lambda v: not v or _URL(v),
        metadata=_help("chat: the incoming-webhook URL; webhook: the receiver's URL"),
    )
    only_unattended = _switch(
        NotifyRule.only_unattended,
        "only requests no connected session holds",
    )
    include_text = _switch(
        NotifyRule.include_text,
        "put the task's directive and the question in the message",
    )

    @validates_schema
    def _target(self, data: dict[str, Any], **_: Any) -> None:
        channel = data.get("channel")
        if channel == "email":
            if not data.get("to"):
                raise ValidationError("an email rule needs `to` (addresses)", "to")
            if data.get("url"):
                raise ValidationError("an email rule takes `to`, not `url`", "url")
        elif channel is not None:
            if not data.get("url"):
                raise ValidationError(f"a {channel} rule needs `url`", "url")
            if data.get("to"):
                raise ValidationError(f"a {channel} rule takes `url`, not `to`", "to")

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> NotifyRule:
        for key in ("roles", "kinds", "to"):
            data[key] = tuple(data[key])
        return NotifyRule(**data)


class SmtpSchema(Schema):
    host = fields.String(
        load_default=SmtpSettings.host,
        metadata=_help("the SMTP server email rules send through (empty: no email rules)"),
    )
    port = fields.Integer(
        load_default=SmtpSettings.port,
        validate=validate.Range(min=1, max=65535),
        metadata=_help("its port (587 STARTTLS, 465 TLS, 25 none)"),
    )
    tls = fields.String(
        load_default=SmtpSettings.tls,
        validate=validate.OneOf(["none", "starttls", "tls"]),
        metadata=_help("none | starttls | tls (implicit TLS from the first byte)"),
    )
    sender = fields.String(
        data_key="from",
        load_default=SmtpSettings.sender,
        validate=lambda v: not v or _EMAIL(v),
        metadata=_help("the From address of notification mail"),
    )
    user_env = fields.String(
        load_default=SmtpSettings.user_env,
        metadata=_help("NAME of the environment variable holding the SMTP user (empty: no login)"),
    )
    password_env = fields.String(
        load_default=SmtpSettings.password_env,
        metadata=_help("NAME of the environment variable holding the SMTP password"),
    )
    ca_file = fields.String(
        load_default=SmtpSettings.ca_file,
        metadata=_help(
            "PEM file of the CAs the server's certificate is checked against (empty: the system's)"
        ),
    )

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> SmtpSettings:
        return SmtpSettings(**data)


def _notify_problems(data: dict[str, Any]) -> list[str]:
    """What is wrong with the ``[[notify]]`` rules given the rest of the
    settings, each naming its rule (``notify[0]``)."""
    problems = []
    smtp: SmtpSettings = data.get("smtp") or SmtpSettings()
    allowed = tuple(_webhook_host_key(h) for h in data.get("webhook_allow_hosts", []))
    # What names a rule's queue (``notify/rules.rule_key``): two rules alike in
    # it would share their notices and one's batch_s or include_text be lost.
    seen: dict[tuple[Any, ...], int] = {}
    for i, rule in enumerate(data.get("notify") or ()):
        where = f"notify[{i}] ({rule.channel})"
        same = (rule.channel, rule.url, tuple(rule.to), tuple(rule.roles), tuple(rule.kinds))
        if (first := seen.setdefault(same, i)) != i:
            problems.append(
                f"{where}: the same channel, target, roles and kinds as notify[{first}]; "
                "merge them into one rule"
            )
        if rule.channel == "email" and not (smtp.host and smtp.sender):
            problems.append(f"{where}: email needs [smtp] host and from")
        if rule.channel == "webhook":
            if not data.get("webhook_secret"):
                problems.append(f"{where}: needs webhook_secret (its bodies are signed)")
            url = urlsplit(rule.url)
            host = (url.hostname or "").lower().rstrip(".")
            port = url.port or (443 if url.scheme == "https" else 80)
            if host not in allowed and webhook_target_key(host, port) not in allowed:
                problems.append(f"{where}: {host}:{port} is not in webhook_allow_hosts")
    for name in (smtp.user_env, smtp.password_env):
        if name and name not in os.environ:
            problems.append(f"smtp: the environment variable {name} is not set")
    if smtp.ca_file and not Path(smtp.ca_file).is_file():
        problems.append(f"smtp.ca_file: file not found: {smtp.ca_file}")
    return problems


def _split_host_port(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare v6 literal, as
    (host, port); ``ValueError`` when it is none of those."""
    entry = entry.strip().lower()
    port_text = ""
    if entry.startswith("["):
        host, sep, rest = entry[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("expected [v6 address] or [v6 address]:port")
        port_text = rest[1:] if rest else ""
        if rest and not port_text:
            raise ValueError("expected a port after ':'")
        ipaddress.IPv6Address(host)
    elif entry.count(":") == 1:
        host, _, port_text = entry.partition(":")
    else:
        host = entry  # a name, an IPv4 address or a bare v6 literal (any port)
    host = host.rstrip(".")
    if not host or any(c in host for c in "/@?# "):
        raise ValueError("expected a host name or address")
    if port_text == "":
        return host, None
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port {port_text!r}")
    return host, int(port_text)


def _webhook_host_entry(entry: str) -> None:
    try:
        _split_host_port(entry)
    except ValueError as exc:
        raise ValidationError(f"{entry!r}: {exc} (host or host:port)") from None


def _webhook_host_key(entry: str) -> str:
    """An allow-list entry as ``webhook_target_key`` spells what it allows."""
    host, port = _split_host_port(entry)
    return host if port is None else webhook_target_key(host, port)


def webhook_target_key(host: str, port: int) -> str:
    """``host:port`` (``[v6]:port``), as allow-list entries with a port are kept."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def webhook_host_allowed(settings: Settings, host: str, port: int) -> bool:
    """Whether ``webhook_allow_hosts`` lets a callback go to ``host`` on ``port``:
    an entry naming the host alone allows every port, ``host:port`` that port."""
    host = host.lower().rstrip(".")
    allowed = settings.webhook_allow_hosts
    return host in allowed or webhook_target_key(host, port) in allowed


class SettingsSchema(Schema):
    host = fields.String(
        load_default=Settings.host,
        validate=validate.Length(min=1),
        metadata=_help("address to listen on; a non-loopback host requires api_token"),
    )
    port = fields.Integer(
        load_default=Settings.port,
        validate=validate.Range(min=0, max=65535),
        metadata=_help("port to listen on"),
    )
    public_url = fields.String(
        load_default=Settings.public_url,
        validate=lambda v: not v or _URL(v),
        metadata=_help(
            "base URL sub-agents use to reach the worker endpoints, as written into spawn "
            "directives (empty: the URL the daemon listens on, http://<host>:<bound port>; "
            "set it behind a proxy or on a wildcard host; in a cluster, this node's own "
            "address: the node writing a directive is the one running the attempt)"
        ),
    )
    secret = fields.String(
        load_default=Settings.secret,
        metadata=_help("HMAC key for capability tokens (empty: random per start)"),
    )
    api_token = fields.String(
        load_default=Settings.api_token,
        metadata=_help(
            "bearer token for the task routes, the operator mint and the admin routes "
            "(empty: open, loopback only)"
        ),
    )
    metrics_token = fields.String(
        load_default=Settings.metrics_token,
        metadata=_help("bearer token GET /metrics requires (empty: /metrics is open)"),
    )
    access_log = _switch(
        Settings.access_log,
        "log one info line per HTTP request (true | false)",
    )
    metrics = _switch(
        Settings.metrics,
        "keep Prometheus metrics and serve GET /metrics (false: it answers 404)",
    )
    events = _switch(
        Settings.events,
        "record task events and serve their streams (false: none stored, the "
        "event routes answer 404)",
    )
    log_level = fields.String(
        load_default="info",
        validate=validate.OneOf(["debug", "info", "warning", "error"]),
        metadata=_help("debug | info | warning | error"),
    )
    log_format = fields.String(
        load_default="auto",
        validate=validate.OneOf(["auto", "json", "console"]),
        metadata=_help("auto (JSON lines unless stdout is a terminal) | json | console"),
    )
    event_loop = fields.String(
        load_default=Settings.event_loop,
        validate=validate.OneOf(["uvloop", "asyncio"]),
        metadata=_help(
            "the daemon's event loop: uvloop (libuv, faster) | asyncio (the standard one)"
        ),
    )
    capability_ttl_s = _seconds(
        Settings.capability_ttl_s,
        "lifetime of a worker capability / handle (seconds)",
        allow_zero=False,
    )
    max_body_bytes = fields.Integer(
        load_default=Settings.max_body_bytes,
        validate=validate.Range(min=1024),
        metadata=_help("largest accepted HTTP request body"),
    )
    max_frame_bytes = fields.Integer(
        load_default=Settings.max_frame_bytes,
        validate=validate.Range(min=1024),
        metadata=_help("largest accepted WebSocket frame (larger: a too_large error frame)"),
    )
    max_wait_s = _seconds(Settings.max_wait_s, "longest ?wait= a task read may long-poll")
    request_read_timeout_s = _seconds(
        Settings.request_read_timeout_s,
        "longest a client may take to send a request's headers, then its body (408 after)",
        allow_zero=False,
    )
    max_json_depth = fields.Integer(
        load_default=Settings.max_json_depth,
        validate=validate.Range(min=2, max=MAX_CONFIG_DEPTH),
        metadata=_help("deepest nesting of arrays/objects in a body or frame"),
    )
    max_roles = fields.Integer(
        load_default=Settings.max_roles,
        validate=validate.Range(min=0, max=10_000),
        metadata=_help("most roles one operator session may claim"),
    )
    max_role_length = fields.Integer(
        load_default=Settings.max_role_length,
        validate=validate.Range(min=1, max=10_000),
        metadata=_help("longest role name, in characters"),
    )
    max_asks_per_attempt = fields.Integer(
        load_default=Settings.max_asks_per_attempt,
        validate=validate.Range(min=1),
        metadata=_help("worker asks one attempt may make (more: 429 attempt_limit)"),
    )
    max_ask_bytes_per_attempt = fields.Integer(
        load_default=Settings.max_ask_bytes_per_attempt,
        validate=validate.Range(min=1024),
        metadata=_help(
            "bytes of questions (and answer forms, as JSON) one attempt's worker asks "
            "may hold (more: 413 attempt_too_large)"
        ),
    )
    max_results_per_attempt = fields.Integer(
        load_default=Settings.max_results_per_attempt,
        validate=validate.Range(min=1),
        metadata=_help("results a worker may post to one attempt (more: 429 attempt_limit)"),
    )
    max_result_bytes_per_attempt = fields.Integer(
        load_default=Settings.max_result_bytes_per_attempt,
        validate=validate.Range(min=1024),
        metadata=_help(
            "bytes of results (as JSON) a worker may post to one attempt "
            "(more: 413 attempt_too_large)"
        ),
    )
    default_layers = fields.List(
        fields.String(validate=validate.OneOf(LAYER_NAMES)),
        load_default=DEFAULT_LAYERS,
        metadata=_help("middleware chain, outermost first (comma-separated or JSON list)"),
    )
    default_max_attempts = fields.Integer(
        load_default=Settings.default_max_attempts,
        validate=validate.Range(min=1, max=100),
        metadata=_help("attempts a task gets unless it says otherwise"),
    )
    reconnect_grace_s = _seconds(
        Settings.reconnect_grace_s,
        "how long a request issued with no socket attached waits for one",
    )
    ask_timeout_s = _seconds(Settings.ask_timeout_s, "reply timeout for ask (0 = forever)")
    hook_timeout_s = _seconds(
        Settings.hook_timeout_s, "reply timeout for hook_before (0 = forever)"
    )
    spawn_timeout_s = _seconds(Settings.spawn_timeout_s, "reply timeout for spawn (0 = forever)")
    ask_on_timeout = _on_timeout("ask", Settings.ask_on_timeout)
    hook_on_timeout = _on_timeout("hook_before", Settings.hook_on_timeout)
    spawn_on_timeout = _on_timeout("spawn", Settings.spawn_on_timeout)
    remind_at_fraction = fields.Float(
        load_default=Settings.remind_at_fraction,
        allow_nan=False,
        validate=validate.Range(min=0, max=1, max_inclusive=False),
        metadata=_help(
            "raise request_due_soon when a request is unanswered at this fraction of its "
            "deadline (0 = never)"
        ),
    )
    heartbeat_s = _seconds(
        Settings.heartbeat_s, "server ping interval; a silent peer is detached (0 = off)"
    )
    link_max_age_s = _seconds(
        Settings.link_max_age_s,
        "longest an action link in a notification stays valid (it ends sooner with its "
        "request's deadline)",
        allow_zero=False,
    )
    session_idle_ttl_s = _seconds(
        Settings.session_idle_ttl_s,
        "sessions with no socket this long are torn down (0 = never)",
    )
    sweep_interval_s = _seconds(
        Settings.sweep_interval_s, "how often the periodic sweep runs", allow_zero=False
    )
    audit_retention_days = fields.Float(
        load_default=Settings.audit_retention_days,
        allow_nan=False,
        validate=_NON_NEGATIVE,
        metadata=_help(
            "audit rows older than this are pruned, oldest first, never the newest (0 = keep all)"
        ),
    )
    outbound_queue_max = fields.Integer(
        load_default=Settings.outbound_queue_max,
        validate=validate.Range(min=1),
        metadata=_help("frames queued for one socket that disconnect the peer"),
    )
    write_timeout_s = _seconds(
        Settings.write_timeout_s,
        "a write blocked this long means the peer stopped reading: disconnect (0 = never)",
    )
    allowed_origins = fields.List(
        fields.String(),
        load_default=list,
        metadata=_help("browser Origins allowed to open the socket; others get 403"),
    )
    directive_template = fields.String(
        load_default=Settings.directive_template,
        metadata=_help("spawn directive template file (empty: the shipped one)"),
    )
    shutdown_timeout_s = _seconds(
        Settings.shutdown_timeout_s, "how long shutdown waits for in-flight work to end"
    )
    node_id = fields.String(
        load_default=Settings.node_id,
        validate=validate.Regexp(
            r"^[A-Za-z0-9._:-]{0,200}$", error="letters, digits and ._:- only"
        ),
        metadata=_help("this daemon's name in logs, healthz and metrics (empty: hostname-pid)"),
    )
    event_keepalive_s = _seconds(
        Settings.event_keepalive_s,
        "an event stream with nothing to send gets a keepalive comment this often",
        allow_zero=False,
    )
    webhook_secret = fields.String(
        load_default=Settings.webhook_secret,
        metadata=_help(
            "HMAC-SHA256 key signing webhook bodies (empty: tasks may not set callback_url)"
        ),
    )
    webhook_allow_hosts = fields.List(
        fields.String(validate=_webhook_host_entry),
        load_default=list,
        metadata=_help(
            "hosts a task's callback_url may name: host (any port) or host:port (empty: none)"
        ),
    )
    webhook_allow_private = _switch(
        Settings.webhook_allow_private,
        "deliver to allow-listed host names that resolve to loopback, link-local or "
        "private addresses (false: only an allow-listed IP literal may be one)",
    )
    webhook_max_attempts = fields.Integer(
        load_default=Settings.webhook_max_attempts,
        validate=validate.Range(min=1, max=100),
        metadata=_help("tries per webhook delivery before it is given up"),
    )
    webhook_backoff_s = _seconds(
        Settings.webhook_backoff_s,
        "wait before the first webhook retry; doubles each retry, with jitter",
        allow_zero=False,
    )
    webhook_backoff_max_s = _seconds(
        Settings.webhook_backoff_max_s, "longest wait between webhook retries", allow_zero=False
    )
    webhook_timeout_s = _seconds(
        Settings.webhook_timeout_s,
        "a webhook receiver that has not answered in this long counts as failed",
        allow_zero=False,
    )
    store = fields.Nested(StoreSchema, load_default=lambda: StoreSchema().load({}))
    cluster = fields.Nested(ClusterSchema, load_default=lambda: ClusterSchema().load({}))
    auth = fields.Nested(AuthSchema, load_default=lambda: AuthSchema().load({}))
    notify = fields.List(
        fields.Nested(NotifyRuleSchema),
        load_default=list,
        metadata=_help("notification rules ([[notify]] tables; README: Notifications)"),
    )
    smtp = fields.Nested(SmtpSchema, load_default=lambda: SmtpSchema().load({}))
    tracing = fields.Nested(TracingSchema, load_default=lambda: TracingSchema().load({}))

    @validates_schema
    def _checks(self, data: dict[str, Any], **_: Any) -> None:
        layers = data.get("default_layers", [])
        if len(set(layers)) != len(layers):
            raise ValidationError("a layer may appear only once", "default_layers")
        if not data.get("api_token") and not is_loopback(data.get("host", "")):
            raise ValidationError(
                f"required when host {data.get('host')!r} is not a loopback address "
                "(anyone on the network could drive the task API)",
                "api_token",
            )
        store = data.get("store")
        if store is not None and store.url and not data.get("secret"):
            # A random secret per process: a worker credential minted on one node
            # would not verify on another, behind a load balancer.
            raise ValidationError(
                "required with store.url (cluster mode): the same value on every node",
                "secret",
            )
        template = data.get("directive_template")
        if template and not Path(template).is_file():
            raise ValidationError(f"file not found: {template}", "directive_template")
        problems = _notify_problems(data)
        if problems:
            raise ValidationError("; ".join(problems), "notify")

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> Settings:
        data["default_layers"] = tuple(data["default_layers"])
        data["allowed_origins"] = tuple(data["allowed_origins"])
        data["node_id"] = data["node_id"] or default_node_id()
        data["webhook_allow_hosts"] = tuple(
            _webhook_host_key(h) for h in data["webhook_allow_hosts"]
        )
        data["notify"] = tuple(data["notify"])
        return Settings(**data)


def default_node_id() -> str:
    """``hostname-pid``: unique among the nodes of a cluster, and says where to look."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _is_postgres_url(value: str) -> bool:
    # Says which scheme, never the value: it may hold a password.
    if not value.startswith(("postgresql://", "postgres://")):
        raise ValidationError("must start with postgresql:// (or be empty for store.path)")
    return True


def listen_url(host: str, port: int) -> str:
    """``http://host:port`` for a listening address, an IPv6 literal in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def setting_keys(schema: Schema | None = None, prefix: str = "") -> list[tuple[str, fields.Field]]:
    """Every settable key as a dotted name with its field, in declaration order
    (``auth.jwt.issuer``: tables nest to any depth)."""
    keys: list[tuple[str, fields.Field]] = []
    for name, fld in (schema or SettingsSchema()).fields.items():
        if isinstance(fld, fields.Nested):
            keys.extend(setting_keys(fld.schema, f"{prefix}{fld.data_key or name}."))
        else:
            keys.append((f"{prefix}{fld.data_key or name}", fld))
    return keys


def env_name(key: str) -> str:
    return ENV_PREFIX + key.replace(".", "_").upper()


def flag_name(key: str) -> str:
    return "--" + key.replace(".", "-").replace("_", "-")


def _coerce_text(fld: fields.Field, raw: str) -> Any:
    """Env vars and flags are strings; lists take JSON or comma-separated text,
    tables (``auth.jwt.claim_scopes``) JSON."""
    if isinstance(fld, fields.Dict):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw  # let the schema report the bad value
    if isinstance(fld, fields.List):
        text = raw.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return raw  # let the schema report the bad value
        return [part.strip() for part in text.split(",") if part.strip()]
    return raw


def _put(tree: dict[str, Any], dotted: str, value: Any) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        tree.setdefault(head, {})
        if isinstance(tree[head], dict):
            _put(tree[head], rest, value)
    else:
        tree[head] = value


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config: file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path} is not valid TOML: {exc}") from exc


def load_settings(
    *,
    file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge the sources (later wins) and validate the result.

    ``flags`` maps dotted keys to the raw text given on the command line;
    ``overrides`` (for tests) maps dotted keys to already-typed values.
    """
    env = os.environ if env is None else env
    known = dict(setting_keys())
    tree: dict[str, Any] = read_file(file) if file else {}

    from_env: dict[str, Any] = {}
    known_env = {env_name(key): key for key in known}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name in CLIENT_ENV:
            continue
        key = known_env.get(name)
        if key is None:
            raise ConfigError(f"{name}: unknown setting (no key matches this variable)")
        _put(from_env, key, _coerce_text(known[key], raw))
    tree = _merge(tree, from_env)

    from_flags: dict[str, Any] = {}
    for key, raw in (flags or {}).items():
        _put(from_flags, key, _coerce_text(known[key], raw))
    tree = _merge(tree, from_flags)

    typed: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ConfigError(f"{key}: unknown setting")
        _put(
            typed,
            key,
            list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value,
        )
    tree = _merge(tree, typed)

    try:
        settings: Settings = SettingsSchema().load(tree)
    except ValidationError as exc:
        raise ConfigError("; ".join(describe_validation(exc.messages))) from exc
    return settings
