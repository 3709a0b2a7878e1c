"""Task ids: their shape, and the creation millisecond they lead with."""

from __future__ import annotations

import time

from operator_server.engine.tasks import new_task_id


def test_task_ids_keep_their_shape_and_lead_with_their_creation_millisecond() -> None:
    before = int(time.time() * 1000)
    ids = [new_task_id() for _ in range(200)]
    after = int(time.time() * 1000)
    for task_id in ids:
        assert task_id.startswith("t-") and len(task_id) == 34
        assert before <= int(task_id[2:14], 16) <= after
        int(task_id[14:], 16)
    assert len(set(ids)) == len(ids)
