"""wire.json.loads reads with orjson first: it must answer exactly what the
standard-library reader answers (the same value, or the same refusal)."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from operator_server.wire import json as wire_json
from operator_server.wire.json import JsonError

JSON_CHARS = '{}[]":,.-+eE0123456789 \t\n\\/ubfnrtaxlsNIy\ud800\x00\x1f\u00e9'


def by_the_book(text: str) -> tuple[str, Any]:
    """What the reader answered before it had a fast path."""

    def refuse(name: str) -> Any:
        raise ValueError(name)

    def finite(raw: str) -> float:
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError(raw)
        return value

    try:
        value = json.loads(text, parse_constant=refuse, parse_float=finite)
    except (ValueError, RecursionError):
        return ("refused", None)
    if wire_json.lone_surrogate_at(value) is not None:
        return ("refused", None)
    return ("value", value)


def now(text: str) -> tuple[str, Any]:
    try:
        return ("value", wire_json.loads(text, 200))
    except JsonError:
        return ("refused", None)


def same(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    # repr tells 1 from 1.0 and -0.0 from 0.0, which == does not.
    return a[0] == b[0] and repr(a[1]) == repr(b[1])


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=600, deadline=None)
@given(values)
def test_any_json_value_reads_back_as_the_standard_library_reads_it(value: Any) -> None:
    text = json.dumps(value)
    assert same(now(text), by_the_book(text)), text


@settings(max_examples=1500, deadline=None)
@given(st.text(alphabet=JSON_CHARS, max_size=40))
def test_any_text_is_accepted_or_refused_as_the_standard_library_does(text: str) -> None:
    assert same(now(text), by_the_book(text)), repr(text)


def test_the_edges_orjson_reads_differently_take_the_standard_library() -> None:
    for text in [
        "18446744073709551616",  # past 64 bits: orjson would make it a float
        "-9223372036854775809",
        "123456789012345678901234567890",
        "[1e400]",
        "NaN",
        '"\\ud800"',
        '{"a":1,"a":2}',
        "-0",
        "-0.0",
        "1E5",
        '"\\u0000"',
        "\ufeff{}",
    ]:
        assert same(now(text), by_the_book(text)), text
