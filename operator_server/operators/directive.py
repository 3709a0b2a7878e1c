"""The spawn directive: plain text telling an operator how its sub-agent works.

The template ships inside the package (``operator_server/operators/
spawn-directive.txt``, read with ``importlib.resources``), or is the file named
by ``directive_template``.  Placeholders use ``str.format`` syntax; an unknown
placeholder stops start-up instead of failing the first spawn.
"""

from __future__ import annotations

import string
from importlib import resources
from pathlib import Path

PLACEHOLDERS = frozenset({"base_url", "task_id", "attempt", "agent", "worker_handle"})


class DirectiveTemplate:
    def __init__(self, text: str) -> None:
        used = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
        unknown = used - PLACEHOLDERS
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {sorted(unknown)}; allowed: {sorted(PLACEHOLDERS)}"
            )
        self.text = text

    @classmethod
    def from_file(cls, path: Path) -> DirectiveTemplate:
        return cls(path.read_text(encoding="utf-8"))

    @classmethod
    def builtin(cls) -> DirectiveTemplate:
        """The template shipped in the package (``directive_template`` empty)."""
        shipped = resources.files("operator_server.operators").joinpath("spawn-directive.txt")
        return cls(shipped.read_text(encoding="utf-8"))

    def render(
        self, *, base_url: str, task_id: str, attempt: int, agent: str, worker_handle: str
    ) -> str:
        return self.text.format(
            base_url=base_url.rstrip("/"),
            task_id=task_id,
            attempt=attempt,
            agent=agent,
            worker_handle=worker_handle,
        )
