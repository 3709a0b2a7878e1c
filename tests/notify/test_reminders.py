"""A reminder (due soon) and an escalation each send their own notice to
whoever holds the request now, at once, whatever the batch's interval.  The
receiver stands in for a chat service."""

from __future__ import annotations

from typing import Any

from tests.conftest import Server, create_task
from tests.notify.receivers import Receiver
from tests.notify.test_delivery import req_ids
from tests.wsop import connect, eventually, expect, mint

# Long enough that nothing batched could go twice within a test.
BATCH_S = 600


def sections(body: dict[str, Any]) -> str:
    return "\n".join(b["text"]["text"] for b in body["blocks"] if b["type"] == "section")


async def test_an_escalation_tells_the_new_holders_role_at_once(
    server: Server, aiohttp_server: Any
) -> None:
    receiver = Receiver()
    service = await aiohttp_server(receiver.app())
    url = f"http://127.0.0.1:{service.port}/hook"
    client = await server(notify=[{"channel": "chat", "url": url, "batch_s": BATCH_S}])
    sid1, token1 = await mint(client, ["l1"])
    ws1 = await connect(client, sid1, token1)
    sid2, token2 = await mint(client, ["l2"])
    ws2 = await connect(client, sid2, token2)
    chain = {"role": "l1", "escalate": [{"after_s": 0.3, "role": "l2"}]}
    await create_task(client, agent="coder", operator=chain)
    hb = await expect(ws1, "hook_before")
    await expect(ws2, "hook_before")  # escalated
    await eventually(lambda: len(receiver.bodies) == 2, what="the escalation's own message")
    first, moved = (sections(b) for b in receiver.bodies)
    assert "Approval needed" in first and "Held by: l1" in first
    assert "Escalated to you: Approval needed" in moved and "Held by: l2" in moved
    assert req_ids(receiver.bodies[1]) == [hb["req_id"]]
    await ws1.close()
    await ws2.close()


async def test_a_request_due_soon_sends_its_own_reminder(
    server: Server, aiohttp_server: Any
) -> None:
    receiver = Receiver()
    service = await aiohttp_server(receiver.app())
    url = f"http://127.0.0.1:{service.port}/hook"
    client = await server(
        notify=[{"channel": "chat", "url": url, "batch_s": BATCH_S}],
        hook_timeout_s=2,
        remind_at_fraction=0.25,
    )
    sid, token = await mint(client, ["reviewer"])
    ws = await connect(client, sid, token)
    await create_task(client, agent="coder", operator={"role": "reviewer"})
    hb = await expect(ws, "hook_before")
    await eventually(lambda: len(receiver.bodies) == 2, what="the reminder")
    reminder = sections(receiver.bodies[1])
    assert "Reminder, due soon: Approval needed" in reminder
    assert "on_timeout: fail" in reminder and req_ids(receiver.bodies[1]) == [hb["req_id"]]
    await ws.close()


async def test_a_reassignment_and_a_seat_handover_each_tell_the_new_holder(
    server: Server, aiohttp_server: Any
) -> None:
    receiver = Receiver()
    service = await aiohttp_server(receiver.app())
    url = f"http://127.0.0.1:{service.port}/hook"
    client = await server(
        notify=[{"channel": "chat", "url": url, "batch_s": BATCH_S, "roles": ["l2", "l3"]}]
    )
    sid1, token1 = await mint(client, ["l1"])
    ws1 = await connect(client, sid1, token1)
    sid2, token2 = await mint(client, ["l2"])
    ws2 = await connect(client, sid2, token2)
    sid3, token3 = await mint(client, ["l3"])
    ws3 = await connect(client, sid3, token3)
    await create_task(client, agent="coder", operator={"role": "l1"})
    hb = await expect(ws1, "hook_before")
    resp = await client.post(f"/v1/requests/{hb['req_id']}/reassign", json={"role": "l2"})
    assert resp.status == 200, await resp.text()
    await expect(ws2, "hook_before")
    await eventually(lambda: receiver.bodies, what="the reassignment's message")
    reassigned = sections(receiver.bodies[0])
    assert "Reassigned to you: Approval needed" in reassigned and "Held by: l2" in reassigned

    resp = await client.post(
        f"/v1/operators/{sid2}/handover",
        json={"sid": sid3},
        headers={"Authorization": f"Bearer {token2}"},
    )
    assert resp.status == 200, await resp.text()
    await expect(ws3, "hook_before")
    await eventually(lambda: len(receiver.bodies) == 2, what="the handover's message")
    handed = sections(receiver.bodies[1])
    assert "Handed over to you: Approval needed" in handed and "Held by: l3" in handed
    assert req_ids(receiver.bodies[1]) == [hb["req_id"]]
    for ws in (ws1, ws2, ws3):
        await ws.close()
