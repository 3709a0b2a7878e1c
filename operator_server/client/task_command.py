"""``operator-server task create|get|list|cancel``: one verb against the task
routes, its JSON on stdout, and an exit code a script can branch on.

Exit codes: 0 done (with ``--wait``: the task passed); 1 the request failed
(the daemon's error JSON is the first line of stderr; a line of advice may
follow it) or the daemon is unreachable; 2 bad usage (argparse); with
``--wait``, 3 the task ended but did not pass, 4 it had not ended when the
wait ran out; 130 Ctrl-C: the task goes on, and the command that follows it
is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import aiohttp

from operator_server.client import advice
from operator_server.client.errors import RequestFailed
from operator_server.client.http import TaskClient


def _parse_directive(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# ``task ... --wait`` exit codes (0 passed, 1 request failed, 2 usage).
EXIT_NOT_PASSED = 3
EXIT_STILL_RUNNING = 4
# Its operator stopped it on purpose (``spawn_halt``): neither a pass nor a failure.
EXIT_HALTED = 5
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
# One long-poll at most this long: well under the server's max_wait_s (300 s by
# default), so any --wait works by polling again.
WAIT_CHUNK_S = 30.0
# A task in one of these has not ended; any other status is an end (so a status
# the daemon adds later reads as an end, not as "still running").
LIVE_STATUSES = ("pending", "running")


async def _wait_for_end(tasks: TaskClient, task_id: str, wait: float) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        remaining = deadline - loop.time()
        task = await tasks.get(task_id, wait=max(0.0, min(remaining, WAIT_CHUNK_S)))
        if task["status"] not in LIVE_STATUSES or remaining <= WAIT_CHUNK_S:
            return task


async def _task_command(args: argparse.Namespace, seen: dict[str, Any]) -> Any:
    """Run one ``task`` verb.  ``seen["task"]`` holds the task as soon as the
    daemon created it, so an interrupted ``--wait`` can still say which."""
    async with TaskClient(args.url, args.api_token) as tasks:
        if args.verb == "create":
            body: dict[str, Any] = {
                "agent": args.agent,
                "directive": _parse_directive(args.directive),
            }
            operator = {
                k: v for k, v in (("role", args.role), ("sid", args.sid), ("kind", args.kind)) if v
            }
            if operator:
                body["operator"] = operator
            if args.system is not None:
                body["system"] = args.system
            if args.layers is not None:
                body["layers"] = [x.strip() for x in args.layers.split(",") if x.strip()]
            if args.max_attempts is not None:
                body["max_attempts"] = args.max_attempts
            task = seen["task"] = await tasks.create(**body)
            if not args.wait:
                return task
            _say_waiting(task["id"], args.wait)
            return await _wait_for_end(tasks, task["id"], args.wait)
        if args.verb == "get":
            if not args.wait:
                return await tasks.get(args.id)
            _say_waiting(args.id, args.wait)
            return await _wait_for_end(tasks, args.id, args.wait)
        if args.verb == "list":
            return await tasks.list(args.status, args.limit, args.after)
        return await tasks.cancel(args.id, args.reason)


def _say_waiting(task_id: str, wait: float) -> None:
    """One line on stderr before a long wait: the id is known from here on, and
    so is the way out."""
    print(
        f"operator-server: waiting up to {wait:g} s for task {task_id} to end "
        "(Ctrl-C stops waiting; the task goes on)",
        file=sys.stderr,
        flush=True,
    )


def _exit_code(args: argparse.Namespace, result: Any) -> int:
    """With ``--wait`` the exit code says how the task ended, for scripts."""
    if not getattr(args, "wait", 0):
        return 0
    status = result.get("status")
    if status == "passed":
        return 0
    if status == "halted":
        return EXIT_HALTED
    return EXIT_STILL_RUNNING if status in LIVE_STATUSES else EXIT_NOT_PASSED


def _follow_command(args: argparse.Namespace, task_id: str) -> str:
    """The command that picks up waiting for ``task_id`` where Ctrl-C left it.
    It names the URL; the API token never (it may be secret, and the
    environment that gave it gives it again)."""
    wait = max(args.wait, WAIT_CHUNK_S)
    return f"operator-server task get {task_id} --wait {wait:g} --url {args.url}"


def _interrupted(args: argparse.Namespace, seen: dict[str, Any]) -> int:
    task = seen.get("task")
    if task is not None:
        print(json.dumps(task, indent=2))  # stdout still gets the task, as created
    waited_for = task["id"] if task is not None else getattr(args, "id", None)
    if args.verb == "create" and task is None:
        print(
            "operator-server: interrupted before the daemon answered; the task may or may "
            "not exist: see `operator-server task list`",
            file=sys.stderr,
        )
    elif waited_for is not None and bool(getattr(args, "wait", 0)):
        print(
            f"operator-server: stopped waiting; task {waited_for} goes on. Follow it with:\n"
            f"  {_follow_command(args, waited_for)}",
            file=sys.stderr,
        )
    else:
        print("operator-server: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def run(args: argparse.Namespace) -> int:
    """Run the verb ``args`` names; print its JSON; the exit code."""
    seen: dict[str, Any] = {}
    try:
        result = asyncio.run(_task_command(args, seen))
    except KeyboardInterrupt:
        return _interrupted(args, seen)
    except RequestFailed as exc:
        # The first line of stderr is the daemon's error JSON, for scripts; a
        # line of advice may follow it, for people.
        print(
            json.dumps(exc.body or {"error": {"code": exc.code, "message": exc.message}}),
            file=sys.stderr,
        )
        if exc.status == 401:
            print(
                f"operator-server: {advice.api_token_refused(args.url, bool(args.api_token))}",
                file=sys.stderr,
            )
        return 1
    except (OSError, aiohttp.ClientError, TimeoutError) as exc:
        print(f"operator-server: {advice.unreachable(args.url, exc)}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return _exit_code(args, result)
