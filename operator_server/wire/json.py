"""The one JSON reader and encoder: HTTP bodies, WebSocket frames, stored rows.

orjson reads first; whatever it refuses, and any text with a 19-digit run
(orjson would read a past-64-bit integer as a float), goes to the standard
library's ``json``, which keeps big integers exact and says why it refuses.
Either way, with the guards hostile input needs:

* **Nesting is bounded.**  The depth is measured on the raw text before it is
  parsed (brackets outside strings), so neither parsing, validation, encoding
  nor a later load from the store can ever recurse deeply.  A ``RecursionError``
  is still caught, as a last line, and reported as too deep.
* **Only standard JSON.**  ``NaN``, ``Infinity``, ``-Infinity`` and numbers
  that overflow a float (``1e400``) are refused: they could not be served back
  as valid JSON.
* **Only valid Unicode.**  A lone UTF-16 surrogate (``"\\ud800"``) cannot be
  stored or encoded as UTF-8; it is refused naming where it is.

Depth counts arrays and objects from the outside: ``{}`` is 1, ``{"a": [1]}``
is 2.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from itertools import accumulate
from typing import Any

import orjson

from operator_server.errors import Code

# The shipped default for ``max_json_depth``.
DEFAULT_MAX_DEPTH = 64
# The largest ``max_json_depth`` a config may set.
MAX_CONFIG_DEPTH = 256
# What a stored row may nest: a record wraps accepted values a few levels deeper
# (task -> attempts -> outputs -> value -> original), and a row written under a
# larger ``max_json_depth`` must still load.  Far below the interpreter's
# recursion limit, so encoding such a value can never recurse too deep.
STORED_MAX_DEPTH = 2 * MAX_CONFIG_DEPTH

# A JSON string, possessive so that no input makes it backtrack.
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
# Opening bracket -> +1, closing -> -1 (0xff read as a signed byte).
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
# Only a \u escape can make a lone surrogate out of UTF-8 text; a str handed in
# by Python code may carry one directly.
_SURROGATE_HINT = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# orjson reads integers past 64 bits as floats (the standard library keeps them
# exact): text with a run of 19 digits anywhere takes the standard library.
_LONG_DIGITS = re.compile(r"[0-9]{19}")


class JsonError(ValueError):
    """Input that is not acceptable JSON; ``code`` is ``bad_json``, ``too_deep``
    or ``bad_request`` (a lone surrogate, ``path`` names where)."""

    def __init__(self, code: Code, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.path = path


def depth_of_text(text: str) -> int:
    """How deep the arrays and objects of JSON ``text`` nest (0 for a scalar).

    Exact for valid JSON; linear in the text and done by the regex engine, not
    by a Python loop per character.
    """
    structural = _NOT_BRACKET.sub("", _STRING.sub("", text))
    steps = array("b", structural.encode("ascii").translate(_STEPS))
    return max(accumulate(steps), default=0)


def _refuse_constant(name: str) -> Any:
    raise JsonError(Code.BAD_JSON, f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonError(Code.BAD_JSON, f"the number {text[:40]} is too large for a double")
    return value


def loads(raw: str | bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Parse ``raw`` (UTF-8 when bytes), or raise ``JsonError`` saying why not."""
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise JsonError(Code.BAD_JSON, f"not valid UTF-8: {exc}") from None
    else:
        text = raw
    # Counting brackets is cheap; only text that could be too deep is scanned.
    if text.count("[") + text.count("{") > max_depth and depth_of_text(text) > max_depth:
        raise JsonError(Code.TOO_DEEP, f"nested deeper than max_json_depth ({max_depth})")
    try:
        # orjson first (a fraction of the cost, and it refuses NaN, Infinity,
        # overflowing numbers and lone surrogates as we do); whatever it refuses
        # goes to the standard library, which accepts or says why not.  A test
        # holds the two to the same values.
        if _LONG_DIGITS.search(text) is None:
            try:
                return _checked(text, orjson.loads(text))
            except orjson.JSONDecodeError:
                pass
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except JsonError:
        raise
    except RecursionError:
        raise JsonError(Code.TOO_DEEP, f"nested deeper than max_json_depth ({max_depth})") from None
    except ValueError as exc:  # JSONDecodeError, and ints past Python's digit limit
        raise JsonError(Code.BAD_JSON, f"not valid JSON: {exc}") from None
    return _checked(text, value)


def _checked(text: str, value: Any) -> Any:
    if _SURROGATE_HINT.search(text):
        path = lone_surrogate_at(value)
        if path is not None:
            raise JsonError(
                Code.BAD_REQUEST,
                f"{path}: contains a lone UTF-16 surrogate; strings must be valid Unicode",
                path,
            )
    return value


def lone_surrogate_at(value: Any) -> str | None:
    """Where in ``value`` a string (or key) holds a lone surrogate; None if nowhere.

    Iterative, so any depth is safe.  Paths read ``desc``, ``operator.role``,
    ``roles[2]``; ``body`` for the value itself.
    """
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return path or "body"
        elif isinstance(item, dict):
            for key, sub in item.items():
                where = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and _SURROGATE.search(key):
                    return f"{path or 'body'} (a key)"
                stack.append((where, sub))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", sub) for i, sub in enumerate(item))
    return None


def dumps_bytes(value: Any) -> bytes:
    """Compact standard JSON as UTF-8, by orjson when it can.

    orjson encodes several times faster than the standard library (JSON
    encoding was the largest single cost per task on the hot path: responses,
    frames, stored records and events).  It refuses integers past 64 bits and
    nesting past 255, both of which a stored value may hold; those take the
    standard library.  Every value written here was read through ``loads``,
    so it holds no NaN (which orjson would write as ``null``).
    """
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return dumps(value).encode()


def dumps(value: Any) -> str:
    """Compact standard JSON; ``JsonError`` for what must never be written
    (a non-finite number, nesting past what ``loads`` accepts back)."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except RecursionError:
        raise JsonError(Code.TOO_DEEP, "value nests too deep to encode") from None
    except ValueError as exc:
        raise JsonError(Code.BAD_JSON, f"cannot encode: {exc}") from None
