"""How the engine builds task events (their wire form is tested in tests/http)."""

from __future__ import annotations

import time

from operator_server.engine.events import EventLog, EventType
from operator_server.engine.tasks import Kind, Task


def test_an_operator_event_spelled_out_holds_what_the_general_builder_holds_in_order() -> None:
    task = Task(
        agent="writer",
        directive="d",
        system=None,
        operator=None,
        layers=(),
        kind=Kind.AUTOMATE,
        max_attempts=1,
    )
    task.start_attempt()
    log = EventLog()
    now = time.time()
    for kind in (EventType.REQUEST, EventType.REPLY):
        fast = log.make_operator(task, kind, now, "r-1", "spawn_hook", "s-1")
        general = log.make(
            task, kind, now, attempt=task.attempt, req_id="r-1", face="spawn_hook", sid="s-1"
        )
        assert (fast.id, fast.task_id, fast.type) == (general.id, general.task_id, general.type)
        assert list(fast.data.items()) == list(general.data.items())
        assert fast.text == general.text
