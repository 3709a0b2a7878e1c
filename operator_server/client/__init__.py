"""Client library: seat an operator (``OperatorClient``), do a spawn's work
(``WorkerClient``), drive tasks (``TaskClient``).  Frames come from the server's
own protocol module; there is no second copy of the wire format."""

from operator_server.client.errors import AskDeclined, RequestFailed
from operator_server.client.http import TaskClient, WorkerClient
from operator_server.client.operator import Ack, Halt, OperatorClient

__all__ = [
    "Ack",
    "AskDeclined",
    "Halt",
    "OperatorClient",
    "RequestFailed",
    "TaskClient",
    "WorkerClient",
]
