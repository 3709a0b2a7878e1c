"""A request for a role nobody holds waits, when a notification rule covers
that role, until its deadline: the person told answers over REST (or through
a link), or joins with the role.  Without such a rule it fails at once, as
before.  The receiver stands in for a chat service."""

from __future__ import annotations

import re
from typing import Any

from tests.conftest import Server, create_task, wait_task
from tests.notify.receivers import Receiver, button_urls
from tests.notify.test_delivery import req_ids
from tests.wsop import connect, eventually, expect, mint

# A hook_before, then the local echo agent: a task that needs one approval.
APPROVAL = {"agent": "echo", "directive": "hello", "layers": ["main_ai"]}


async def covered_server(server: Server, aiohttp_server: Any, receiver: Receiver) -> Any:
    service = await aiohttp_server(receiver.app())
    url = f"http://127.0.0.1:{service.port}/hook"
    rule = {"channel": "chat", "url": url, "roles": ["night*"], "kinds": ["hook_before"]}
    return await server(notify=[rule])


async def test_a_request_for_an_unheld_role_a_rule_covers_waits_is_notified_and_answered_over_rest(
    server: Server, aiohttp_server: Any
) -> None:
    receiver = Receiver()
    client = await covered_server(server, aiohttp_server, receiver)
    task = await create_task(client, **APPROVAL, operator={"role": "nightshift"})
    await eventually(lambda: receiver.bodies, what="the notification")
    listed = (await (await client.get("/v1/requests")).json())["requests"]
    (request,) = listed
    assert request["type"] == "hook_before" and request["task_id"] == task["id"]
    assert request["holder"]["roles"] == ["nightshift"] and request["deadline_at"]
    assert req_ids(receiver.bodies[0]) == [request["req_id"]]
    assert (await wait_task(client, task["id"], wait=0))["status"] == "running"

    resp = await client.post(
        f"/v1/requests/{request['req_id']}/reply", json={"type": "hook_ack", "ok": True}
    )
    assert resp.status == 200, await resp.text()
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed", done


async def test_whoever_joins_with_the_role_is_shown_the_waiting_request(
    server: Server, aiohttp_server: Any
) -> None:
    receiver = Receiver()
    client = await covered_server(server, aiohttp_server, receiver)
    task = await create_task(client, **APPROVAL, operator={"role": "nightshift"})
    await eventually(lambda: receiver.bodies, what="the notification")
    (waiting,) = (await (await client.get("/v1/requests")).json())["requests"]
    sid, token = await mint(client, ["nightshift"])
    ws = await connect(client, sid, token)
    hb = await expect(ws, "hook_before")
    assert hb["req_id"] == waiting["req_id"]
    (moved,) = (await (await client.get("/v1/requests")).json())["requests"]
    assert moved["holder"]["sid"] == sid
    await ws.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": True})
    assert (await wait_task(client, task["id"]))["status"] == "passed"
    await ws.close()


async def test_without_a_covering_rule_an_unheld_role_still_fails_at_once(
    server: Server, aiohttp_server: Any
) -> None:
    receiver = Receiver()
    client = await covered_server(server, aiohttp_server, receiver)
    task = await create_task(client, **APPROVAL, operator={"role": "dayshift"})
    done = await wait_task(client, task["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "operator_not_found"
    assert (await (await client.get("/v1/requests")).json())["requests"] == []


async def test_a_rule_for_other_kinds_does_not_make_a_request_wait_with_nobody_told(
    server: Server, aiohttp_server: Any
) -> None:
    """A rule telling of the role's asks only: the task's hook_before would
    wait on the role's seat with no message sent, so it fails at once, as it
    would with no rule, naming what to add."""
    receiver = Receiver()
    service = await aiohttp_server(receiver.app())
    url = f"http://127.0.0.1:{service.port}/hook"
    rule = {"channel": "chat", "url": url, "roles": ["night*"], "kinds": ["ask"]}
    client = await server(notify=[rule])
    task = await create_task(client, **APPROVAL, operator={"role": "nightshift"})
    done = await wait_task(client, task["id"])
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "operator_not_found", done
    assert "hook_before" in done["error"]["message"], done
    assert (await (await client.get("/v1/requests")).json())["requests"] == []
    assert receiver.bodies == []


async def test_a_link_sent_while_the_request_waited_still_decides_it_after_someone_joins(
    server: Server, aiohttp_server: Any
) -> None:
    """The link names no holder while the request waits for its role: the
    session that then joins with the role did not move it away from anyone."""
    receiver = Receiver()
    client = await covered_server(server, aiohttp_server, receiver)
    task = await create_task(client, **APPROVAL, operator={"role": "nightshift"})
    await eventually(lambda: receiver.bodies, what="the notification")
    (url,) = button_urls(receiver.bodies[0])
    sid, token = await mint(client, ["nightshift"])
    ws = await connect(client, sid, token)
    hb = await expect(ws, "hook_before")
    path = url.removeprefix(str(client.make_url("")).rstrip("/"))
    page = await client.get(path, headers={"Accept": "text/html"})
    shown = await page.text()
    assert page.status == 200 and hb["req_id"] in shown, shown
    check = re.search(r'name="check" value="([0-9a-f]+)"', shown)
    assert check is not None
    resp = await client.post(
        path, data={"check": check.group(1), "action": "approve"}, allow_redirects=False
    )
    assert resp.status == 303, await resp.text()
    assert await expect(ws, "cancel") == {
        "type": "cancel",
        "req_id": hb["req_id"],
        "reason": "answered_elsewhere",
    }
    assert (await wait_task(client, task["id"]))["status"] == "passed"
    await ws.close()


async def test_a_request_waiting_for_an_unheld_role_ends_at_its_deadline(
    server: Server, aiohttp_server: Any
) -> None:
    """Nobody answers, nobody joins: the deadline's on-timeout action (fail,
    for a hook_before) ends the wait, as it would for a held request."""
    receiver = Receiver()
    service = await aiohttp_server(receiver.app())
    rule = {"channel": "chat", "url": f"http://127.0.0.1:{service.port}/hook"}
    client = await server(notify=[{**rule, "roles": ["night*"]}], hook_timeout_s=0.5)
    task = await create_task(client, **APPROVAL, operator={"role": "nightshift"})
    await eventually(lambda: receiver.bodies, what="the notification")
    done = await wait_task(client, task["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "operator_timeout", done
    assert (await (await client.get("/v1/requests")).json())["requests"] == []
