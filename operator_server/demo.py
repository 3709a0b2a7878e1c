"""``make demo``: the product working in a minute, with the real commands.

Starts the daemon, seats the ready-made operator with a tiny shell command as
its sub-agent, submits a few tasks with ``operator-server task create``, prints
their results, and stops everything.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CLI = [sys.executable, "-m", "operator_server"]
SUB_AGENT = "tr a-z A-Z | sed 's/^/[sub-agent] /'"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_health(url: str, ready: str, condition: object = None) -> None:
    """Poll healthz until it answers (and ``condition`` holds on its body)."""
    for _ in range(150):
        try:
            with urllib.request.urlopen(f"{url}/v1/healthz", timeout=1) as resp:
                health = json.load(resp)
            if condition is None or (callable(condition) and condition(health)):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting: {ready}")


def create_task(url: str, *args: str) -> None:
    """``operator-server task create ... --wait 20``, and print how it ended."""
    out = subprocess.run(
        [*CLI, "task", "create", "--url", url, *args, "--wait", "20"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    task = json.loads(out)
    print(f"    status={task['status']} result={task['result']}", flush=True)


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def port_option(what: str, argv: list[str] | None) -> int:
    """``--port N`` (``make ... PORT=N``); 0 when not given: take a free port."""
    parser = argparse.ArgumentParser(description=what)
    parser.add_argument(
        "--port", type=int, default=0, help="the port to listen on (default: a free one)"
    )
    port: int = parser.parse_args(argv).port
    return port


def main(argv: list[str] | None = None) -> int:
    port = port_option("make demo: the daemon, an operator and a few tasks", argv) or free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OPERATOR_SERVER_LOG_LEVEL": "warning"}
    with tempfile.TemporaryDirectory(prefix="operator-server-demo-") as scratch:
        return run(url, port, env, Path(scratch))


def run(url: str, port: int, env: dict[str, str], scratch: Path) -> int:
    """The demo proper; ``scratch`` holds the operator's state file, so a run on
    a random port leaves nothing under ``$XDG_STATE_HOME`` (the default file is
    named after the URL: each port would be a new one)."""
    step(f"starting the daemon on {url}")
    daemon = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), "--store-path", ":memory:"], env=env
    )
    operator = None
    try:
        wait_health(url, "the daemon to start")
        step(f"starting the ready-made operator: --role demo --exec {SUB_AGENT!r}")
        operator = subprocess.Popen(
            [
                *CLI,
                "operator",
                "--url",
                url,
                "--role",
                "demo",
                "--exec",
                SUB_AGENT,
                "--state-file",
                str(scratch / "operator.json"),
            ],
            stdin=subprocess.DEVNULL,
        )
        wait_health(url, "the operator to connect", lambda h: h["operators"]["connected"] == 1)
        for directive in ("hello from the demo", "every spawn is a real process"):
            step(f"operator-server task create --role demo --directive {directive!r} --wait 20")
            create_task(url, "--agent", "shell", "--role", "demo", "--directive", directive)
        step("a task with no operator is served by the built-in echo agent")
        create_task(url, "--agent", "echo", "--directive", '{"echo": "me"}')
    finally:
        step("stopping")
        for proc in (operator, daemon):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=15)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
