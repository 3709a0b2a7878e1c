"""Delivery: batching per rule and recipient, retries with backoff counted in
metrics, giving up, and a signed webhook; the request itself never waits on
any of it.  The receivers stand in for a chat service and a webhook endpoint."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp.test_utils import TestClient

from operator_server.appkeys import STORE
from operator_server.store import MemoryStore
from operator_server.wire.webhooks import verify
from tests.conftest import Server, create_task, wait_task
from tests.notify.receivers import Receiver
from tests.wsop import connect, eventually, expect, mint

FAST_RETRY = {"webhook_backoff_s": 0.05, "webhook_backoff_max_s": 0.1}


async def metric(client: TestClient[Any, Any], channel: str, outcome: str) -> float:
    text = await (await client.get("/metrics")).text()
    found = re.search(
        rf'^operator_server_notifications_total{{channel="{channel}",outcome="{outcome}"}} (\S+)$',
        text,
        re.M,
    )
    return float(found.group(1)) if found else 0.0


async def started(
    server: Server, aiohttp_server: Any, receiver: Receiver, rule: dict[str, Any], **settings: Any
) -> tuple[TestClient[Any, Any], Any]:
    service = await aiohttp_server(receiver.app())
    url = f"http://127.0.0.1:{service.port}/hook"
    client = await server(notify=[{"channel": "chat", "url": url, **rule}], **settings)
    sid, token = await mint(client, ["reviewer"])
    return client, await connect(client, sid, token)


async def pending_approval(client: TestClient[Any, Any], ws: Any) -> tuple[dict[str, Any], str]:
    task = await create_task(client, agent="coder", operator={"role": "reviewer"})
    return task, (await expect(ws, "hook_before"))["req_id"]


def req_ids(body: dict[str, Any]) -> list[str]:
    sections = [b["text"]["text"] for b in body["blocks"] if b["type"] == "section"]
    return [m for text in sections for m in re.findall(r"Request: (\S+)", text)]


async def metric_reaches(
    client: TestClient[Any, Any], channel: str, outcome: str, value: float
) -> None:
    """Poll ``GET /metrics`` until the counter shows ``value``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while await metric(client, channel, outcome) != value:
        assert loop.time() < deadline, f"{channel}/{outcome} never reached {value}"
        await asyncio.sleep(0.02)


async def test_requests_within_batch_s_go_in_one_message_after_the_interval(
    server: Server, aiohttp_server: Any
) -> None:
    receiver = Receiver()
    batch_s = 1.0
    client, ws = await started(server, aiohttp_server, receiver, {"batch_s": batch_s})
    _, first = await pending_approval(client, ws)
    await eventually(lambda: receiver.bodies, what="the first message")
    assert set(req_ids(receiver.bodies[0])) == {first}
    # Two more right after it: held until batch_s has passed, then sent together.
    _, second = await pending_approval(client, ws)
    _, third = await pending_approval(client, ws)
    await eventually(lambda: len(receiver.bodies) >= 2, what="the second message")
    assert set(req_ids(receiver.bodies[1])) == {second, third}
    assert receiver.arrived[1] - receiver.arrived[0] >= batch_s * 0.9
    assert len(receiver.bodies) == 2
    await ws.close()


async def test_a_failing_receiver_is_retried_with_the_same_key_counted_and_the_request_goes_on(
    server: Server, aiohttp_server: Any
) -> None:
    receiver = Receiver(fail=2)
    client, ws = await started(
        server, aiohttp_server, receiver, {"batch_s": 0}, webhook_max_attempts=5, **FAST_RETRY
    )
    task, req_id = await pending_approval(client, ws)
    await eventually(lambda: receiver.bodies, what="the message, on its third try")
    assert receiver.tries == 3 and len(set(receiver.keys)) == 1
    assert await metric(client, "chat", "failed") == 2
    assert await metric(client, "chat", "retried") == 2
    assert await metric(client, "chat", "sent") == 1
    # The request never waited on any of it.
    listed = await (await client.get("/v1/requests")).json()
    assert [r["req_id"] for r in listed["requests"]] == [req_id]
    await ws.send_json({"type": "hook_ack", "req_id": req_id, "ok": False, "reason": "no"})
    assert (await wait_task(client, task["id"]))["status"] == "failed"
    await ws.close()


