"""What a test does when something it needs is not on this machine.

Outside CI it is skipped, naming what is missing. Under ``CI=true`` it fails:
``.ci/run`` installs every system package the suite needs, so something
missing there means tests have quietly stopped running.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"must run in CI: {reason}")
    pytest.skip(reason)
