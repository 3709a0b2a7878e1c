"""``make cluster``: two daemons on one throwaway PostgreSQL, to try cluster mode.

Starts a PostgreSQL server of its own (``initdb`` into a temporary directory,
on a free port on 127.0.0.1), then two nodes, ``node-a`` and ``node-b``, on it
with one shared secret (a session minted on one node works on the other).  It
prints both URLs and a curl example, stays in the foreground, and on Ctrl-C
(SIGINT) or SIGTERM stops the nodes, stops the server and removes its
directory: nothing is left behind.

The PostgreSQL launcher (``throwaway_postgres``) is the one the test suite
(tests/pg.py) and the cluster benchmarks (bench/cluster.py) use too.
PostgreSQL refuses to run as root, so when this runs as root the server runs
as ``nobody``, which then owns the directory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from operator_server.demo import port_option, wait_health

RUN_AS = "nobody"
CLI = [sys.executable, "-m", "operator_server"]
NODES = ("node-a", "node-b")

# A test or demo database need not survive power loss: no fsync, no waiting for
# the WAL at commit.  ``durable=True`` keeps PostgreSQL's own defaults.
FAST = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


class PostgresMissing(RuntimeError):
    """No ``initdb`` on this machine."""


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    root: Path  # data directory, log and unix socket live under it
    options: str = ""  # the server's command-line options, to start it again alike

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def running(self) -> bool:
        return (self.root / "data" / "postmaster.pid").exists()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data (``immediate``: as if it crashed,
        every connection cut with no goodbye); a test's database outage."""
        _pg_ctl(self, "-m", mode, "-w", "stop")

    def start(self) -> None:
        """Start a stopped server again: same data, port and options."""
        _pg_ctl(self, "-l", str(self.log), "-o", self.options, "-w", "start")


def _pg_ctl(pg: Postgres, *args: str) -> None:
    bindir = find_bindir()
    if bindir is None:
        raise PostgresMissing("PostgreSQL is not installed (no initdb)")
    _run([str(bindir / "pg_ctl"), "-D", str(pg.root / "data"), *args], f"pg_ctl {args[-1]}")


def find_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: Debian keeps them off the PATH."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    return Path(versions[-1]).parent if versions else None


def _version_key(path: str) -> int:
    version = Path(path).parent.parent.name
    return int(version) if version.isdigit() else 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _as_server_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", RUN_AS, "--", *argv] if os.geteuid() == 0 else argv


def _run(argv: list[str], what: str) -> None:
    # Its own session: a Ctrl-C at the terminal is ours to handle, in order, and
    # must not reach the server before the nodes using it have stopped.
    done = subprocess.run(
        _as_server_user(argv),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        start_new_session=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stdout}{done.stderr}")


@contextlib.contextmanager
def throwaway_postgres(*, durable: bool = False, max_connections: int = 200) -> Iterator[Postgres]:
    """A PostgreSQL server in a fresh temporary directory, stopped and removed on exit.

    Raises ``PostgresMissing`` when PostgreSQL is not installed.
    """
    bindir = find_bindir()
    if bindir is None:
        raise PostgresMissing("PostgreSQL is not installed (no initdb); .ci/run installs it")
    root = Path(tempfile.mkdtemp(prefix="operator-server-pg-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(root, RUN_AS)
        data, log = root / "data", root / "server.log"
        _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            "initdb",
        )
        port = free_port()
        options = (
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 "
            f"-c max_connections={max_connections}" + ("" if durable else f" {FAST}")
        )
        pg_ctl = str(bindir / "pg_ctl")
        _run(
            [pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "start"],
            f"pg_ctl start (log: {log})",
        )
        pg = Postgres("127.0.0.1", port, root, options)
        try:
            yield pg
        finally:
            if pg.running:  # a test may have stopped it (and failed before starting it)
                pg.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- make cluster ---------------------------------------------------------------


def start_node(
    node_id: str, store_url: str, secret: str, port: int
) -> tuple[subprocess.Popen[bytes], str]:
    # The secret and the database URL go by environment, not argv: ps shows argv.
    env = {
        **os.environ,
        "OPERATOR_SERVER_SECRET": secret,
        "OPERATOR_SERVER_STORE_URL": store_url,
        "OPERATOR_SERVER_NODE_ID": node_id,
        "OPERATOR_SERVER_LOG_LEVEL": os.environ.get("OPERATOR_SERVER_LOG_LEVEL", "warning"),
    }
    proc = subprocess.Popen([*CLI, "serve", "--port", str(port)], env=env, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def stop_nodes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to all at once (each hands its running tasks over), then wait."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def banner(pg: Postgres, urls: dict[str, str]) -> str:
    a, b = urls.values()
    nodes = "".join(f"  {node}: {url}\n" for node, url in urls.items())
    where = f"{pg.host}:{pg.port}, data in {pg.root}"
    return f"""
operator_server cluster: {len(urls)} nodes on one PostgreSQL ({where})
{nodes}
Try it (a session minted on one node works on the other):
  curl -s {a}/v1/healthz
  curl -s {b}/v1/healthz
  curl -s -X POST {a}/v1/tasks -H 'Content-Type: application/json' \\
       -d '{{"agent": "echo", "directive": {{"echo": "hi"}}}}'
  curl -s '{b}/v1/tasks/TASK_ID?wait=10'

Ctrl-C stops both nodes and the database and removes its directory.
"""


def main(argv: list[str] | None = None) -> int:
    # --port N: node-a on N, node-b on N + 1 (easy to guess); else free ports.
    first = port_option("make cluster: two nodes on a throwaway PostgreSQL", argv)
    ports = [first + i for i in range(len(NODES))] if first else [free_port() for _ in NODES]
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with throwaway_postgres() as pg:
            secret = secrets.token_hex(32)
            urls: dict[str, str] = {}
            try:
                for node, port in zip(NODES, ports, strict=True):
                    proc, url = start_node(node, pg.url(), secret, port)
                    procs.append(proc)
                    urls[node] = url
                for node, url in urls.items():
                    wait_health(url, f"{node} to start")
                print(banner(pg, urls), flush=True)
                while not stop.wait(0.5):
                    if any(p.poll() is not None for p in procs):
                        print("a node exited; stopping the cluster", file=sys.stderr, flush=True)
                        return 1
            finally:
                print("stopping the nodes and PostgreSQL", flush=True)
                stop_nodes(procs)
    except PostgresMissing as exc:
        print(f"make cluster: {exc}", file=sys.stderr)
        return 2
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
