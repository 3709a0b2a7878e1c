"""The fast path is derived from each schema and never disagrees with it.

It may decline (then the schema decides and writes the error), but whatever it
accepts must equal what ``schema.load`` returns, for frames and bodies alike.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError

from operator_server.http.tasks import TaskRequestSchema
from operator_server.http.worker import ResultSchema
from operator_server.operators.login import mint_schema
from operator_server.wire.fastcheck import fast_check

TASK_REQUEST = TaskRequestSchema()
RESULT_BODY = ResultSchema()

ODD = (None, True, False, 0, 1, -1, 2**70, 1.0, 1.5, "", "s", "1", "true", [], {}, ["x"])


def mutations(body: dict[str, Any], depth: int = 2) -> list[dict[str, Any]]:
    """The body, and variants with each key dropped, nulled, retyped, an extra key
    added — recursively inside nested objects, so nested schemas are exercised."""
    out = [body, {**body, "extra": 1}]
    for key, value in body.items():
        out.append({k: v for k, v in body.items() if k != key})
        out.extend({**body, key: odd} for odd in ODD)
        if isinstance(value, dict) and depth:
            out.extend({**body, key: inner} for inner in mutations(value, depth - 1))
        if isinstance(value, list) and value:
            out.extend({**body, key: [*value, odd]} for odd in ODD)
            out.append({**body, key: value + value})
    return out


def agree(schema: Schema, samples: list[dict[str, Any]]) -> int:
    """Assert agreement on every mutation of every sample; how many the fast path took."""
    fast = fast_check(schema)
    assert fast.usable, schema
    taken = 0
    for sample in samples:
        for data in mutations(sample):
            quick = fast(dict(data))
            try:
                slow: Any = schema.load(dict(data))
            except ValidationError:
                slow = None
            if quick is not None:
                assert quick == slow, data
                taken += 1
    return taken


def test_task_bodies_fast_and_slow_agree() -> None:
    samples: list[dict[str, Any]] = [
        {"agent": "echo", "directive": "hi"},
        {
            "agent": "coder",
            "directive": {"spec": [1, 2]},
            "system": "be brief",
            "operator": {"role": "main", "kind": "automate"},
            "layers": ["main_ai", "operator_delegate"],
            "max_attempts": 3,
            "parent_task_id": "t-1",
        },
        {"agent": "a", "directive": 1, "operator": {"sid": "op-1", "spawn_hook": "h"}},
        {"agent": "a", "directive": 1, "layers": ["main_ai", "main_ai"]},
        {"agent": "a", "directive": 1, "operator": {"sid": "s", "role": "r"}},
        {"agent": "a", "directive": 1, "operator": {}},
    ]
    assert agree(TASK_REQUEST, samples) > len(samples)


def test_worker_results_and_mints_fast_and_slow_agree() -> None:
    assert agree(RESULT_BODY, [{"value": {"a": 1}, "ok": False, "task_id": "t-1"}]) > 1
    mint = mint_schema(3, 10)
    samples = [
        {"roles": ["a", "b"], "desc": "laptop"},
        {"roles": ["a", "a"]},
        {"roles": ["a", "b", "c", "d"]},
        {"roles": ["x" * 11]},
        {"roles": [" "]},
    ]
    assert agree(mint, samples) > 1


def test_the_fast_path_takes_the_common_bodies() -> None:
    """It is not a path that always declines."""
    loaded = fast_check(TASK_REQUEST)(
        {"agent": "coder", "directive": "x", "operator": {"role": "main"}, "max_attempts": 2}
    )
    assert loaded is not None and loaded["operator"].role == "main"
