"""``operator-server serve --help`` and ``--version``: read from the one schema."""

from __future__ import annotations

import pytest

from operator_server import __version__
from operator_server.cli import main
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
