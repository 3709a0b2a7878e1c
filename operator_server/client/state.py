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
on a sidecar ``<file>.lock`` holding the owner's PID, until ``release`` (which
removes the file) or the process dies (the kernel drops the lock; the file
stays and is reused).  Two operators sharing a file would resume one session
and replace each other's socket without end.
"""

from __future__ import annotations

import asyncio
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

    def __init__(self, path: Path, pid: int | None) -> None:
        # Not "pass --state-file to run a second": a role is held by one session,
        # so a second operator for it would only meet roles_conflict.
        super().__init__(
            f"{path} is in use by another operator (pid {pid or 'unknown'}): one seat per "
            f"state file, and a role is held by one session; stop pid {pid or 'unknown'} "
            "first, or use another --role"
        )
        self.path = path
        self.pid = pid


class StateFileLock:
    """This process's hold on a state file, from ``claim_state_file``."""

    def __init__(self, lock_path: Path, fd: int) -> None:
        self.lock_path = lock_path
        self._fd: int | None = fd

    def release(self) -> None:
        """Remove the lock file while still holding it, then let go: a clean exit
        leaves nothing behind (a killed process leaves the file; the next claim
        reuses it).  Removing it while held is safe because ``claim_state_file``
        checks, once it holds a lock, that the file it locked is still the one
        at the path."""
        if self._fd is None:
            return
        self.lock_path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def claim_state_file(path: Path) -> StateFileLock:
    """Lock ``path`` for this process (held until ``release``, or the process
    ends), or raise ``StateFileInUse`` naming the holder."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = path.with_name(path.name + ".lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StateFileInUse(path, int(holder) if holder.isdigit() else None) from None
            raise
        # The holder may have released (removed the file) between our open and
        # our flock: then we hold a lock on a file nobody else will open.
        try:
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        opened = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (
            opened.st_dev,
            opened.st_ino,
        ):
            break
        os.close(fd)
    # Only the holder writes: the PID is what a second process reports.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return StateFileLock(lock, fd)


async def claim_when_free(path: Path, holder: int | None) -> StateFileLock | None:
    """The lock on ``path`` once ``holder`` (the process that held it) has
    exited: for an operator that took over that process's session, so that the
    file is guarded again as soon as the other one stops.  None when the holder
    is unknown or another process claimed the file first."""
    while holder is not None:
        await _exited(holder)
        try:
            return claim_state_file(path)
        except StateFileInUse as exc:
            if exc.pid in (holder, None):
                return None  # claimed by one that has not written its PID yet
            holder = exc.pid
    return None


async def _exited(pid: int) -> None:
    """Until process ``pid`` has exited: a pidfd becomes readable when it does."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not done.done():  # called on every loop pass until the reader is removed
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
