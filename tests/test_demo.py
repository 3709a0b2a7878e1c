"""``make demo`` as a newcomer runs it: to the end, on the port it is given."""

from __future__ import annotations

import subprocess
import sys

from tests.processes import started
from tests.test_daemon import free_port


def test_the_demo_runs_its_tasks_on_the_port_it_is_given() -> None:
    port = free_port()
    proc = started(
        subprocess.Popen(
            [sys.executable, "-m", "operator_server.demo", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    )
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    # The demo reaches its daemon only by this URL (healthz, the operator, each
    # task), so three passed tasks mean the daemon listened there.
    assert f"starting the daemon on http://127.0.0.1:{port}\n" in out, out
    assert out.count("status=passed") == 3, out
    assert "Traceback" not in out and "secret" not in out, out
