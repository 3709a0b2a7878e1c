"""Configuration: sources, precedence, and start-up refusals that name the key."""

from __future__ import annotations

import importlib.resources
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from operator_server.app import load_directive
from operator_server.cli import main
from operator_server.config import ConfigError, load_settings

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_the_shipped_config_file_loads_and_matches_the_defaults() -> None:
    shipped = load_settings(file=REPO / "config" / "operator-server.toml", env={})
    # Only store.path differs: ``make run`` keeps its database in the checkout.
    assert shipped.store.path == "data/operator-server.sqlite"
    defaults = load_settings(env={"OPERATOR_SERVER_STORE_PATH": shipped.store.path})
    assert shipped == defaults
    assert shipped.port == 7786 and shipped.host == "127.0.0.1"


def test_the_default_store_is_under_xdg_data_home_whatever_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    monkeypatch.chdir(tmp_path)
    expected = str(tmp_path / "share" / "operator-server" / "operator-server.sqlite")
    assert load_settings(env={}).store.path == expected
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = tmp_path / "home" / ".local" / "share" / "operator-server" / "operator-server.sqlite"
    assert load_settings(env={}).store.path == str(home)


def test_the_spawn_directive_ships_inside_the_package() -> None:
    """An installed wheel has no config/ directory: the default template must be
    package data, not a file next to the checkout."""
    shipped = importlib.resources.files("operator_server.operators") / "spawn-directive.txt"
    assert shipped.is_file()
    assert load_directive(load_settings(env={})).text == shipped.read_text(encoding="utf-8")
    assert not (REPO / "config" / "spawn-directive.txt").exists()


