"""``RequestMoves``, the one primitive every move of a pending request goes
through, between real sessions with real sockets: a move asked for while an
earlier one is still under way (its role being looked up) follows it, so no
step is skipped and the request ends where the last move sent it."""

from __future__ import annotations

import asyncio

from operator_server.operators.moves import RequestMoves
from operator_server.operators.session import OperatorSession, PendingRequest
from operator_server.wire import frames as p
from tests.conftest import Server, directory_of, engine_of
from tests.wsop import connect, expect, mint


async def test_a_move_asked_for_during_another_follows_it_and_no_step_is_skipped(
    server: Server,
) -> None:
    client = await server()
    directory = directory_of(client)
    seated = {}
    for role in ("l1", "l2", "l3"):
        sid, token = await mint(client, roles=[role])
        seated[role] = (directory.sessions[sid], await connect(client, sid, token))
    gate = asyncio.Event()

    async def slow_lookup(role: str) -> OperatorSession | None:
        """The real lookup, once the test lets it go on (a store round trip, say)."""
        await gate.wait()
        sid = engine_of(client).resolution.roles.resolve(role)
        return directory.sessions.get(sid) if sid else None

    moves = RequestMoves(slow_lookup, engine_of(client).background.spawn)
    req_id = "op-x-hb-1"
    frame = p.hook_before_frame(req_id, "t-1", "coder", 1, None)
    req = PendingRequest(req_id, "hook_before", "t-1", frame, asyncio.Future())
    first, ws1 = seated["l1"]
    assert await first.adopt(req)
    assert (await expect(ws1, "hook_before"))["req_id"] == req_id

    assert moves.move(req, "l2", "escalated")
    assert (await expect(ws1, "cancel"))["reason"] == "escalated"
    # The next step comes due while l2 is still being looked up.
    assert moves.move(req, "l3", "escalated")
    gate.set()
    second, ws2 = seated["l2"]
    third, ws3 = seated["l3"]
    assert (await expect(ws2, "hook_before"))["req_id"] == req_id  # l2's step happened
    assert (await expect(ws2, "cancel"))["reason"] == "escalated"
    assert (await expect(ws3, "hook_before"))["req_id"] == req_id
    assert req.holder is third and req_id in third.pending
    assert req_id not in first.pending and req_id not in second.pending
    assert not req.moving
    # The last holder's reply is the issuer's; the one it left gets already_moved.
    await ws3.send_json({"type": "hook_ack", "req_id": req_id, "ok": True})
    assert (await req.future)[0] == "hook_ack"
    await ws2.send_json({"type": "hook_ack", "req_id": req_id, "ok": False})
    assert (await expect(ws2, "error"))["code"] == "already_moved"
