"""Field types shared by every JSON schema (HTTP bodies and WebSocket frames)."""

from __future__ import annotations

from typing import Any

from marshmallow import fields


class StrictBoolean(fields.Boolean):
    """Only JSON ``true``/``false``: ``"yes"`` or ``1`` in a body is a mistake worth naming."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(truthy={True}, falsy={False}, **kwargs)
