"""``DeadlineHeap``: one heap and one sleeping task for every deadline, on a
real event loop.  Entries are placed in the past (due at once) or an hour
ahead (never due during a test); nothing here measures time."""

from __future__ import annotations

import asyncio
import time

from operator_server.background import Background
from operator_server.engine.schedule import DeadlineHeap, TimedSteps

HOUR = 3600


async def _until(done: asyncio.Event) -> None:
    # Only a guard against a hang: every entry awaited here is already due.
    await asyncio.wait_for(done.wait(), 5)


async def test_entries_already_due_run_at_once_in_due_order() -> None:
    background = Background()
    heap = DeadlineHeap(background.spawn)
    ran: list[str] = []
    done = asyncio.Event()
    now = time.time()
    heap.at(now - 1, lambda: (ran.append("third"), done.set()))
    heap.at(now - 3, lambda: ran.append("first"))
    heap.at(now - 2, lambda: ran.append("second"))
    await _until(done)
    assert ran == ["first", "second", "third"]
    assert len(heap) == 0
    await background.close()


async def test_an_entry_earlier_than_the_sleepers_alarm_wakes_it() -> None:
    background = Background()
    heap = DeadlineHeap(background.spawn)
    done = asyncio.Event()
    heap.at(time.time() + HOUR, lambda: None)
    await asyncio.sleep(0)  # the task is asleep until the hour is up
    heap.at(time.time() - 1, done.set)
    await _until(done)
    assert len(heap) == 1  # the hour-long one still waits
    await background.close()


async def test_a_cancelled_entry_never_runs_and_many_cancelled_ones_are_dropped() -> None:
    background = Background()
    heap = DeadlineHeap(background.spawn)
    ran: list[int] = []
    later = [heap.at(time.time() + HOUR, lambda: None) for _ in range(3000)]
    for timer in later[:2500]:
        timer.cancel()
    assert len(heap) == 500
    assert len(heap._heap) < 3000  # compacted, not held until they reach the top
    gone = heap.at(time.time() - 2, lambda: ran.append(1))
    gone.cancel()
    gone.cancel()  # twice is once
    done = asyncio.Event()
    heap.at(time.time() - 1, done.set)
    await _until(done)
    assert ran == [] and len(heap) == 500
    await background.close()


async def test_a_failing_callback_does_not_stop_the_ones_after_it() -> None:
    background = Background()
    heap = DeadlineHeap(background.spawn)
    done = asyncio.Event()
    now = time.time()
    heap.at(now - 2, lambda: 1 / 0)  # type: ignore[func-returns-value]
    heap.at(now - 1, done.set)
    await _until(done)
    await background.close()


async def test_ten_thousand_entries_share_one_background_task_cancelled_at_shutdown() -> None:
    background = Background()
    heap = DeadlineHeap(background.spawn)
    for n in range(10_000):
        heap.at(time.time() + HOUR + n, lambda: None)
    await asyncio.sleep(0)
    sleepers = [t for t in asyncio.all_tasks() if t.get_name() == "deadlines"]
    assert len(sleepers) == 1
    await background.close()
    assert sleepers[0].cancelled()
    # After shutdown nothing is started, and scheduling does not raise.
    heap.at(time.time() - 1, lambda: None)
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "deadlines"]


async def test_a_requests_steps_run_in_time_order_holding_one_entry_at_a_time() -> None:
    background = Background()
    heap = DeadlineHeap(background.spawn)
    ran: list[str] = []
    done = asyncio.Event()
    now = time.time()
    steps = TimedSteps(
        heap,
        [
            (now - 1, lambda: (ran.append("remind"), done.set())),
            (now + HOUR, lambda: ran.append("give up")),
            (now - 2, lambda: ran.append("write")),
        ],
    )
    assert len(heap) == 1
    await _until(done)
    assert ran == ["write", "remind"]
    assert len(heap) == 1  # the last step waits its hour
    steps.cancel()  # the reply came
    assert len(heap) == 0
    await background.close()
    assert ran == ["write", "remind"]
