"""The web console's static files (HTML, CSS, ES modules), shipped in the package.

No build step: what is in ``static/`` is what the browser runs.  ``http/console.py``
serves it.
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
