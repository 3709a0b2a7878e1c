"""Field types shared by every JSON schema (HTTP bodies and WebSocket frames).

JSON types are taken at their word: a boolean is ``true``/``false`` and an
integer is a JSON integer.  ``1`` is not ``true`` (it must never approve a
hook), and ``"1"``, ``1.5`` or ``true`` are not integers.

Query strings carry text by nature, so they have their own fields that accept
the JSON spelling of the value as text and nothing looser: ``?limit=10``,
``?ok=false``.
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import fields


class StrictBoolean(fields.Boolean):
    """Only JSON ``true``/``false``: ``"yes"`` or ``1`` in a body is a mistake worth naming."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(truthy={True}, falsy={False}, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        # Identity, not ``in``: ``1 in {True}`` holds, because 1 == True in Python.
        if value is True or value is False:
            return value
        raise self.make_error("invalid", input=value)


class StrictInteger(fields.Integer):
    """Only a JSON integer: not ``"1"``, not ``1.5`` (never silently truncated), not ``true``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _validated(self, value: Any) -> int:
        # bool is an int to Python but not to JSON.
        if isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        result: int = super()._validated(value)
        return result


class StrictNumber(fields.Float):
    """Only a JSON number, loaded as a float: not ``"5"``, not ``true``, never NaN."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_nan=False, **kwargs)

    def _validated(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid", input=value)
        result: float = super()._validated(value)
        return result


_DECIMAL = re.compile(r"-?[0-9]+")


class QueryInteger(fields.Integer):
    """A query-string integer: ASCII decimal digits with an optional ``-``, nothing else
    (``int()`` alone would take ``" 1"``, ``"1_0"``, ``"+1"`` and other scripts' digits)."""

    def _validated(self, value: Any) -> int:
        if not isinstance(value, str) or not _DECIMAL.fullmatch(value):
            raise self.make_error("invalid", input=value)
        result: int = super()._validated(value)
        return result


class QueryBoolean(fields.Boolean):
    """A query-string boolean: exactly ``true`` or ``false``, as JSON spells them."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(truthy={"true"}, falsy={"false"}, **kwargs)
