"""``operator-server``: the daemon (``serve``, the default) and its companions."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from aiohttp import web

from operator_server import __version__
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
    for key, _ in setting_keys():
        serve.add_argument(
            flag_name(key), dest=CONFIG_DEST + key, metavar="VALUE", default=argparse.SUPPRESS
        )
    serve.set_defaults(func=serve_main)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="operator-server")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command")
    _add_serve(sub)
    return parser


def serve_main(args: argparse.Namespace) -> int:
    from operator_server.app import build_app, load_directive
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
    configure_logging(settings.log_level, settings.log_format)
    log = get_logger("operator_server")
    app = build_app(settings, directive)
    log.info("starting", host=settings.host, port=settings.port, version=__version__)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=lambda text: log.info("listening", url=f"http://{settings.host}:{settings.port}"),
        access_log=None,
        shutdown_timeout=settings.shutdown_timeout_s,
    )
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
