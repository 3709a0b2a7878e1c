"""SIGKILL with a notification still owed: the restarted daemon delivers it,
with the idempotency key it had before (at least once, never a new message
for the same news).  The receiver stands in for a chat service."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp

from tests.notify.receivers import Receiver
from tests.notify.test_delivery import req_ids
from tests.test_daemon import start_daemon
from tests.wsop import eventually


def config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "notify.toml"
    path.write_text(
        'secret = "s"\n'
        'log_format = "json"\n'
        "webhook_backoff_s = 0.2\n"
        "webhook_backoff_max_s = 0.4\n"
        "webhook_max_attempts = 100\n"
        f'[store]\npath = "{tmp_path / "d.sqlite"}"\n'
        f'[[notify]]\nchannel = "chat"\nurl = "{url}"\nbatch_s = 0\n'
    )
    return path


async def test_a_message_owed_when_the_daemon_is_killed_is_delivered_after_restart_with_its_key(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    receiver = Receiver(fail=10_000)  # down: every try fails until the restart
    service = await aiohttp_server(receiver.app())
    path = config(tmp_path, f"http://127.0.0.1:{service.port}/hook")
    first = await start_daemon("--config", str(path))
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{first.base}/v1/operators", json={"roles": ["reviewer"]}) as resp:
            op = await resp.json()
        ws = await http.ws_connect(
            f"{first.base}/v1/operators/{op['sid']}/ws",
            headers={"Authorization": f"Bearer {op['token']}"},
        )
        body = {"agent": "coder", "directive": "x", "operator": {"role": "reviewer"}}
        async with http.post(f"{first.base}/v1/tasks", json=body) as resp:
            assert resp.status == 202
        hb = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
        assert hb["type"] == "hook_before"
        await eventually(lambda: receiver.tries >= 1, what="a failed try")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
        await ws.close()
    (key,) = set(receiver.keys)
    receiver.fail = 0

    second = await start_daemon("--config", str(path))
    try:
        await eventually(
            lambda: key in [h.get("X-Operator-Server-Delivery") for h in receiver.headers],
            within=30,
            what="the owed message, after the restart",
        )
        delivered = [
            b
            for b, h in zip(receiver.bodies, receiver.headers, strict=True)
            if h.get("X-Operator-Server-Delivery") == key
        ]
        assert len(delivered) == 1
        assert hb["req_id"] in json.dumps(delivered[0])
    finally:
        second.proc.terminate()
        assert second.proc.wait(timeout=15) == 0


async def test_news_held_for_the_next_batch_when_killed_is_told_after_restart_of_the_live_request(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    receiver = Receiver()
    service = await aiohttp_server(receiver.app())
    path = config(tmp_path, f"http://127.0.0.1:{service.port}/hook")
    # Long enough to kill the daemon within it; short enough that a request
    # re-issued a moment after the first message after restart follows soon.
    batch_s = 5
    path.write_text(path.read_text().replace("batch_s = 0", f"batch_s = {batch_s}"))
    first = await start_daemon("--config", str(path))
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{first.base}/v1/operators", json={"roles": ["reviewer"]}) as resp:
            op = await resp.json()
        ws = await http.ws_connect(
            f"{first.base}/v1/operators/{op['sid']}/ws",
            headers={"Authorization": f"Bearer {op['token']}"},
        )
        body = {"agent": "coder", "directive": "x", "operator": {"role": "reviewer"}}
        for _ in range(2):
            async with http.post(f"{first.base}/v1/tasks", json=body) as resp:
                assert resp.status == 202
            assert json.loads((await asyncio.wait_for(ws.receive(), 5)).data)["type"] == (
                "hook_before"
            )
        await eventually(lambda: receiver.bodies, what="the first message")
        first.proc.send_signal(signal.SIGKILL)  # the second request's news waits for its batch
        first.proc.wait(timeout=10)
        await ws.close()
    assert len(receiver.bodies) == 1

    second = await start_daemon("--config", str(path))
    try:
        # Recovery re-issues both requests under new req_ids: what is told is
        # what can be answered now, at once (a restart forgets the batch's
        # clock); the dead request held for the batch is told to nobody.
        async with aiohttp.ClientSession() as http:

            async def live() -> set[str]:
                async with http.get(f"{second.base}/v1/requests") as resp:
                    return {r["req_id"] for r in (await resp.json())["requests"]}

            reissued: set[str] = set()
            for _ in range(500):
                if len(reissued := await live()) == 2:
                    break
                await asyncio.sleep(0.02)
            assert len(reissued) == 2

            # The first message may come again (the kill can fall between its
            # send and its record: at least once), under its own key.
            first_key = receiver.headers[0]["X-Operator-Server-Delivery"]

            def told() -> set[str]:
                return {
                    r
                    for body, headers in zip(receiver.bodies, receiver.headers, strict=True)
                    if headers["X-Operator-Server-Delivery"] != first_key
                    for r in req_ids(body)
                }

            await eventually(lambda: told() >= reissued, within=30, what="told after restart")
            assert told() == reissued
    finally:
        second.proc.terminate()
        assert second.proc.wait(timeout=15) == 0
