"""Where a client keeps its operator session between runs.

A ready-made operator (terminal or MCP bridge) that is killed and started again
must get its own session back — same sid, same token — or its roles stay held
by a ghost until ``session_idle_ttl_s``.  The session is kept in a small JSON
file, written atomically with mode 0600 (it holds a bearer token), by default
under ``$XDG_STATE_HOME/operator-server/`` (``~/.local/state`` when unset).
A kept ``sid`` of ``""`` is a mint started with the kept (client-chosen) token
whose answer was never kept: the session it made, if any, is the one that
token opens.

One process per state file: ``claim_state_file`` takes an exclusive ``flock``
on a sidecar ``<file>.lock`` holding the owner's PID, for the process's life
(the kernel drops it when the process dies).  Two operators sharing a file
would resume one session and replace each other's socket without end.
"""

from __future__ import annotations

import errno
import fcntl
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


class StateFileInUse(Exception):
    """Another live process keeps its session in this state file."""


def claim_state_file(path: Path) -> int:
    """Lock ``path`` for this process (held until the returned descriptor is
    closed, or the process ends), or raise ``StateFileInUse`` naming the holder."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StateFileInUse(
                f"{path} is in use by another operator (pid {holder or 'unknown'}): one seat "
                "per state file; stop that one, or pass --state-file PATH to run a second"
            ) from None
        raise
    # Only the holder writes: the PID is what a second process reports.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
