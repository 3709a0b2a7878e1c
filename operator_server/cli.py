"""``operator-server``: the daemon (``serve``, the default) and its companions."""

from __future__ import annotations

# Start-up time is part of the interface: ``--help`` and a one-shot ``task get``
# answer in a fraction of a second because this module imports only the
# standard library's argparse at the top; each command imports what it needs
# when it runs (the daemon: aiohttp.web, marshmallow, the engine; ``task``:
# aiohttp's client only).  tests/test_cli.py holds that; ``make bench ARGS=cli``
# measures it.
import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from operator_server import __version__
from operator_server.audit.cli import add_audit
from operator_server.keys_cli import add_keys

if TYPE_CHECKING:
    import asyncio

    from marshmallow import fields

CONFIG_DEST = "cfg:"


def _add_serve(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], with_settings: bool
) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the daemon (the default command)",
        description="Run the daemon. Each --flag overrides the same key from the "
        "environment (OPERATOR_SERVER_<KEY>) and the config file.",
    )
    serve.add_argument("--config", metavar="PATH", help="TOML config file")
    serve.add_argument("--version", action="version", version=f"operator-server {__version__}")
    serve.set_defaults(func=serve_main)
    if not with_settings:
        return  # another command runs: the settings' schema need not be loaded
    from operator_server.config import flag_name, setting_keys

    for key, fld in setting_keys():
        serve.add_argument(
            flag_name(key),
            dest=CONFIG_DEST + key,
            metavar="VALUE",
            default=argparse.SUPPRESS,
            help=_flag_help(fld),
        )


def _flag_help(fld: fields.Field) -> str:
    """The key's meaning and default, both read from its one declaration."""
    import json

    if fld.required:  # a key of an optional table, such as auth.jwt.issuer
        return f"{fld.metadata.get('help', '')} (required with its table)".replace("%", "%%")
    default = fld.load_default() if callable(fld.load_default) else fld.load_default
    shown = json.dumps(list(default) if isinstance(default, list | tuple) else default)
    # argparse formats help with %-style: a literal percent sign must be doubled.
    return f"{fld.metadata.get('help', '')} (default {shown})".replace("%", "%%")


DEFAULT_URL = "http://127.0.0.1:7786"


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("OPERATOR_SERVER_URL") or DEFAULT_URL,
        metavar="URL",
        help=f"the daemon (default: $OPERATOR_SERVER_URL, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--api-key",
        "--api-token",
        dest="api_token",
        # Read here, not from client.http: --help must not load the client.
        default=os.environ.get("OPERATOR_SERVER_API_KEY")
        or os.environ.get("OPERATOR_SERVER_API_TOKEN")
        or None,
        metavar="KEY",
        help="an API key (osk_…) or the daemon's api_token (default: $OPERATOR_SERVER_API_KEY, "
        "else $OPERATOR_SERVER_API_TOKEN)",
    )


def _add_operator(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    op = sub.add_parser(
        "operator",
        help="run a ready-made operator at this terminal",
        description="Join under a role and serve hooks, asks and spawns. The session is kept "
        "in a state file, so a restart resumes it. Ctrl-C leaves (deletes the session).",
    )
    _add_client_options(op)
    op.add_argument(
        "--role", required=True, metavar="ROLE", help="the role to hold (tasks name it)"
    )
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
        "--desc",
        metavar="TEXT",
        help="the session's description, shown in the console's Operators view and "
        'GET /v1/operators (default: "operator-server operator (exec)", or '
        '"(terminal)" without --exec)',
    )
    op.add_argument(
        "--state-file",
        metavar="PATH",
        help="where the session's sid and token are kept (mode 0600; default: one file per "
        "url and role under $XDG_STATE_HOME/operator-server/)",
    )
    op.add_argument("--sid", metavar="SID", help="attach to this existing session (with --token)")
    op.add_argument("--token", metavar="TOKEN", help="the session token of --sid")
    op.add_argument(
        "--take-over",
        action="store_true",
        help="when another operator runs on this state file, resume its session anyway: "
        "its socket is replaced, and it stops with one line, leaving the session here",
    )
    op.add_argument(
        "--log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="how much of the client's own log (reconnects, replays) goes to stderr "
        "(default warning)",
    )
    op.set_defaults(func=operator_main)


TASK_STATUSES = "pending, running, passed, halted, blocked, failed, cancelled"


