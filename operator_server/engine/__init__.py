"""The engine: tasks and their runs, dispatch through the middleware chain, capabilities."""

from operator_server.engine.engine import Engine
from operator_server.engine.faces import (
    AttemptContext,
    Backend,
    HookVerdict,
    Kind,
    OperatorInfo,
    SeniorBridge,
    SpawnHook,
    WorkerResult,
)

__all__ = [
    "AttemptContext",
    "Backend",
    "Engine",
    "HookVerdict",
    "Kind",
    "OperatorInfo",
    "SeniorBridge",
    "SpawnHook",
    "WorkerResult",
]
