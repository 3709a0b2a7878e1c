"""One contract, every store: what the engine relies on, checked on each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from operator_server.store import (
    LinkUse,
    MemoryStore,
    PostgresStore,
    SessionRecord,
    SQLiteStore,
    Store,
    TaskEvent,
)
from tests.pg import new_database
from tests.wsop import eventually


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    backend: Store
    if request.param == "memory":
        backend = MemoryStore()
    elif request.param == "sqlite":
        backend = SQLiteStore(tmp_path / "contract.sqlite")
    else:
        backend = PostgresStore(await new_database(request.getfixturevalue("postgres")))
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


def record(task_id: str, status: str, updated_at: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {
        "id": task_id,
        "status": status,
        "created_at": 1.0,
        "updated_at": updated_at,
        **extra,
    }


async def ids(
    store: Store, status: str | None = None, after: int = 0, limit: int = 100
) -> list[str]:
    return [item.row.key for item in await store.list_tasks(status, after, limit)]


async def test_a_task_reads_back_as_written_and_an_update_keeps_its_place(store: Store) -> None:
    await store.put_task(record("t-a", "running", directive={"x": [1, 2]}))
    await store.put_task(record("t-b", "pending"))
    await store.put_task(record("t-a", "passed", updated_at=2.0, directive={"x": [1, 2]}))
    row = await store.get_task("t-a")
    assert row is not None and row.value["status"] == "passed"
    assert row.value["directive"] == {"x": [1, 2]}
    assert await store.get_task("t-missing") is None
    assert await ids(store) == ["t-a", "t-b"]


async def test_pages_seek_by_seq_and_filter_by_status(store: Store) -> None:
    for n in range(6):
        await store.put_task(record(f"t-{n}", "passed" if n % 2 else "running"))
    first = await store.list_tasks("passed", 0, 2)
    assert [i.row.key for i in first] == ["t-1", "t-3"]
    assert await ids(store, "passed", first[-1].seq) == ["t-5"]
    seq_3 = await store.task_seq("t-3")
    assert seq_3 == first[-1].seq
    assert await ids(store, None, seq_3) == ["t-4", "t-5"]
    assert await store.task_seq("t-missing") is None


async def test_counts_and_load_by_status(store: Store) -> None:
    for n, status in enumerate(["pending", "running", "passed", "passed", "failed"]):
        await store.put_task(record(f"t-{n}", status))
    assert await store.count_tasks() == {"pending": 1, "running": 1, "passed": 2, "failed": 1}
    live = await store.load_tasks(["pending", "running"])
    assert sorted(r.key for r in live) == ["t-0", "t-1"]


async def test_retention_deletes_old_finished_tasks_oldest_first_in_batches(store: Store) -> None:
    await store.put_task(record("t-old-1", "passed", updated_at=10))
    await store.put_task(record("t-old-2", "failed", updated_at=11))
    await store.put_task(record("t-old-3", "passed", updated_at=12))
    await store.put_task(record("t-new", "passed", updated_at=100))
    await store.put_task(record("t-live", "running", updated_at=1))
    terminal = ["passed", "failed", "blocked", "cancelled"]
    assert await store.delete_finished(terminal, 50, 2) == {"passed": 1, "failed": 1}
    assert await store.delete_finished(terminal, 50, 2) == {"passed": 1}
    assert await store.delete_finished(terminal, 50, 2) == {}
    assert await ids(store) == ["t-new", "t-live"]


async def test_a_seq_is_never_reused_after_the_newest_task_is_deleted(store: Store) -> None:
    await store.put_task(record("t-keep", "running"))
    await store.put_task(record("t-newest", "passed", updated_at=1))
    gone_seq = await store.task_seq("t-newest")
    assert gone_seq is not None
    assert await store.delete_finished(["passed"], 50, 10) == {"passed": 1}
    await store.put_task(record("t-next", "pending"))
    next_seq = await store.task_seq("t-next")
    # A cursor handed out for the deleted task still means "after it".
    assert next_seq is not None and next_seq > gone_seq
    assert await ids(store, None, gone_seq) == ["t-next"]


async def test_sessions_round_trip_and_touch(store: Store) -> None:
    rec = SessionRecord("op-1", "ab" * 32, ["main"], "desk", 1.0, 1.0)
    await store.put_session(rec)
    store.touch_session_soon("op-1", 5.0)
    await store.put_task(record("t-barrier", "pending"))  # orders after the touch
    (row,) = await store.load_sessions()
    assert row.value.roles == ["main"] and row.value.last_seen_at == 5.0
    await store.delete_session("op-1")
    assert await store.load_sessions() == []


async def test_a_read_sees_every_soon_write_made_before_it(store: Store) -> None:
    store.put_task_soon(record("t-soon", "pending"))
    store.put_task_soon(record("t-soon", "running", updated_at=2.0))
    row = await store.get_task("t-soon")
    assert row is not None and row.value["status"] == "running"
    assert await store.count_tasks() == {"running": 1}


def event(event_id: int, task_id: str, type: str = "status") -> TaskEvent:
    return TaskEvent(event_id, task_id, type, 1_764_000_000.25, "writer", "pending")


async def test_an_event_reads_back_as_it_was_built_in_either_stored_form(store: Store) -> None:
    built = [
        TaskEvent(0, "t-a", "created", 1_764_000_000.0, "writer", "pending"),
        TaskEvent(
            0,
            "t-a",
            "attempt_ended",
            1_764_000_001.2345,
            "writer",
            "running",
            (1, "failed", "interrupted"),
        ),
        TaskEvent(
            0, "t-a", "output", 1_764_000_002.5, "writer", "running", (1, "final", "worker", True)
        ),
        TaskEvent(
            0,
            "t-a",
            "request",
            1_764_000_003.0,
            "writer",
            "running",
            (2, "r-1", "spawn_hook", "s-1"),
        ),
        TaskEvent(0, "t-a", "status", 1_764_000_004.0, "writer", "passed", (None,)),
        # As rows written before the compact form hold it: the object itself.
        TaskEvent.of_data(0, "t-a", {"task_id": "t-a", "type": "status", "at": "x", "extra": [1]}),
    ]
    expected = [(e.type, e.data, e.text) for e in built]
    await store.put_task(record("t-a", "pending"), built)
    loaded = await store.load_events(0, "t-a", 10)
    assert [(e.type, e.data, e.text) for e in loaded] == expected
    assert loaded[1].data == {
        "task_id": "t-a",
        "type": "attempt_ended",
        "at": "2025-11-24T16:00:01.234Z",
        "agent": "writer",
        "status": "running",
        "attempt": 1,
        "outcome": "failed",
        "error_code": "interrupted",
    }
    assert "error_code" not in loaded[4].data  # a None field is left out


@pytest.mark.parametrize(
    "value",
    [
        ["status", 1e300, "writer", "passed"],
        ["status", -1, "writer", "passed"],
        ["status", "now", "writer", "passed"],
        ["status", 1.0, "writer"],
        ["status", 1.0, "writer", "passed", "e", "too many"],
        "status",
    ],
)
def test_a_stored_event_that_could_not_be_streamed_is_refused_on_reading(value: object) -> None:
    with pytest.raises(ValueError):
        TaskEvent.from_stored(1, "t-a", value)


async def test_events_commit_with_their_write_reach_the_observer_in_order_and_page_by_id(
    store: Store,
) -> None:
    seen: list[int] = []
    store.observe_events(lambda events: seen.extend(e.id for e in events))
    await store.put_task(record("t-a", "pending"), [event(1, "t-a", "created")])
    store.put_events_soon([event(2, "t-a", "output")])
    store.put_task_soon(record("t-b", "pending"), [event(3, "t-b")])
    await store.put_task(record("t-a", "running"), [event(4, "t-a"), event(5, "t-a")])
    assert seen == [1, 2, 3, 4, 5]
    # The store numbers events as it queues them.  An event with no task write
    # may wait for its task's next one (SQLite), so it can come after another
    # task's, never out of its own task's order.
    of_a = await store.load_events(0, "t-a", 100)
    assert [e.type for e in of_a] == ["created", "output", "status", "status"]
    assert [e.id for e in of_a] in ([1, 2, 4, 5], [1, 3, 4, 5])
    assert [e.id for e in await store.load_events(2, None, 2)] == [3, 4]
    first = (await store.load_events(0, None, 1))[0]
    assert (first.task_id, first.type, first.data["type"]) == ("t-a", "created", "created")
    assert await store.last_event_id() == 5


async def test_paging_by_event_id_can_stop_and_resume_inside_one_writes_events(
    store: Store,
) -> None:
    three = [event(0, "t-a", "created"), event(0, "t-a"), event(0, "t-a")]
    await store.put_task(record("t-a", "pending"), three)
    await store.put_task(record("t-b", "pending"), [event(0, "t-b", "created")])
    assert [e.id for e in await store.load_events(0, None, 1)] == [1]
    assert [e.id for e in await store.load_events(1, None, 2)] == [2, 3]
    assert [e.id for e in await store.load_events(2, None, 5)] == [3, 4]
    assert [e.id for e in await store.load_events(1, "t-a", 5)] == [2, 3]
    assert [e.data["type"] for e in await store.load_events(0, "t-a", 5)] == [
        "created",
        "status",
        "status",
    ]


async def test_an_event_with_no_task_write_is_committed_and_observed_on_its_own(
    store: Store,
) -> None:
    seen: list[TaskEvent] = []
    store.observe_events(seen.extend)
    store.put_events_soon([event(0, "t-a", "output")])
    await eventually(lambda: len(seen) == 1, what="the event observed")
    assert [(e.id, e.type) for e in await store.load_events(0, "t-a", 5)] == [(1, "output")]


async def test_retention_takes_a_tasks_events_and_delivery_with_it(store: Store) -> None:
    await store.put_task(record("t-old", "passed"), [event(1, "t-old")], deliver_at=5.0)
    await store.put_task(record("t-new", "passed", updated_at=9.0), [event(2, "t-new")])
    assert [d.task_id for d in await store.next_deliveries(10)] == ["t-old"]
    assert await store.delete_finished(["passed"], 5.0, 10) == {"passed": 1}
    assert [e.id for e in await store.load_events(0, None, 10)] == [2]
    assert await store.next_deliveries(10) == []


async def test_a_delivery_is_rescheduled_then_done_and_never_resurrects_a_deleted_task(
    store: Store,
) -> None:
    await store.put_task(record("t-a", "passed"), deliver_at=3.0)
    store.put_task_soon(record("t-b", "passed"), deliver_at=1.0)  # an end nobody waits on
    assert [(d.task_id, d.due_at) for d in await store.next_deliveries(10)] == [
        ("t-b", 1.0),
        ("t-a", 3.0),
    ]
    await store.record_delivery("t-b", record("t-b", "passed", tries=1), 7.0)
    assert [d.task_id for d in await store.next_deliveries(10)] == ["t-a", "t-b"]
    row = await store.get_task("t-b")
    assert row is not None and row.value["tries"] == 1
    await store.record_delivery("t-b", record("t-b", "passed", tries=2), None)
    assert [d.task_id for d in await store.next_deliveries(10)] == ["t-a"]
    await store.delete_finished(["passed"], 10.0, 10)
    await store.record_delivery("t-a", record("t-a", "passed"), None)
    assert await store.get_task("t-a") is None


def attempts(*numbers: int, **inline: Any) -> list[dict[str, Any]]:
    return [{"number": n, "tail": [], **inline} for n in numbers]


def ask(ask_id: str, status: str = "pending", question: Any = "q") -> dict[str, Any]:
    return {"ask_id": ask_id, "status": status, "question": question, "answer": None}


async def test_asks_are_stored_apart_and_read_back_in_their_attempts_in_order(
    store: Store,
) -> None:
    await store.put_task(record("t-a", "running", attempts=attempts(1, 2)))
    store.put_ask_soon("t-a", 1, ask("a1"))
    store.put_ask_soon("t-a", 2, ask("b1", question={"deep": [1, 2]}))
    store.put_ask_soon("t-a", 1, ask("a2"))
    store.put_ask_soon("t-a", 1, ask("a1", "answered"))  # changed: keeps its place
    store.put_ask_soon("t-a", 3, ask("c1"))  # an attempt the task does not have
    # A write of the task itself (which never carries asks) keeps them.
    store.put_task_soon(record("t-a", "running", updated_at=2.0, attempts=attempts(1, 2)))
    expected = [
        {"number": 1, "tail": [], "asks": [ask("a1", "answered"), ask("a2")]},
        {"number": 2, "tail": [], "asks": [ask("b1", question={"deep": [1, 2]})]},
    ]
    row = await store.get_task("t-a")
    assert row is not None and row.value["attempts"] == expected
    [listed] = await store.list_tasks(None, 0, 10)
    assert listed.row.value == row.value
    [loaded] = await store.load_tasks(["running"])
    assert loaded.value == row.value


async def test_a_row_with_its_asks_inline_reads_as_written_until_some_are_stored_apart(
    store: Store,
) -> None:
    """Rows written before asks were stored apart carry them inline."""
    await store.put_task(record("t-old", "passed", attempts=attempts(1, asks=[ask("x")])))
    row = await store.get_task("t-old")
    assert row is not None and row.value["attempts"][0]["asks"] == [ask("x")]
    store.put_ask_soon("t-old", 1, ask("x", "withdrawn"))
    row = await store.get_task("t-old")
    assert row is not None and row.value["attempts"][0]["asks"] == [ask("x", "withdrawn")]


async def test_retention_takes_a_tasks_asks_with_it(store: Store) -> None:
    await store.put_task(record("t-old", "passed", attempts=attempts(1)))
    store.put_ask_soon("t-old", 1, ask("gone"))
    assert await store.delete_finished(["passed"], 5.0, 10) == {"passed": 1}
    # Written again under the same id, it has no asks left over.
    await store.put_task(record("t-old", "passed", attempts=attempts(1)))
    row = await store.get_task("t-old")
    assert row is not None and "asks" not in row.value["attempts"][0]


def output(value: Any, kind: str = "final", source: str = "worker") -> list[Any]:
    return [kind, source, value, True, 5.0]


async def test_outputs_are_stored_apart_and_read_back_in_their_attempts_in_order(
    store: Store,
) -> None:
    await store.put_task(record("t-a", "running", attempts=[{"number": 1}, {"number": 2}]))
    await store.put_output("t-a", 1, output("first"))
    store.put_output_soon("t-a", 2, output({"deep": [1, 2]}))
    store.put_output_soon("t-a", 1, output("ack", "output", "ack"))
    await store.put_output("t-a", 3, output("lost"))  # an attempt the task does not have
    # A write of the task itself (which never carries outputs) keeps them.
    store.put_task_soon(record("t-a", "passed", updated_at=2.0, attempts=attempts(1, 2)))
    expected = [
        {"number": 1, "tail": [output("first"), output("ack", "output", "ack")]},
        {"number": 2, "tail": [output({"deep": [1, 2]})]},
    ]
    row = await store.get_task("t-a")
    assert row is not None and row.value["attempts"] == expected
    [listed] = await store.list_tasks(None, 0, 10)
    assert listed.row.value == row.value
    [loaded] = await store.load_tasks(["passed"])
    assert loaded.value == row.value


async def test_a_row_with_its_outputs_inline_reads_as_written(store: Store) -> None:
    """Rows written before outputs were stored apart carry them inline."""
    await store.put_task(record("t-old", "passed", attempts=attempts(1, tail=[output("x")])))
    row = await store.get_task("t-old")
    assert row is not None and row.value["attempts"][0]["tail"] == [output("x")]


async def test_retention_takes_a_tasks_outputs_with_it(store: Store) -> None:
    await store.put_task(record("t-old", "passed", attempts=[{"number": 1}]))
    await store.put_output("t-old", 1, output("gone"))
    assert await store.delete_finished(["passed"], 5.0, 10) == {"passed": 1}
    # Written again under the same id, it has no outputs left over.
    await store.put_task(record("t-old", "passed", attempts=[{"number": 1}]))
    row = await store.get_task("t-old")
    assert row is not None and "tail" not in row.value["attempts"][0]


async def test_a_link_is_claimed_once_and_a_released_claim_can_be_made_again(store: Store) -> None:
    first = LinkUse("l-1", "r-1", "approve", "email:a@example.org", 10.0)
    assert await store.link_use("l-1") is None
    assert await store.claim_link(first) is None
    again = LinkUse("l-1", "r-1", "reject", "link", 11.0)
    assert await store.claim_link(again) == first
    assert await store.link_use("l-1") == first
    await store.release_link("l-1")
    assert await store.link_use("l-1") is None
    assert await store.claim_link(again) is None
    assert await store.link_use("l-1") == again


async def test_the_link_key_is_made_once_and_kept(store: Store) -> None:
    assert await store.link_key("first") == "first"
    assert await store.link_key("second") == "first"
