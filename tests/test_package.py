"""The built wheel, installed outside the checkout, serves a task.

A checkout hides what a wheel lacks: ``config/`` sits next to the package and the
working directory is the checkout. This test builds the wheel from a copy of the
checkout's files (``pip wheel --no-deps .``), installs it into a fresh virtualenv
in a temporary directory, starts ``<venv>/bin/operator-server serve`` there with
the working directory outside the checkout, and runs one echo task through it
over HTTP.

The install is real for our package: pip unpacks the wheel into the new venv's
site-packages and writes its ``operator-server`` console script. The third-party
dependencies are not downloaded again: a ``.pth`` file in the new venv appends the
project venv's site-packages to ``sys.path`` *after* the venv's own, so
``operator_server`` is imported from the wheel and only aiohttp & co. come from
the project venv (a ``.pth`` line is a plain path: the project venv's own ``.pth``
files, among them the editable install pointing at the checkout, are not run).
Installing the dependencies from the index as well took 15 s on the development
machine (and needs the network); this way the install takes about a second and
the whole test a few seconds.
"""

from __future__ import annotations

import asyncio
import configparser
import shutil
import signal
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import aiohttp
import pytest

from operator_server import __version__
from tests.processes import started
from tests.test_daemon import free_port

REPO = Path(__file__).resolve().parent.parent
LEFT_BEHIND = (".git", ".venv", "build", "dist", "data", "*.egg-info", "__pycache__", ".*_cache")


def run(*command: str | Path, cwd: Path) -> str:
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.timeout(300)
async def test_the_wheel_installed_in_a_fresh_venv_serves_a_task(tmp_path: Path) -> None:
    # The checkout's files without what builds and runs leave behind: pip builds a
    # local directory in place, and a stale build/lib would hide a file missing.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*LEFT_BEHIND))
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, ".", cwd=source)
    [wheel] = wheels.glob(f"operator_server-{__version__}-*.whl")
    with zipfile.ZipFile(wheel) as unpacked:
        names = unpacked.namelist()
    assert "operator_server/operators/spawn-directive.txt" in names
    assert any(".dist-info/" in name and name.endswith("LICENSE") for name in names), names

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    pip = (sys.executable, "-m", "pip", "--python", python, "--disable-pip-version-check")
    run(*pip, "install", "-q", "--no-deps", wheel, cwd=tmp_path)
    purelib = run(
        python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path
    )
    (Path(purelib.strip()) / "project-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")

    where = run(
        python, "-c", "import operator_server; print(operator_server.__file__)", cwd=tmp_path
    )
    assert Path(where.strip()).is_relative_to(venv), where

    home = tmp_path / "home"  # the default store goes under $XDG_DATA_HOME
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port = free_port()
    proc = started(
        subprocess.Popen(
            [venv / "bin" / "operator-server", "serve", "--port", str(port), "--secret", "s"],
            cwd=elsewhere,
            env={"PATH": "/usr/bin:/bin", "HOME": str(home), "XDG_DATA_HOME": str(home / "data")},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    )
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(400):
            assert proc.poll() is None, proc.communicate()[0]
            try:
                async with http.get(f"{base}/v1/healthz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        body = {"agent": "echo", "directive": {"n": 1}}
        async with http.post(f"{base}/v1/tasks", json=body) as resp:
            assert resp.status == 202, await resp.text()
            location = resp.headers["Location"]
        async with http.get(f"{base}{location}?wait=10") as resp:
            task = await resp.json()
    assert task["status"] == "passed" and task["result"]["value"] == {"n": 1}
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=15) == 0
    assert (home / "data" / "operator-server" / "operator-server.sqlite").is_file()
    assert not (elsewhere / "data").exists()


def make_dry_run(target: str, venv: Path) -> list[str]:
    """The commands ``make TARGET`` would run in a fresh clone (``-n -B``: none runs)."""
    # --no-print-directory: under ``make test`` this make is a sub-make (MAKELEVEL
    # is inherited), which would otherwise add "Entering/Leaving directory" lines.
    out = run("make", "--no-print-directory", "-n", "-B", f"VENV={venv}", target, cwd=REPO)
    return out.splitlines()


def test_make_run_installs_only_what_the_daemon_needs(tmp_path: Path) -> None:
    installs = [line for line in make_dry_run("run", tmp_path / "v") if "pip install" in line]
    assert installs and all(line.endswith("-e .") for line in installs), installs
    assert f"touch {tmp_path}/v/bin/.installed-run" in make_dry_run("run", tmp_path / "v")
    test = make_dry_run("test", tmp_path / "v")
    assert any(line.endswith("-e '.[test,dev]'") for line in test), test
    assert test[-2:] == [
        f"touch {tmp_path}/v/bin/.installed-test",
        f"{tmp_path}/v/bin/python -m pytest -q -n auto --dist loadfile",
    ]


def test_the_package_has_a_license_and_a_version_past_the_seed() -> None:
    license_text = (REPO / "LICENSE").read_text(encoding="utf-8")
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    assert setup["metadata"]["license"] == "MIT" and license_text.startswith("MIT License")
    assert setup["metadata"]["license_files"] == "LICENSE"
    assert tuple(int(part) for part in __version__.split(".")) > (0, 1, 0)
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"{__version__} now" in changelog and "A cut renames" in changelog


@pytest.mark.parametrize("target", ["run", "demo", "cluster", "screenshots"])
def test_make_takes_the_port_to_listen_on_from_port(target: str, tmp_path: Path) -> None:
    given = run(
        "make", "--no-print-directory", "-n", "-B", f"VENV={tmp_path}/v", "PORT=8123", target,
        cwd=REPO,
    ).splitlines()  # fmt: skip
    assert given[-1].endswith(" --port 8123"), given[-1]
    # Without PORT, run keeps the config file's port and the others take a free one.
    assert "--port" not in make_dry_run(target, tmp_path / "v")[-1]