def test_flag_beats_env_beats_file(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 1111\nask_timeout_s = 5\n[store]\npath = 'a.db'\n")
    env = {"OPERATOR_SERVER_PORT": "2222", "OPERATOR_SERVER_STORE_PATH": "b.db"}
    settings = load_settings(file=path, env=env, flags={"port": "3333"})
    assert settings.port == 3333
    assert settings.ask_timeout_s == 5
    assert settings.store.path == "b.db"
    assert load_settings(file=path, env=env).port == 2222
    assert load_settings(file=path, env={}).port == 1111


def test_list_values_from_env_take_commas_or_json() -> None:
    env = {"OPERATOR_SERVER_DEFAULT_LAYERS": "main_ai, operator_delegate"}
    assert load_settings(env=env).default_layers == ("main_ai", "operator_delegate")
    env = {"OPERATOR_SERVER_ALLOWED_ORIGINS": '["https://a.example"]'}
    assert load_settings(env=env).allowed_origins == ("https://a.example",)


@pytest.mark.parametrize(
    ("text", "env", "key"),
    [
        ("colour = 'red'\n", {}, "colour"),
        ("[store]\nflavour = 1\n", {}, "store.flavour"),
        ("port = 'abc'\n", {}, "port"),
        ("port = 70000\n", {}, "port"),
        ("", {"OPERATOR_SERVER_ASK_TIMEOUT_S": "-1"}, "ask_timeout_s"),
        ("", {"OPERATOR_SERVER_COLOUR": "red"}, "OPERATOR_SERVER_COLOUR"),
        ("default_layers = ['main_ai', 'bogus']\n", {}, "default_layers"),
        ("log_level = 'loud'\n", {}, "log_level"),
        ("public_url = 'not a url'\n", {}, "public_url"),
        ("host = '0.0.0.0'\n", {}, "api_token"),
        ("directive_template = '/no/such/file'\n", {}, "directive_template"),
        ("port = \n", {}, "not valid TOML"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(
    tmp_path: Path, text: str, env: dict[str, str], key: str
) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(file=write(tmp_path, text), env=env)


def test_a_public_host_is_allowed_with_an_api_token() -> None:
    settings = load_settings(env={}, flags={"host": "0.0.0.0", "api_token": "t"})
    assert settings.host == "0.0.0.0"


def test_cli_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--config", str(write(tmp_path, "colour = 1\n"))]) == 2
    assert "colour" in capsys.readouterr().err
    assert main(["--port", "nope"]) == 2
    assert "port" in capsys.readouterr().err


def test_cli_refuses_a_directive_template_with_unknown_placeholders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "t.txt"
    template.write_text("call {base_url} with {password}")
    assert main(["--directive-template", str(template)]) == 2
    err = capsys.readouterr().err
    assert "directive_template" in err and "password" in err


def test_the_daemon_process_exits_2_on_a_bad_key(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "operator_server", "--config", str(write(tmp_path, "bogus = 1\n"))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "bogus" in proc.stderr


def test_store_url_takes_postgresql_and_a_bad_one_is_named_without_its_password() -> None:
    env = {
        "OPERATOR_SERVER_STORE_URL": "postgresql://u:pw@db:5432/ops",
        "OPERATOR_SERVER_SECRET": "s",
    }
    assert load_settings(env=env).store.url == "postgresql://u:pw@db:5432/ops"
    with pytest.raises(ConfigError, match=r"store\.url") as caught:
        load_settings(env={"OPERATOR_SERVER_STORE_URL": "mysql://u:hunter2@db/ops"})
    assert "hunter2" not in str(caught.value)


def test_cluster_mode_needs_a_secret_every_node_shares() -> None:
    # A random one per process would refuse every other node's worker credentials.
    with pytest.raises(ConfigError, match=r"secret: required with store\.url"):
        load_settings(env={"OPERATOR_SERVER_STORE_URL": "postgresql://u:pw@db:5432/ops"})


def test_node_id_defaults_to_hostname_pid_and_takes_only_safe_characters() -> None:
    assert load_settings(env={}).node_id == f"{socket.gethostname()}-{os.getpid()}"
    assert load_settings(flags={"node_id": "node-a"}, env={}).node_id == "node-a"
    with pytest.raises(ConfigError, match="node_id"):
        load_settings(env={"OPERATOR_SERVER_NODE_ID": 'a"b'})


def test_settings_and_its_schema_name_the_same_keys_with_the_same_defaults() -> None:
    import dataclasses

    from operator_server.config import (
        AuthSchema,
        AuthSettings,
        ClusterSchema,
        ClusterSettings,
        JwtSchema,
        JwtSettings,
        NotifyRule,
        NotifyRuleSchema,
        Settings,
        SettingsSchema,
        SmtpSchema,
        SmtpSettings,
        StoreSchema,
        StoreSettings,
    )

    for cls, schema in (
        (Settings, SettingsSchema),
        (StoreSettings, StoreSchema),
        (ClusterSettings, ClusterSchema),
        (AuthSettings, AuthSchema),
        (JwtSettings, JwtSchema),
        (SmtpSettings, SmtpSchema),
        (NotifyRule, NotifyRuleSchema),
    ):
        assert set(schema().fields) == {f.name for f in dataclasses.fields(cls)}, cls
    # Nothing given: every default is the dataclass's (the node id is made up at load).
    loaded = SettingsSchema().load({})
    assert dataclasses.replace(loaded, node_id="") == Settings()


JWT = "[auth.jwt]\nissuer = 'https://idp.example.com'\naudience = 'ops'\n"
JWKS_URL = "jwks_url = 'https://idp.example.com/jwks'\n"


def test_auth_jwt_is_off_unless_its_table_is_there_and_then_takes_its_defaults(
    tmp_path: Path,
) -> None:
    assert load_settings(env={}).auth.jwt is None
    jwt = load_settings(file=write(tmp_path, JWT + JWKS_URL), env={}).auth.jwt
    assert jwt is not None
    assert (jwt.issuer, jwt.audience, jwt.jwks_url) == (
        "https://idp.example.com",
        "ops",
        "https://idp.example.com/jwks",
    )
    assert jwt.algorithms == ("RS256", "ES256", "EdDSA")
    assert (jwt.leeway_s, jwt.principal_claim, jwt.jwks_refresh_s) == (30, "sub", 30)
    assert jwt.claim_scopes == {}
    mapped = write(
        tmp_path,
        JWT + JWKS_URL + "[auth.jwt.claim_scopes]\n'groups=sre' = ['operate:*', 'tasks:read']\n",
    )
    jwt = load_settings(file=mapped, env={}).auth.jwt
    assert jwt is not None and jwt.claim_scopes == {"groups=sre": ("operate:*", "tasks:read")}


def test_auth_jwt_keys_come_from_the_environment_and_flags_too() -> None:
    env = {
        "OPERATOR_SERVER_AUTH_JWT_ISSUER": "https://idp.example.com",
        "OPERATOR_SERVER_AUTH_JWT_AUDIENCE": "ops",
        "OPERATOR_SERVER_AUTH_JWT_JWKS_URL": "http://127.0.0.1:8080/jwks",
        "OPERATOR_SERVER_AUTH_JWT_ALGORITHMS": "ES256, EdDSA",
        "OPERATOR_SERVER_AUTH_JWT_CLAIM_SCOPES": '{"role=admin": ["admin"]}',
    }
    jwt = load_settings(env=env, flags={"auth.jwt.leeway_s": "5"}).auth.jwt
    assert jwt is not None
    assert jwt.algorithms == ("ES256", "EdDSA")
    assert jwt.claim_scopes == {"role=admin": ("admin",)}
    assert jwt.leeway_s == 5


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[auth.jwt]\naudience = 'ops'\n" + JWKS_URL, r"auth\.jwt\.issuer: Missing data"),
        ("[auth.jwt]\nissuer = 'i'\n" + JWKS_URL, r"auth\.jwt\.audience: Missing data"),
        ("[auth.jwt]\nissuer = ''\naudience = 'ops'\n" + JWKS_URL, r"auth\.jwt\.issuer: Shorter"),
        (JWT, r"auth\.jwt\.jwks_url: set exactly one of jwks_url and jwks_file"),
        (
            JWT + JWKS_URL + "jwks_file = 'jwks.json'\n",
            r"auth\.jwt\.jwks_url: set exactly one of jwks_url and jwks_file",
        ),
        (JWT + "jwks_url = 'not a url'\n", r"auth\.jwt\.jwks_url: Not a valid URL"),
        (
            JWT + "jwks_url = 'http://idp.example.com/jwks'\n",
            r"auth\.jwt\.jwks_url: must be https:// \(http:// only to a loopback host\)",
        ),
        (JWT + "jwks_file = '/no/such/jwks.json'\n", r"auth\.jwt\.jwks_file: file not found"),
        (JWT + JWKS_URL + "algorithms = ['none']\n", r"auth\.jwt\.algorithms\.0: 'none' is not"),
        (
            JWT + JWKS_URL + "algorithms = ['RS256', 'HS256']\n",
            r"auth\.jwt\.algorithms\.1: 'HS256' is not allowed: only asymmetric",
        ),
        (JWT + JWKS_URL + "algorithms = []\n", r"auth\.jwt\.algorithms: Shorter than"),
        (JWT + JWKS_URL + "leeway_s = -1\n", r"auth\.jwt\.leeway_s"),
        (JWT + JWKS_URL + "principal_claim = ''\n", r"auth\.jwt\.principal_claim"),
        (JWT + JWKS_URL + "jwks_refresh_s = 0\n", r"auth\.jwt\.jwks_refresh_s"),
        (JWT + JWKS_URL + "jwks_max_age_s = 0\n", r"auth\.jwt\.jwks_max_age_s"),
        (JWT + JWKS_URL + "jwks_timeout_s = 'soon'\n", r"auth\.jwt\.jwks_timeout_s"),
        (JWT + JWKS_URL + "colour = 'red'\n", r"auth\.jwt\.colour: Unknown field"),
        ("[auth]\ncolour = 'red'\n", r"auth\.colour: Unknown field"),
        (
            JWT + JWKS_URL + "[auth.jwt.claim_scopes]\n'groups' = ['admin']\n",
            r"auth\.jwt\.claim_scopes: 'groups': expected \"claim=value\"",
        ),
        (
            JWT + JWKS_URL + "[auth.jwt.claim_scopes]\n'=sre' = ['admin']\n",
            r"auth\.jwt\.claim_scopes: '=sre': expected \"claim=value\"",
        ),
        (
            JWT
            + JWKS_URL
            + "[auth.jwt.claim_scopes]\n'groups=sre' = ['admin', 'sudo', 'operate:']\n",
            r"auth\.jwt\.claim_scopes: 'groups=sre': not a scope: 'sudo', 'operate:'",
        ),
        (
            JWT + JWKS_URL + "[auth.jwt.claim_scopes]\n'groups=sre' = 'admin'\n",
            r"auth\.jwt\.claim_scopes\.groups=sre\.value: Not a valid list",
        ),
    ],
)
def test_bad_auth_jwt_settings_are_refused_naming_the_key(
    tmp_path: Path, text: str, says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        load_settings(file=write(tmp_path, text), env={})


def test_the_shipped_auth_jwt_example_loads_once_uncommented(tmp_path: Path) -> None:
    shipped = (REPO / "config" / "operator-server.toml").read_text()
    example = shipped[shipped.index("# [auth.jwt]\n") :].splitlines()
    lines = [line.removeprefix("# ") for line in example if not line.startswith("# jwks_file")]
    jwt = load_settings(file=write(tmp_path, "\n".join(lines)), env={}).auth.jwt
    assert jwt is not None and jwt.issuer.startswith("https://")
    assert jwt.claim_scopes["groups=sre"] == ("operate:*", "tasks:read")


def test_the_daemon_process_exits_2_on_a_jwks_file_that_holds_no_keys(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    text = f"port = 0\n[store]\npath = ':memory:'\n{JWT}jwks_file = '{jwks}'\n"
    proc = subprocess.run(
        [sys.executable, "-m", "operator_server", "--config", str(write(tmp_path, text))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"auth.jwt.jwks_file: {jwks}: the JWKS holds no signing key" in proc.stderr


def test_the_clients_credential_in_the_environment_is_no_setting_of_the_daemon() -> None:
    """One shell runs the daemon and its clients: their variables pass by."""
    env = {"OPERATOR_SERVER_API_KEY": "osk_x", "OPERATOR_SERVER_URL": "http://h:1"}
    assert load_settings(env=env).api_token == ""
    with pytest.raises(ConfigError, match="OPERATOR_SERVER_API_KEYS"):
        load_settings(env={"OPERATOR_SERVER_API_KEYS": "x"})  # a typo is still refused


def test_the_shipped_store_comment_says_what_a_cluster_does_and_nothing_it_no_longer_lacks() -> (
    None
):
    """Issue 22: the comment said cross-node frames and ?wait= did not work yet,
    long after the cluster tests showed both working."""
    shipped = (REPO / "config" / "operator-server.toml").read_text()
    store = shipped[shipped.index("\n[store]\n") : shipped.index("\n[cluster]\n")]
    said = " ".join(line.lstrip("# ") for line in store.splitlines())
    assert "not yet" not in said.lower()
    assert "relayed there" in said and "?wait= and event streams see every node" in said


NOTIFY_EMAIL = "[[notify]]\nchannel = 'email'\nto = ['ops@example.com']\n"
SMTP = "[smtp]\nhost = 'mail.example.com'\nfrom = 'server@example.com'\n"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (NOTIFY_EMAIL, "notify[0] (email): email needs [smtp] host and from"),
        ("[[notify]]\nchannel = 'pigeon'\nurl = 'http://x'\n", "notify.0.channel"),
        ("[[notify]]\nchannel = 'email'\nto = ['nobody']\n" + SMTP, "'nobody' is not an email"),
        ("[[notify]]\nchannel = 'chat'\n", "a chat rule needs `url`"),
        ("[[notify]]\nchannel = 'chat'\nurl = 'http://c'\nkinds = ['hook_after']\n", "kinds"),
        (
            "webhook_secret = 's'\n[[notify]]\nchannel = 'webhook'\nurl = 'https://h.example/x'\n",
            "notify[0] (webhook): h.example:443 is not in webhook_allow_hosts",
        ),
        (
            "[[notify]]\nchannel = 'webhook'\nurl = 'https://h.example/x'\n",
            "needs webhook_secret",
        ),
        (
            NOTIFY_EMAIL + NOTIFY_EMAIL + "batch_s = 5\n" + SMTP,
            "notify[1] (email): the same channel, target, roles and kinds as notify[0]",
        ),
        (SMTP + "tls = 'ssl'\n", "smtp.tls"),
        (SMTP + "password_env = 'NO_SUCH_VARIABLE_HERE'\n", "NO_SUCH_VARIABLE_HERE is not set"),
    ],
)
def test_a_bad_notify_rule_or_smtp_table_stops_start_up_naming_it(
    tmp_path: Path, text: str, named: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_settings(file=write(tmp_path, text), env={})


def test_notify_rules_load_from_the_file_with_their_defaults(tmp_path: Path) -> None:
    settings = load_settings(
        file=write(
            tmp_path,
            "webhook_secret = 's'\nwebhook_allow_hosts = ['hooks.example.com']\n"
            + NOTIFY_EMAIL
            + "[[notify]]\nchannel = 'webhook'\nurl = 'https://hooks.example.com/n'\n"
            "roles = ['rev*']\nkinds = ['ask']\nbatch_s = 0\ninclude_text = false\n" + SMTP,
        ),
        env={},
    )
    email, hook = settings.notify
    assert email.to == ("ops@example.com",) and email.roles == ("*",) and email.batch_s == 60
    assert hook.roles == ("rev*",) and hook.kinds == ("ask",) and not hook.include_text
    assert settings.smtp.sender == "server@example.com" and settings.smtp.tls == "starttls"


def test_the_readmes_notifications_example_loads_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's "Notifications" section: one complete email and chat
    configuration that loads, its action links a subsection of it, and the
    delivery promise (at least once, an idempotency key) stated there."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("\n## Notifications\n") :]
    section = section[: section.index("\n## ", 1)]
    example = section[section.index("```toml\n") + len("```toml\n") :]
    example = example[: example.index("```")]
    monkeypatch.setenv("SMTP_USER", "mailer")
    monkeypatch.setenv("SMTP_PASSWORD", "secret")
    settings = load_settings(file=write(tmp_path, example), env={})
    email, chat = settings.notify
    assert (email.channel, email.to) == ("email", ("alice@example.com", "bob@example.com"))
    assert email.only_unattended and email.kinds == ("hook_before", "ask")
    assert (chat.channel, chat.url) == ("chat", "https://hooks.slack.com/services/T000/B000/XXXX")
    assert settings.smtp.tls == "starttls" and settings.smtp.user_env == "SMTP_USER"
    assert "\n### Action links\n" in section
    said = " ".join(section.split())
    assert "Delivery: at least once" in said and "idempotency key" in said
