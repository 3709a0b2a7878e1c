"""Every client test keeps operator state files in its own temporary directory,
never in the real ``~/.local/state`` (subprocesses inherit the variable)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "state-home"
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    monkeypatch.delenv("OPERATOR_SERVER_URL", raising=False)
    # Clients read their credential from these: none leaks in from the shell.
    monkeypatch.delenv("OPERATOR_SERVER_API_KEY", raising=False)
    monkeypatch.delenv("OPERATOR_SERVER_API_TOKEN", raising=False)
    return home
