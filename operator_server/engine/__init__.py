"""The engine: tasks and their runs, dispatch through the middleware chain, capabilities."""

from operator_server.engine.engine import Engine
from operator_server.engine.faces import (
    AttemptContext,
    HookVerdict,
    Kind,
    Operator,
    OperatorInfo,
    SeniorBridge,
    SpawnHook,
    WorkerResult,
)

__all__ = [
    "AttemptContext",
    "Engine",
    "HookVerdict",
    "Kind",
    "Operator",
    "OperatorInfo",
    "SeniorBridge",
    "SpawnHook",
    "WorkerResult",
]
