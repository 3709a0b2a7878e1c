"""``operator-server``: the daemon (``serve``, the default) and its companions."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from marshmallow import fields

from operator_server import __version__
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
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the daemon (default {DEFAULT_URL})")
    parser.add_argument(
        "--api-token",
        default=os.environ.get("OPERATOR_SERVER_API_TOKEN"),
        help="the daemon's api_token, if it has one (default: $OPERATOR_SERVER_API_TOKEN)",
    )


def _add_operator(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    op = sub.add_parser(
        "operator",
        help="run a ready-made operator at this terminal",
        description="Join under a role and serve hooks, asks and spawns. Ctrl-C leaves.",
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
    op.set_defaults(func=operator_main)


def _add_task(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    task = sub.add_parser("task", help="create, read, list or cancel tasks (prints JSON)")
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
    create.add_argument("--kind", choices=("main_ai", "composite", "automate"))
    create.add_argument("--layers", help="comma-separated middleware, outermost first")
    create.add_argument("--max-attempts", type=int)
    create.add_argument("--wait", type=float, default=0, help="wait up to S seconds for the end")

    get = verbs.add_parser("get", help="read a task")
    get.add_argument("id")
    get.add_argument("--wait", type=float, default=0, help="long-poll up to S seconds")

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="operator-server")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command")
    _add_serve(sub)
    _add_operator(sub)
    _add_task(sub)
    return parser


def operator_main(args: argparse.Namespace) -> int:
    from operator_server.client.terminal import TerminalOperator
    from operator_server.logs import configure_logging

    if args.approve == "ask" and not sys.stdin.isatty():
        print("operator-server: --approve ask needs a terminal on stdin", file=sys.stderr)
        return 2
    configure_logging("warning", "console")
    terminal = TerminalOperator(
        args.url,
        role=args.role,
        approve=args.approve,
        command=args.command,
        api_token=args.api_token,
    )
    try:
        return asyncio.run(terminal.run())
    except (OSError, RequestFailed, TimeoutError) as exc:
        print(f"operator-server: {exc}", file=sys.stderr)
        return 1


def _parse_directive(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


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
            return await tasks.get(task["id"], wait=args.wait) if args.wait else task
        if args.verb == "get":
            return await tasks.get(args.id, wait=args.wait)
        if args.verb == "list":
            return await tasks.list(args.status, args.limit, args.after)
        return await tasks.cancel(args.id, args.reason)


def task_main(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(_task_command(args))
    except RequestFailed as exc:
        print(
            json.dumps(exc.body or {"error": {"code": exc.code, "message": exc.message}}),
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print(f"operator-server: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def serve_main(args: argparse.Namespace) -> int:
    from operator_server.app import build_app, load_directive
    from operator_server.logs import configure_logging, get_logger
    from operator_server.store import StoreError

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
    configure_logging(settings.log_level, settings.log_format)
    log = get_logger("operator_server")
    app = build_app(settings, directive)
    log.info("starting", host=settings.host, port=settings.port, version=__version__)
    try:
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            print=lambda text: log.info("listening", url=f"http://{settings.host}:{settings.port}"),
            access_log=None,
            shutdown_timeout=settings.shutdown_timeout_s,
        )
    except StoreError as exc:
        print(f"operator-server: store: {exc}", file=sys.stderr)
        return 1
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (
        args_list[0].startswith("-") and args_list[0] not in ("-h", "--help", "--version")
    ):
        args_list.insert(0, "serve")
    args = build_parser().parse_args(args_list)
    result: int = args.func(args)
    return result
