"""The socket pump's write path: a burst is written corked, then uncorked."""

from __future__ import annotations

import asyncio
import socket

from tests.conftest import Server, directory_of
from tests.needs import unavailable
from tests.wsop import connect, mint, recv


async def test_a_burst_of_frames_is_written_and_the_socket_is_left_uncorked(
    server: Server,
) -> None:
    if not hasattr(socket, "TCP_CORK"):
        unavailable("TCP_CORK is Linux-only")
    client = await server()
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    session = directory_of(client).sessions[sid]
    pump = session._pump
    assert pump is not None and pump._sock is not None
    # Fifty asks at once: the writer finds many frames queued and corks.
    asks = [asyncio.ensure_future(session.ask("t-1", i)) for i in range(50)]
    frames = [await recv(ws) for _ in asks]
    assert sorted(f["question"] for f in frames) == list(range(50))
    for frame in frames:
        await ws.send_json(
            {"type": "answer", "req_id": frame["req_id"], "value": frame["question"]}
        )
    assert await asyncio.gather(*asks) == list(range(50))
    # Left corked, the kernel would hold the next lone frame for up to 200 ms.
    assert pump._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 0
    await ws.close()
