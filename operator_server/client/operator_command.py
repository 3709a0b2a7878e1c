"""``operator-server operator``: the terminal operator as a command, one seat
per state file.

The state file is locked (``client.state.claim_state_file``) before anything
else: a second operator on it refuses in one line naming the first one's PID,
unless ``--take-over``.  Then it resumes the kept session anyway, the first one
sees its socket replaced and stops, and this one claims the lock once the first
has exited.  The lock is released (its file removed) when the command ends.

Exit codes: 0 left cleanly (or stopped because another operator took the
session over); 1 a start-up failure, the session ended by the server, or a
state file in use, each said in one line on stderr; 2 bad usage; 130 Ctrl-C
while starting.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import aiohttp

from operator_server.background import Background
from operator_server.client import advice
from operator_server.client.errors import RequestFailed
from operator_server.client.operator import SessionGone, SessionTakenOver
from operator_server.client.state import (
    StateFileInUse,
    StateFileLock,
    claim_state_file,
    claim_when_free,
    default_state_file,
)
from operator_server.client.terminal import StartupFailed, TerminalOperator
from operator_server.logs import configure_logging


def run(args: argparse.Namespace) -> int:
    if args.approve == "ask" and not sys.stdin.isatty():
        print("operator-server: --approve ask needs a terminal on stdin", file=sys.stderr)
        return 2
    if (args.sid is None) != (args.token is None):
        print("operator-server: --sid and --token go together", file=sys.stderr)
        return 2
    url = args.url.rstrip("/")
    state_file = (
        Path(args.state_file)
        if args.state_file
        else default_state_file("operator", url, [args.role])
    )
    lock: StateFileLock | None = None
    holder: int | None = None
    try:
        lock = claim_state_file(state_file)
    except StateFileInUse as exc:
        if not args.take_over:
            print(f"operator-server: {exc}, or pass --take-over", file=sys.stderr)
            return 1
        holder = exc.pid
    except OSError as exc:
        print(f"operator-server: {exc}", file=sys.stderr)
        return 1
    configure_logging(args.log_level, "console", stream=sys.stderr)
    terminal = TerminalOperator(
        url,
        role=args.role,
        approve=args.approve,
        command=args.command,
        api_token=args.api_token,
        state_file=state_file,
        sid=args.sid,
        token=args.token,
        desc=args.desc,
    )
    claimed: list[StateFileLock] = []  # the lock, once a take-over gets it
    try:
        if lock is not None:
            return asyncio.run(terminal.run())
        return asyncio.run(_run_after_take_over(terminal, state_file, holder, claimed))
    except StartupFailed as exc:
        print(f"operator-server: {_refused(args, url, exc.__cause__) or exc}", file=sys.stderr)
    except (SessionGone, SessionTakenOver) as exc:  # the latter: replaced while starting
        print(f"operator-server: {exc}", file=sys.stderr)
    except RequestFailed as exc:
        print(f"operator-server: {_refused(args, url, exc) or f'{url}: {exc}'}", file=sys.stderr)
    except (OSError, aiohttp.ClientError, TimeoutError) as exc:
        print(f"operator-server: {advice.unreachable(url, exc)}", file=sys.stderr)
    except KeyboardInterrupt:  # Ctrl-C while still starting up
        print("operator-server: interrupted while starting", file=sys.stderr)
        return 130
    finally:
        for held in [lock, *claimed]:
            if held is not None:
                held.release()
    return 1


async def _run_after_take_over(
    terminal: TerminalOperator,
    state_file: Path,
    holder: int | None,
    claimed: list[StateFileLock],
) -> int:
    """Run the operator while waiting for ``holder`` (the operator whose session
    it took over) to exit, then claim the state file: a third one refuses again."""
    background = Background()
    claim = background.spawn(claim_when_free(state_file, holder), name="operator:claim-state-file")
    try:
        return await terminal.run()
    finally:
        await background.close("operator stopping")
        finished = claim.done() and not claim.cancelled() and claim.exception() is None
        if finished and (lock := claim.result()) is not None:
            claimed.append(lock)


def _refused(args: argparse.Namespace, url: str, exc: BaseException | None) -> str | None:
    """A 401 said in the user's terms: which flag to pass."""
    if not (isinstance(exc, RequestFailed) and exc.status == 401):
        return None
    if args.sid is not None:
        return advice.session_token_refused(url, args.sid)
    return advice.api_token_refused(url, sent=bool(args.api_token))
