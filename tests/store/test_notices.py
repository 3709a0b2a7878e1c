"""Notification rows on every store: queued once, cut into a message, and
settled; what a restart finds is what is still owed."""

from __future__ import annotations

import dataclasses

from operator_server.store import Notice, NoticeMessage, Store
from tests.store.test_contract import store  # noqa: F401  (the fixture: every backend)


def notice(nid: str, at: float) -> Notice:
    return Notice(nid, "rule|email:a@example.com", "node-1", at, {"req_id": nid, "n": [1]})


async def test_notices_queue_once_are_cut_into_a_message_and_go_with_it_when_sent(
    store: Store,  # noqa: F811
) -> None:
    await store.put_notices([notice("n1", 1.0), notice("n2", 2.0)])
    await store.put_notices([dataclasses.replace(notice("n1", 9.0), data={"changed": True})])
    notices, messages = await store.load_notices("node-1")
    assert [(n.id, n.queued_at, n.data, n.message_id) for n in notices] == [
        ("n1", 1.0, {"req_id": "n1", "n": [1]}, None),
        ("n2", 2.0, {"req_id": "n2", "n": [1]}, None),
    ]
    assert messages == []

    cut = NoticeMessage("m1", "rule|email:a@example.com", "node-1", 3.0, 3.0, data={"l": 1})
    await store.cut_notice_message(cut, ["n1"])
    notices, messages = await store.load_notices("node-1")
    assert [(n.id, n.message_id) for n in notices] == [("n1", "m1"), ("n2", None)]
    assert messages == [cut]

    tried = dataclasses.replace(cut, due_at=10.0, attempts=1, last_error="HTTP 500")
    await store.record_notice_message(tried)
    assert (await store.load_notices("node-1"))[1] == [tried]

    await store.record_notice_message(dataclasses.replace(tried, due_at=None, last_error=None))
    notices, messages = await store.load_notices("node-1")
    assert [n.id for n in notices] == ["n2"] and messages == []


async def test_a_message_given_up_takes_its_notices_and_is_no_longer_tried(
    store: Store,  # noqa: F811
) -> None:
    await store.put_notices([notice("n1", 1.0)])
    cut = NoticeMessage("m1", "b", "node-1", 3.0, 3.0)
    await store.cut_notice_message(cut, ["n1"])
    await store.record_notice_message(
        dataclasses.replace(cut, due_at=None, attempts=3, last_error="HTTP 503")
    )
    assert await store.load_notices("node-1") == ([], [])


async def test_messages_given_up_go_after_the_retention_oldest_first_those_owed_stay(
    store: Store,  # noqa: F811
) -> None:
    owed = NoticeMessage("m-owed", "b", "node-1", 1.0, 1.0)
    await store.cut_notice_message(owed, [])
    for mid, at in (("m-new", 50.0), ("m-old", 2.0), ("m-older", 1.5)):
        cut = NoticeMessage(mid, "b", "node-1", at, at)
        await store.cut_notice_message(cut, [])
        await store.record_notice_message(
            dataclasses.replace(cut, due_at=None, attempts=3, last_error="HTTP 503")
        )
    assert await store.delete_given_up(10.0, 1) == 1  # the oldest first, one per batch
    assert await store.delete_given_up(10.0, 100) == 1
    assert await store.delete_given_up(10.0, 100) == 0  # m-new is younger than the cutoff
    assert await store.delete_given_up(100.0, 100) == 1
    assert (await store.load_notices("node-1"))[1] == [owed]  # still owed: never deleted
