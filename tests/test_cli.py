"""``operator-server serve --help`` and ``--version``: read from the one schema."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from operator_server import __version__
from operator_server.cli import build_parser, main
from operator_server.config import flag_name, setting_keys


def test_every_setting_declares_what_it_means() -> None:
    assert [key for key, fld in setting_keys() if not fld.metadata.get("help")] == []


def test_serve_help_shows_each_flag_with_its_meaning_and_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's wrapping
    for key, fld in setting_keys():
        assert flag_name(key) in text
        assert " ".join(fld.metadata["help"].split()) in text, key
    assert '(default "127.0.0.1")' in text and "(default 7786)" in text
    assert "(default false)" in text  # access_log
    assert '(default ["main_ai", "senior_escalation", "operator_delegate"])' in text
    # A key of an optional table has no default of its own: the table needs it.
    assert "a token's iss must equal it (required with its table)" in text  # auth.jwt.issuer


@pytest.mark.parametrize("argv", [["serve", "--version"], ["--version"]])
def test_version_is_printed(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"operator-server {__version__}"


# What starting a command costs is what it imports: ``--help`` and ``task`` load
# neither the daemon (aiohttp.web, the engine, the store), nor the schemas
# (marshmallow), nor the socket frames.  Checked in a fresh interpreter, since
# this one has imported everything already.
HEAVY = (
    "aiohttp.web",
    "marshmallow",
    "structlog",
    "uvloop",
    "asyncpg",
    "mcp",
    "operator_server.config",
    "operator_server.engine",
    "operator_server.store",
    "operator_server.wire.frames",
    "operator_server.client.operator",
    "opentelemetry",
)


def modules_loaded_by(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


@pytest.mark.parametrize(
    "code",
    [
        "import operator_server.cli",
        "import operator_server.cli as c; c.build_parser(serve_settings=False)",
        "import operator_server.client.task_command",
    ],
    ids=["cli", "parser", "task"],
)
def test_the_command_line_and_task_load_nothing_of_the_daemon(code: str) -> None:
    loaded = modules_loaded_by(code)
    heavy = sorted(m for m in loaded if m.startswith(HEAVY))
    assert heavy == [], heavy


# -- the README's command-line reference and --help agree ----------------------

README = Path(__file__).resolve().parent.parent / "README.md"


def flags_of_every_command() -> dict[str, set[str]]:
    """``"task create" -> {"--agent", ...}`` for every command, from the parser
    itself (``-h/--help`` left out: every command has it)."""
    found: dict[str, set[str]] = {}

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        found[path] = set()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}".strip())
            elif not isinstance(action, argparse._HelpAction):
                found[path].update(o for o in action.option_strings if o.startswith("--"))

    walk(build_parser(), "")
    for verbs_only in ("task", "keys", "audit"):  # only verbs: no option of its own
        assert found.pop(verbs_only) == set()
    settings = {flag_name(key) for key, _ in setting_keys()}
    assert settings <= found["serve"]
    found["serve"] = (found["serve"] - settings) | {"--<key>"}  # one README row for them
    return found


def flags_in_the_readme() -> dict[str, set[str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("### Command-line reference", 1)[1].split("\n#", 1)[0]
    found: dict[str, set[str]] = {}
    command = None
    for line in section.splitlines():
        heading = re.match(r"^`operator-server((?: [a-z]+)*)(?: [A-Z]+)?`", line)
        if heading:
            command = heading[1].strip()
            found[command] = set()
        elif line.startswith("| `") and command is not None:
            cell = line.split(" | ")[0]
            found[command].update(re.findall(r"`(--[a-z<>-]+)", cell))
    return found


def test_the_readme_reference_lists_every_flag_of_every_command_and_no_other() -> None:
    assert flags_in_the_readme() == flags_of_every_command()


def test_every_option_of_every_command_says_what_it_is_for() -> None:
    """``--help`` explains each option, and a repeatable one names its value
    in the singular (given once per value: ``--role ROLE``, not ``ROLES``)."""
    unexplained = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}".strip())
            elif action.option_strings and not isinstance(action, argparse._HelpAction):
                flag = f"{path} {action.option_strings[-1]}"
                if not (action.help or "").strip():
                    unexplained.append(f"{flag}: no help")
                metavar = action.metavar or action.dest.upper()
                if isinstance(action, argparse._AppendAction) and str(metavar).endswith("S"):
                    unexplained.append(f"{flag}: plural metavar {metavar}")

    walk(build_parser(), "")
    assert unexplained == []


def test_public_url_is_described_alike_in_help_readme_and_config_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    said = "the URL the daemon listens on"
    assert f"(empty: {said}" in help_text
    config = (README.parent / "config" / "operator-server.toml").read_text(encoding="utf-8")
    assert f"Empty: {said}" in " ".join(config.split())
    readme = " ".join(README.read_text(encoding="utf-8").split())
    assert f"directives name {said}" in readme
