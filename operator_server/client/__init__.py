"""Client library: seat an operator (``OperatorClient``), do a spawn's work
(``WorkerClient``), drive tasks (``TaskClient``).  Frames come from the server's
own protocol module; there is no second copy of the wire format.

Each name is imported when first used (PEP 562): ``operator-server task get``
needs ``TaskClient`` only, and should not pay for the socket frames' schemas
(marshmallow) that ``OperatorClient`` loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from operator_server.client.errors import AskDeclined, RequestFailed
    from operator_server.client.http import TaskClient, WorkerClient
    from operator_server.client.operator import Ack, Halt, OperatorClient

_HOME = {
    "Ack": "operator",
    "AskDeclined": "errors",
    "Halt": "operator",
    "OperatorClient": "operator",
    "RequestFailed": "errors",
    "TaskClient": "http",
    "WorkerClient": "http",
}

__all__ = [
    "Ack",
    "AskDeclined",
    "Halt",
    "OperatorClient",
    "RequestFailed",
    "TaskClient",
    "WorkerClient",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # found once, then an ordinary attribute
    return value
