"""``make demo`` as a newcomer runs it: to the end, on the port it is given."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.processes import started
from tests.test_daemon import free_port


def test_the_demo_runs_its_tasks_on_the_port_it_is_given_and_leaves_no_state_behind(
    tmp_path: Path,
) -> None:
    port = free_port()
    state_home = tmp_path / "state-home"
    proc = started(
        subprocess.Popen(
            [sys.executable, "-m", "operator_server.demo", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "XDG_STATE_HOME": str(state_home)},
        )
    )
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    # The demo reaches its daemon only by this URL (healthz, the operator, each
    # task), so three passed tasks mean the daemon listened there.
    assert f"starting the daemon on http://127.0.0.1:{port}\n" in out, out
    assert out.count("status=passed") == 3, out
    assert "Traceback" not in out and "secret" not in out, out
    # Each run takes a new port: a state or lock file named after it would pile
    # up there, so the demo keeps its operator's in its own temporary directory.
    assert not state_home.exists(), sorted(state_home.rglob("*"))
