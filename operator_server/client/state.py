"""Where a client keeps its operator session between runs.

A ready-made operator (terminal or MCP bridge) that is killed and started again
must get its own session back — same sid, same token — or its roles stay held
by a ghost until ``session_idle_ttl_s``.  The session is kept in a small JSON
file, written atomically with mode 0600 (it holds a bearer token), by default
under ``$XDG_STATE_HOME/operator-server/`` (``~/.local/state`` when unset).
A kept ``sid`` of ``""`` is a mint started with the kept (client-chosen) token
whose answer was never kept: the session it made, if any, is the one that
token opens.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SessionState:
    url: str
    sid: str
    token: str
    roles: list[str] = field(default_factory=list)


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "operator-server"


def default_state_file(kind: str, url: str, roles: list[str] | tuple[str, ...]) -> Path:
    """One file per (client kind, server, roles): two operators with different
    roles on one machine never share a session."""
    label = "-".join(sorted(roles)) or "noroles"
    server = re.sub(r"[^A-Za-z0-9.]+", "_", url.split("://", 1)[-1]).strip("_")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{kind}-{server}-{label}")
    return state_dir() / f"{name}.json"


def load_state(path: Path) -> SessionState | None:
    """The kept session, or None when there is none (or it is unreadable)."""
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
        return SessionState(
            url=str(data["url"]),
            sid=str(data["sid"]),
            token=str(data["token"]),
            roles=[str(r) for r in data.get("roles", [])],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_state(path: Path, state: SessionState) -> None:
    """Write atomically, mode 0600 from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(asdict(state), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def forget_state(path: Path) -> None:
    path.unlink(missing_ok=True)