def _add_task(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    task = sub.add_parser(
        "task",
        help="create, read, list or cancel tasks (prints JSON)",
        description="Exit codes: 0 done (with --wait: the task passed); 1 the request "
        "failed (the error JSON is on stderr) or the daemon is unreachable; 2 bad usage; "
        "with --wait, 3 the task ended but did not pass, 4 it had not ended when the wait "
        "ran out, 5 its operator halted it; 130 interrupted (Ctrl-C): the task goes on, "
        "and the command to follow it is printed.",
    )
    verbs = task.add_subparsers(dest="verb", required=True)

    create = verbs.add_parser("create", help="create a task")
    create.add_argument(
        "--agent",
        required=True,
        metavar="NAME",
        help="who does the work: a local agent (echo is built in) when no operator serves "
        "the task, else any name the operator's sub-agent understands",
    )
    create.add_argument(
        "--directive",
        required=True,
        metavar="TEXT",
        help="what the worker gets as its prompt: JSON if it parses as JSON, else plain text",
    )
    create.add_argument(
        "--system",
        metavar="TEXT",
        help="a system prompt, handed to the worker with the directive",
    )
    who = create.add_mutually_exclusive_group()
    who.add_argument("--role", metavar="ROLE", help="the operator role that serves it")
    who.add_argument("--sid", metavar="SID", help="the operator session that serves it")
    create.add_argument(
        "--kind",
        choices=("main_ai", "automate"),
        help="main_ai: spawn hooks fire (the default when --role or --sid names an "
        "operator); automate: they do not (the default otherwise)",
    )
    create.add_argument(
        "--layers",
        metavar="LIST",
        help="comma-separated middleware, outermost first (default: the daemon's default_layers)",
    )
    create.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        help="run a blocked or failed attempt again, up to N attempts in all (1-100; "
        "default: the daemon's default_max_attempts, 1)",
    )
    create.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="S",
        help="wait up to S seconds for the end; then exit 0 only if it passed",
    )

    get = verbs.add_parser("get", help="read a task")
    get.add_argument("id", help="the task's id (t-...)")
    get.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="S",
        help="long-poll up to S seconds for the end; then exit 0 only if it passed",
    )

    listing = verbs.add_parser(
        "list",
        help="list tasks",
        description='One page of tasks in creation order, as {"tasks": [...], "next"}; '
        'pass "next" as --after for the following page.',
    )
    listing.add_argument(
        "--status", metavar="STATUS", help=f"only tasks with this status ({TASK_STATUSES})"
    )
    listing.add_argument(
        "--limit", type=int, metavar="N", help="at most N tasks on the page (1-500; default 50)"
    )
    listing.add_argument(
        "--after",
        metavar="CURSOR",
        help="the page after this cursor (the previous page's next) or this task id",
    )

    cancel = verbs.add_parser("cancel", help="cancel a task")
    cancel.add_argument("id", help="the task's id (t-...)")
    cancel.add_argument(
        "--reason", metavar="TEXT", help="why; the cancelled task's error.message says it"
    )

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
        metavar="ROLE",
        help="a role to hold (repeatable); tasks naming it are served by this agent",
    )
    mcp.add_argument(
        "--desc",
        default="operator-server mcp",
        metavar="TEXT",
        help="the session's description, shown in the console's Operators view "
        '(default "operator-server mcp")',
    )
    resume = mcp.add_mutually_exclusive_group()
    resume.add_argument(
        "--state-file",
        metavar="PATH",
        help="keep the session here and resume it on the next start (one bridge per "
        "file: a second one exits 1 naming the first one's PID)",
    )
    resume.add_argument("--sid", metavar="SID", help="resume this session (with --token)")
    mcp.add_argument("--token", metavar="TOKEN", help="the session token of --sid")
    mcp.add_argument(
        "--keep-session",
        action="store_true",
        help="on stdin EOF keep the session on the server (and in the state file, by "
        "default one under $XDG_STATE_HOME/operator-server) instead of leaving",
    )
    mcp.add_argument(
        "--log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="how much of the bridge's log goes to stderr (default warning)",
    )
    mcp.add_argument(
        "--log-format",
        default="auto",
        choices=("auto", "json", "console"),
        help="the log's form: JSON lines, readable lines, or auto: readable when stderr "
        "is a terminal (default auto)",
    )
    mcp.add_argument(
        "--backoff-max-s",
        type=float,
        default=10.0,
        metavar="S",
        help="longest wait between reconnect attempts (default 10)",
    )
    mcp.set_defaults(func=mcp_main)


def build_parser(serve_settings: bool = True) -> argparse.ArgumentParser:
    """The whole command line; ``serve_settings=False`` leaves out ``serve``'s
    one flag per setting, which needs the settings' schema (marshmallow) loaded."""
    parser = argparse.ArgumentParser(prog="operator-server")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command")
    _add_serve(sub, serve_settings)
    _add_operator(sub)
    _add_task(sub)
    _add_mcp(sub)
    add_keys(sub)
    add_audit(sub)
    return parser


def operator_main(args: argparse.Namespace) -> int:
    from operator_server.client.operator_command import run

    return run(args)


def task_main(args: argparse.Namespace) -> int:
    from operator_server.client.task_command import run

    return run(args)


def mcp_main(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib
    import io
    import logging
    from pathlib import Path

    from operator_server.client.mcp import BridgeOptions, serve_stdio
    from operator_server.client.state import (
        StateFileInUse,
        claim_state_file,
        default_state_file,
    )
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
    lock = None
    if state_file is not None:
        # Two bridges on one file would share one session and replace each other's socket.
        try:
            lock = claim_state_file(state_file)
        except (StateFileInUse, OSError) as exc:
            print(f"operator-server mcp: {exc}", file=sys.stderr)
            return 1
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
    try:
        # Ctrl-C: asyncio.run cancels the server, whose cleanup still leaves the session.
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(serve_stdio(options, protocol_out))
        return 130
    finally:
        if lock is not None:
            lock.release()


def serve_main(args: argparse.Namespace) -> int:
    import asyncio

    import structlog

    from operator_server.app import load_directive, load_jwt_verifier
    from operator_server.config import ConfigError, load_settings
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
        jwt = load_jwt_verifier(settings)
    except ConfigError as exc:
        print(f"operator-server: config error: {exc}", file=sys.stderr)
        return 2
    configure_logging(
        settings.log_level, settings.log_format, once=True, trace_ids=settings.tracing.enabled
    )
    # The runner copies this context into every task: each line names the node.
    structlog.contextvars.bind_contextvars(node_id=settings.node_id)
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            runner.run(serve(settings, directive, jwt))
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
    args = build_parser(serve_settings=args_list[0] == "serve").parse_args(args_list)
    result: int = args.func(args)
    return result
