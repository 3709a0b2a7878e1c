"""``GET /v1/requests`` reads its pages from an index of the sessions'
pending requests (``operators/pending_index.py``) rather than gathering and
sorting all of them.  The list must say what the sessions hold, in issue
order, whatever happened to the requests meanwhile: answered (gone), moved
to another role and back (same place, new holder), held by a session that
was deleted (gone), paged one at a time or filtered."""

from __future__ import annotations

from typing import Any

from aiohttp import ClientWebSocketResponse
from aiohttp.test_utils import TestClient

from tests.auth.test_keys import BOOT
from tests.conftest import Server, directory_of
from tests.operators.test_requests_rest import hooked_task, mint, post_reply, wait_task
from tests.wsop import connect, expect

ADMIN = {"Authorization": f"Bearer {BOOT}"}


async def _listed(client: TestClient[Any, Any], **params: str) -> list[tuple[str, list[str]]]:
    """Every page, ``limit`` at a time: (req_id, holder's roles) in order."""
    out: list[tuple[str, list[str]]] = []
    cursor = None
    while True:
        query = {**params, **({"after": cursor} if cursor else {})}
        resp = await client.get("/v1/requests", params=query, headers=ADMIN)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        out += [(r["req_id"], r["holder"]["roles"]) for r in body["requests"]]
        cursor = body["next"]
        if cursor is None:
            return out


async def _reassign(client: TestClient[Any, Any], req_id: str, **target: str) -> None:
    resp = await client.post(f"/v1/requests/{req_id}/reassign", json=target, headers=ADMIN)
    assert resp.status == 200, await resp.text()


async def test_the_list_shows_what_the_sessions_hold_in_issue_order_after_every_change(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    seats: dict[str, tuple[str, ClientWebSocketResponse]] = {}
    for role in ("main", "review", "night"):
        sid, token = await mint(client, [role])
        seats[role] = (sid, await connect(client, sid, token))
    main = seats["main"][1]
    made = [await hooked_task(client, main) for _ in range(7)]
    ids = [hook["req_id"] for _, hook in made]

    # Answered: gone.  The task fails, so no spawn joins the list.
    status, _ = await post_reply(client, ids[1], {"type": "hook_ack", "ok": False})
    assert status == 200
    await main.send_json({"type": "hook_ack", "req_id": ids[5], "ok": False})
    assert (await wait_task(client, made[5][0]))["status"] == "failed"
    # Moved: listed where it was, under its new holder.
    await _reassign(client, ids[2], role="review")
    assert (await expect(seats["review"][1], "hook_before"))["req_id"] == ids[2]
    # Moved away and back: still in its place, held by main again.
    await _reassign(client, ids[3], role="review")
    await expect(seats["review"][1], "hook_before")
    await _reassign(client, ids[3], role="main")
    # Held by a session that is then deleted: its requests end with it.
    await _reassign(client, ids[6], sid=seats["night"][0])
    await expect(seats["night"][1], "hook_before")
    resp = await client.delete(f"/v1/operators/{seats['night'][0]}", headers=ADMIN)
    assert resp.status in (200, 204), await resp.text()
    assert (await wait_task(client, made[6][0]))["status"] == "failed"

    want = [
        (ids[0], ["main"]),
        (ids[2], ["review"]),
        (ids[3], ["main"]),
        (ids[4], ["main"]),
    ]
    # Nothing stale kept: the index holds what is pending, no more.
    assert len(directory_of(client).pending_index) == len(want)
    for limit in ("1", "2", "3", "50"):
        assert await _listed(client, limit=limit) == want, limit
    assert await _listed(client, limit="1", role="review") == [want[1]]
    assert await _listed(client, limit="1", role="main") == [want[0], want[2], want[3]]
    assert await _listed(client, limit="2", task_id=made[3][0]) == [want[2]]
    # A cursor whose request is gone still pages on from where it was.
    first = await client.get("/v1/requests", params={"limit": "1"}, headers=ADMIN)
    cursor = (await first.json())["next"]
    status, _ = await post_reply(client, ids[0], {"type": "hook_ack", "ok": False})
    assert status == 200
    assert await _listed(client, limit="2", after=cursor) == want[1:]
    for _, ws in seats.values():
        await ws.close()
