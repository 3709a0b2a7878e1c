"""What the engine tells observers (notifications) of operator requests.

``RequestReported``: a request that asks someone something was issued
(``type`` "request") or moved on to another holder ("request_moved", its
``fields``: source, to, step, why, waited[, note]).  An observer is called on
the reporting session's own path: it must not block, and what it raises is
logged, never passed on to the request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from operator_server.engine.events import EventType


@dataclass(frozen=True)
class RequestReported:
    type: str
    task_id: str
    req_id: str
    face: str
    sid: str | None
    fields: tuple[Any, ...] = ()


RequestObserver = Callable[[RequestReported], None]
OBSERVED = frozenset({EventType.REQUEST, EventType.REQUEST_MOVED})
