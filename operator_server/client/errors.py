"""The client's errors: a server answer that was not a success, and a senior's refusal."""

from __future__ import annotations

from typing import Any


class RequestFailed(Exception):
    def __init__(self, status: int, code: str, message: str, body: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body


class AskDeclined(Exception):
    """The senior declined a worker's ask; ``reason`` is what it said."""

    def __init__(self, ask_id: str, reason: str) -> None:
        super().__init__(f"the senior declined {ask_id}: {reason}")
        self.ask_id = ask_id
        self.reason = reason
