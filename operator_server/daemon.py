"""Run the daemon process: claim the store, bind, recover, serve, stop on a signal.

The order is the point:

1. **Claim the store** (SQLite: an exclusive lock, see ``store/sqlite.py``).  A
   second process on the same file stops here, before it reads or writes
   anything.  PostgreSQL is made to be shared by many nodes, so its claim takes
   nothing; each node is told apart by its ``node_id`` instead, which every
   log line carries (the CLI binds it before the loop starts).
2. **Bind the listening sockets.**  A busy port stops start-up here, before
   recovery has changed anything on disk.  From now on the kernel queues
   incoming connections.
3. **Open the store and recover** (the app's start-up hooks), then commit what
   recovery changed.
4. **Serve** the sockets bound in step 2: queued connections are answered now,
   so no request ever sees a half-recovered server (there is no "starting" state
   to report).

Any failure before serving is a ``StartupFailed`` whose message is one line
saying what is wrong; the CLI prints it and exits 1.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import socket

from aiohttp import web

from operator_server import __version__
from operator_server.app import build_app, listening_on, runner_options
from operator_server.auth.jwt import JwtVerifier
from operator_server.config import Settings, listen_url
from operator_server.logs import get_logger
from operator_server.operators.directive import DirectiveTemplate
from operator_server.store import StoreError, open_store

log = get_logger(__name__)
BACKLOG = 128
WILDCARDS = ("0.0.0.0", "::", "")


class StartupFailed(Exception):
    """Start-up stopped; the message is one line naming what and where."""


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address ``host`` resolves to, all on one port.

    With port 0 the first bind picks the port and the others reuse it, so the
    daemon has one URL.
    """
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise StartupFailed(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, addr in infos:
            if (family, addr[0]) in seen:
                continue
            seen.add((family, addr[0]))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                addr = (addr[0], sockets[0].getsockname()[1], *addr[2:])
            sock.bind(addr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise StartupFailed(
            f"cannot listen on {listen_url(host, port)[len('http://') :]}: {exc.strerror or exc}"
        ) from None
    return sockets


async def serve(
    settings: Settings, directive: DirectiveTemplate, jwt: JwtVerifier | None = None
) -> None:
    """Run until SIGTERM or SIGINT; raise ``StartupFailed`` if it never got going."""
    store = open_store(settings)
    try:
        store.claim()
    except StoreError as exc:
        raise StartupFailed(f"store: {exc}") from None
    try:
        sockets = bind(settings.host, settings.port)
    except StartupFailed:
        await store.close()
        raise
    url = listen_url(settings.host, sockets[0].getsockname()[1])
    if settings.host in WILDCARDS and not settings.public_url:
        log.warning(
            "listening on a wildcard address with no public_url: spawn directives "
            "name it as is; set public_url to the address sub-agents can reach",
            url=url,
        )
    app = build_app(settings, directive, store, jwt)
    listening_on(app, url)
    runner = web.AppRunner(app, **runner_options(settings))
    loop_name = type(asyncio.get_running_loop()).__module__.partition(".")[0]  # uvloop | asyncio
    log.info(
        "starting",
        host=settings.host,
        port=settings.port,
        version=__version__,
        event_loop=loop_name,
    )
    try:
        try:
            await runner.setup()  # opens the store and recovers
        except StoreError as exc:
            # No shutdown hooks run for an app that never started: close it here.
            await store.close()
            raise StartupFailed(f"store: {exc}") from None
        for sock in sockets:
            await web.SockSite(runner, sock, backlog=BACKLOG).start()
        # Everything alive now (modules, schemas, recovered state) lives as long
        # as the process: move it out of the collector's sight, so full
        # collections under load scan only what the work itself allocates.
        gc.freeze()
        log.info("listening", url=url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        for sock in sockets:
            sock.close()
