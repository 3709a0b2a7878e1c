"""``operator-server``: the daemon (``serve``, the default) and its companions."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from marshmallow import fields

from operator_server import __version__
from operator_server.audit.cli import add_audit
from operator_server.client import RequestFailed, TaskClient
from operator_server.config import ConfigError, flag_name, load_settings, setting_keys

CONFIG_DEST = "cfg:"


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the daemon (the default command)",
        description="Run the daemon. Each --flag overrides the same key from the "
        "environment (OPERATOR_SERVER_<KEY>) and the config file.",
    )
    serve.add_argument("--config", metavar="PATH", help="TOML config file")
    serve.add_argument("--version", action="version", version=f"operator-server {__version__}")
    for key, fld in setting_keys():
        serve.add_argument(
            flag_name(key),
            dest=CONFIG_DEST + key,
            metavar="VALUE",
            default=argparse.SUPPRESS,
            help=_flag_help(fld),
        )
    serve.set_defaults(func=serve_main)


def _flag_help(fld: fields.Field) -> str:
    """The key's meaning and default, both read from its one declaration."""
    default = fld.load_default() if callable(fld.load_default) else fld.load_default
    shown = json.dumps(list(default) if isinstance(default, list | tuple) else default)
    # argparse formats help with %-style: a literal percent sign must be doubled.
    return f"{fld.metadata.get('help', '')} (default {shown})".replace("%", "%%")


DEFAULT_URL = "http://127.0.0.1:7786"


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("OPERATOR_SERVER_URL") or DEFAULT_URL,
        help=f"the daemon (default: $OPERATOR_SERVER_URL, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--api-token",
        default=os.environ.get("OPERATOR_SERVER_API_TOKEN"),
        help="the daemon's api_token, if it has one (default: $OPERATOR_SERVER_API_TOKEN)",
    )