async def test_a_message_is_given_up_after_webhook_max_attempts_with_its_reason_kept(
    server: Server, aiohttp_server: Any
) -> None:
    receiver = Receiver(fail=1000)
    client, ws = await started(
        server, aiohttp_server, receiver, {"batch_s": 0}, webhook_max_attempts=2, **FAST_RETRY
    )
    task, req_id = await pending_approval(client, ws)

    await metric_reaches(client, "chat", "given_up", 1)
    store = client.app[STORE]
    assert isinstance(store, MemoryStore)
    assert [(m.attempts, m.last_error) for m in store.notice_messages.values()] == [(2, "HTTP 500")]
    assert receiver.tries == 2 and await metric(client, "chat", "failed") == 2
    assert await metric(client, "chat", "retried") == 1
    await ws.send_json({"type": "hook_ack", "req_id": req_id, "ok": False, "reason": "no"})
    assert (await wait_task(client, task["id"]))["status"] == "failed"
    await ws.close()


async def test_a_webhook_rule_posts_signed_json_to_an_allow_listed_host(
    server: Server, aiohttp_server: Any
) -> None:
    receiver = Receiver()
    service = await aiohttp_server(receiver.app())
    client = await server(
        notify=[
            {"channel": "webhook", "url": f"http://127.0.0.1:{service.port}/hook", "batch_s": 0}
        ],
        webhook_secret="hook-secret",
        webhook_allow_hosts=["127.0.0.1"],
    )
    sid, token = await mint(client, ["reviewer"])
    ws = await connect(client, sid, token)
    task, req_id = await pending_approval(client, ws)
    await eventually(lambda: receiver.bodies, what="the webhook")
    (body,) = receiver.bodies
    headers = receiver.headers[0]
    assert verify("hook-secret", receiver.raw[0], headers["X-Operator-Server-Signature"])
    assert body["type"] == "notification"
    assert body["idempotency_key"] == headers["X-Operator-Server-Delivery"]
    (request,) = body["requests"]
    assert request["req_id"] == req_id and request["task_id"] == task["id"]
    assert request["kind"] == "hook_before" and request["agent"] == "coder"
    assert request["roles"] == ["reviewer"]
    # A webhook rule names no recipient: its link decides as the principal "link".
    assert "/v1/links/" in request["link"]["url"], request
    assert request["link"]["actions"] == ["approve", "reject"]
    await ws.close()


async def test_a_request_answered_before_its_batch_goes_is_left_out_of_it(
    server: Server, aiohttp_server: Any
) -> None:
    receiver = Receiver()
    client, ws = await started(server, aiohttp_server, receiver, {"batch_s": 1.0})
    await pending_approval(client, ws)
    await eventually(lambda: receiver.bodies, what="the first message")
    _, answered = await pending_approval(client, ws)
    _, waiting = await pending_approval(client, ws)
    await ws.send_json({"type": "hook_ack", "req_id": answered, "ok": False, "reason": "no"})
    await eventually(lambda: len(receiver.bodies) == 2, what="the second message")
    assert req_ids(receiver.bodies[1]) == [waiting]
    await ws.close()


async def test_an_only_unattended_rule_tells_of_requests_no_connected_session_holds(
    server: Server, aiohttp_server: Any
) -> None:
    """The witness rule tells of every request, so once it has told of the
    attended one the other rule has judged it too; that rule's first message
    (nothing else could hold it back for ``batch_s``) is the unattended one."""
    witness, unattended = Receiver(), Receiver()
    urls = [
        f"http://127.0.0.1:{(await aiohttp_server(r.app())).port}/hook"
        for r in (witness, unattended)
    ]
    client = await server(
        notify=[
            {"channel": "chat", "url": urls[0], "batch_s": 0},
            {"channel": "chat", "url": urls[1], "batch_s": 600, "only_unattended": True},
        ]
    )
    sid, token = await mint(client, ["reviewer"])
    ws = await connect(client, sid, token)
    _, attended = await pending_approval(client, ws)
    await eventually(lambda: witness.bodies, what="the witness's message")
    assert req_ids(witness.bodies[0]) == [attended]
    # A role nobody holds: its request waits on no connected session.
    await create_task(client, agent="coder", operator={"role": "nightshift"})
    await eventually(lambda: unattended.bodies, what="the unattended request's message")
    (waiting,) = (await (await client.get("/v1/requests")).json())["requests"][1:]
    assert req_ids(unattended.bodies[0]) == [waiting["req_id"]]
    assert waiting["holder"]["roles"] == ["nightshift"]
    await ws.close()
