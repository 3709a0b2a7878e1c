"""The client's one error type: a server answer that was not a success."""

from __future__ import annotations

from typing import Any


class RequestFailed(Exception):
    def __init__(self, status: int, code: str, message: str, body: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body