def _add_operator(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    op = sub.add_parser(
        "operator",
        help="run a ready-made operator at this terminal",
        description="Join under a role and serve hooks, asks and spawns. The session is kept "
        "in a state file, so a restart resumes it. Ctrl-C leaves (deletes the session).",
    )
    _add_client_options(op)
    op.add_argument("--role", required=True, help="the role to hold (tasks name it)")
    op.add_argument(
        "--approve",
        choices=("all", "none", "ask"),
        default="all",
        help="spawn hooks: approve all, reject all, or ask at the terminal (default all)",
    )
    op.add_argument(
        "--exec",
        dest="command",
        metavar="COMMAND",
        help="shell command run as each spawn's sub-agent: prompt on stdin, stdout is the "
        "result, exit code 0 is ok",
    )
    op.add_argument(
        "--state-file",
        metavar="PATH",
        help="where the session's sid and token are kept (mode 0600; default: one file per "
        "url and role under $XDG_STATE_HOME/operator-server/)",
    )
    op.add_argument("--sid", help="attach to this existing session (with --token)")
    op.add_argument("--token", help="the token of --sid")
    op.set_defaults(func=operator_main)


def _add_task(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    task = sub.add_parser(
        "task",
        help="create, read, list or cancel tasks (prints JSON)",
        description="Exit codes: 0 done (with --wait: the task passed); 1 the request "
        "failed (the error JSON is on stderr); 2 bad usage; with --wait, 3 the task ended "
        "but did not pass, 4 it had not ended when the wait ran out.",
    )
    verbs = task.add_subparsers(dest="verb", required=True)

    create = verbs.add_parser("create", help="create a task")
    create.add_argument("--agent", required=True)
    create.add_argument(
        "--directive", required=True, help="JSON if it parses as JSON, else plain text"
    )
    create.add_argument("--system")
    who = create.add_mutually_exclusive_group()
    who.add_argument("--role", help="the operator role that serves it")
    who.add_argument("--sid", help="the operator session that serves it")
    create.add_argument("--kind", choices=("main_ai", "automate"))
    create.add_argument("--layers", help="comma-separated middleware, outermost first")
    create.add_argument("--max-attempts", type=int)
    create.add_argument(
        "--wait",
        type=float,
        default=0,
        help="wait up to S seconds for the end; then exit 0 only if it passed",
    )

    get = verbs.add_parser("get", help="read a task")
    get.add_argument("id")
    get.add_argument(
        "--wait",
        type=float,
        default=0,
        help="long-poll up to S seconds for the end; then exit 0 only if it passed",
    )

    listing = verbs.add_parser("list", help="list tasks")
    listing.add_argument("--status")
    listing.add_argument("--limit", type=int)
    listing.add_argument("--after")

    cancel = verbs.add_parser("cancel", help="cancel a task")
    cancel.add_argument("id")
    cancel.add_argument("--reason")

    for verb in (create, get, listing, cancel):
        _add_client_options(verb)
    task.set_defaults(func=task_main)


def _add_mcp(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mcp = sub.add_parser(
        "mcp",
        help="serve one operator session to an AI agent as MCP tools (stdio)",
        description="A stdio MCP server holding one operator session: the agent answers "
        "hooks, asks and spawns through tools. stdout carries only MCP; logs go to stderr. "
        "Closing stdin leaves the session (unless --keep-session).",
    )
    _add_client_options(mcp)  # the same --url and --api-token as every client command
    mcp.add_argument(
        "--role",
        dest="roles",
        action="append",
        default=[],
        help="a role to hold (repeatable); tasks naming it are served by this agent",
    )
    mcp.add_argument("--desc", default="operator-server mcp", help="the session's description")
    resume = mcp.add_mutually_exclusive_group()
    resume.add_argument(
        "--state-file",
        metavar="PATH",
        help="keep the session here and resume it on the next start",
    )
    resume.add_argument("--sid", help="resume this session (with --token)")
    mcp.add_argument("--token", help="the session token of --sid")
    mcp.add_argument(
        "--keep-session",
        action="store_true",
        help="on stdin EOF keep the session on the server (and in the state file, by "
        "default one under $XDG_STATE_HOME/operator-server) instead of leaving",
    )
    mcp.add_argument(
        "--log-level", default="warning", choices=("debug", "info", "warning", "error")
    )
    mcp.add_argument("--log-format", default="auto", choices=("auto", "json", "console"))
    mcp.add_argument(
        "--backoff-max-s",
        type=float,
        default=10.0,
        help="longest wait between reconnect attempts (default 10)",
    )
    mcp.set_defaults(func=mcp_main)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="operator-server")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command")
    _add_serve(sub)
    _add_operator(sub)
    _add_task(sub)
    _add_mcp(sub)
    add_audit(sub)
    return parser


def operator_main(args: argparse.Namespace) -> int:
    from pathlib import Path

    import aiohttp

    from operator_server.client.operator import SessionGone
    from operator_server.client.state import (
        StateFileInUse,
        claim_state_file,
        default_state_file,
    )
    from operator_server.client.terminal import StartupFailed, TerminalOperator
    from operator_server.logs import configure_logging

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
    try:
        claim_state_file(state_file)  # held until this process ends
    except (StateFileInUse, OSError) as exc:
        print(f"operator-server: {exc}", file=sys.stderr)
        return 1
    configure_logging("warning", "console")
    terminal = TerminalOperator(
        url,
        role=args.role,
        approve=args.approve,
        command=args.command,
        api_token=args.api_token,
        state_file=state_file,
        sid=args.sid,
        token=args.token,
    )
    try:
        return asyncio.run(terminal.run())
    except StartupFailed as exc:
        print(f"operator-server: {exc}", file=sys.stderr)
    except SessionGone as exc:
        print(f"operator-server: {exc}", file=sys.stderr)
    except RequestFailed as exc:
        print(f"operator-server: {url}: {exc}", file=sys.stderr)
    except (OSError, aiohttp.ClientError, TimeoutError) as exc:
        print(f"operator-server: cannot reach {url}: {exc or type(exc).__name__}", file=sys.stderr)
    except KeyboardInterrupt:  # Ctrl-C while still starting up
        print("operator-server: interrupted while starting", file=sys.stderr)
        return 130
    return 1


def _parse_directive(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# ``task ... --wait`` exit codes (0 passed, 1 request failed, 2 usage).
EXIT_NOT_PASSED = 3
EXIT_STILL_RUNNING = 4
# One long-poll at most this long: well under the server's max_wait_s (300 s by
# default), so any --wait works by polling again.
WAIT_CHUNK_S = 30.0


async def _wait_for_end(tasks: TaskClient, task_id: str, wait: float) -> Any:
    from operator_server.engine.tasks import TaskStatus

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        remaining = deadline - loop.time()
        task = await tasks.get(task_id, wait=max(0.0, min(remaining, WAIT_CHUNK_S)))
        if TaskStatus(task["status"]).terminal or remaining <= WAIT_CHUNK_S:
            return task


async def _task_command(args: argparse.Namespace) -> Any:
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
            task = await tasks.create(**body)
            return await _wait_for_end(tasks, task["id"], args.wait) if args.wait else task
        if args.verb == "get":
            return (
                await _wait_for_end(tasks, args.id, args.wait)
                if args.wait
                else await tasks.get(args.id)
            )
        if args.verb == "list":
            return await tasks.list(args.status, args.limit, args.after)
        return await tasks.cancel(args.id, args.reason)


def _exit_code(args: argparse.Namespace, result: Any) -> int:
    """With ``--wait`` the exit code says how the task ended, for scripts."""
    if not getattr(args, "wait", 0):
        return 0
    status = result.get("status")
    if status == "passed":
        return 0
    return EXIT_STILL_RUNNING if status in ("pending", "running") else EXIT_NOT_PASSED


def task_main(args: argparse.Namespace) -> int:
    import aiohttp

    try:
        result = asyncio.run(_task_command(args))
    except RequestFailed as exc:
        print(
            json.dumps(exc.body or {"error": {"code": exc.code, "message": exc.message}}),
            file=sys.stderr,
        )
        return 1
    except (OSError, aiohttp.ClientError, TimeoutError) as exc:
        print(
            f"operator-server: cannot reach {args.url}: {exc or type(exc).__name__}",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(result, indent=2))
    return _exit_code(args, result)


def mcp_main(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from operator_server.client.mcp import BridgeOptions, serve_stdio
    from operator_server.client.state import default_state_file
    from operator_server.logs import configure_logging

    if (args.sid is None) != (args.token is None):
        print("operator-server mcp: --sid and --token go together", file=sys.stderr)
        return 2
    # stdout is the MCP channel: keep a private handle on it, then point fd 1 and
    # sys.stdout at stderr, so no stray print (ours or a library's) can corrupt it.
    protocol_out = io.TextIOWrapper(os.fdopen(os.dup(1), "wb"), encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    configure_logging(args.log_level, args.log_format, stream=sys.stderr)
    logging.getLogger().setLevel(args.log_level.upper())
    state_file = Path(args.state_file) if args.state_file else None
    if state_file is None and args.keep_session and args.sid is None:
        state_file = default_state_file("mcp", args.url, args.roles)
    options = BridgeOptions(
        url=args.url,
        api_token=args.api_token,
        roles=args.roles,
        desc=args.desc,
        state_file=state_file,
        sid=args.sid,
        token=args.token,
        keep_session=args.keep_session,
        backoff_max_s=args.backoff_max_s,
    )
    # Ctrl-C: asyncio.run cancels the server, whose cleanup still leaves the session.
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve_stdio(options, protocol_out))
    return 130


def serve_main(args: argparse.Namespace) -> int:
    import structlog

    from operator_server.app import load_directive
    from operator_server.daemon import StartupFailed, serve
    from operator_server.logs import configure_logging, get_logger

    flags = {
        name[len(CONFIG_DEST) :]: value
        for name, value in vars(args).items()
        if name.startswith(CONFIG_DEST)
    }
    try:
        settings = load_settings(file=args.config, flags=flags)
        directive = load_directive(settings)
    except ConfigError as exc:
        print(f"operator-server: config error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format, once=True)
    # The runner copies this context into every task: each line names the node.
    structlog.contextvars.bind_contextvars(node_id=settings.node_id)
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            runner.run(serve(settings, directive))
    except StartupFailed as exc:
        print(f"operator-server: {exc}", file=sys.stderr)
        return 1
    get_logger("operator_server").info("stopped")
    return 0


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The daemon's event loop.  uvloop by default: it runs the end-to-end bench
    about 7% faster at 8% less CPU per task than the standard loop
    (``make bench``); ``event_loop = "asyncio"`` keeps the standard one."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None  # asyncio's own


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (
        args_list[0].startswith("-") and args_list[0] not in ("-h", "--help", "--version")
    ):
        args_list.insert(0, "serve")
    args = build_parser().parse_args(args_list)
    result: int = args.func(args)
    return result
