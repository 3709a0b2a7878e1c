"""A worker's result answered 200 is on disk: a real daemon process killed
(SIGKILL) right after the 200 still shows it when it comes back."""

from __future__ import annotations

import signal
from pathlib import Path

import aiohttp

from tests.test_daemon import start_daemon


async def test_a_result_answered_200_survives_a_sigkill_right_after_the_answer(
    tmp_path: Path,
) -> None:
    store = str(tmp_path / "kill.sqlite")
    args = ("--secret", "s", "--log-level", "warning", "--store-path", store)
    first = await start_daemon(*args)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{first.base}/v1/operators", json={"roles": ["main"]}) as r:
                op = await r.json()
            ws = await http.ws_connect(
                f"{first.base}/v1/operators/{op['sid']}/ws",
                headers={"Authorization": f"Bearer {op['token']}"},
            )
            body = {"agent": "coder", "directive": "x", "operator": {"role": "main"}}
            async with http.post(f"{first.base}/v1/tasks", json=body) as r:
                assert r.status == 202
                task = await r.json()
            hook = await ws.receive_json(timeout=10)
            assert hook["type"] == "hook_before"
            await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
            spawn = await ws.receive_json(timeout=10)
            assert spawn["type"] == "spawn"
            async with http.post(
                f"{first.base}/v1/worker/result",
                json={"value": {"answer": 42}},
                headers={"Authorization": f"Bearer {spawn['worker_handle']}"},
            ) as r:
                assert r.status == 200, await r.text()
            # Killed the moment the 200 is read: nothing more is written.
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(timeout=15)
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
            first.proc.wait()

    second = await start_daemon(*args)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{second.base}/v1/tasks/{task['id']}") as r,
        ):
            assert r.status == 200
            after = await r.json()
        first_attempt = after["attempts"][0]
        assert first_attempt["error"]["code"] == "interrupted"
        assert [(o["kind"], o["source"], o["value"]) for o in first_attempt["outputs"]] == [
            ("final", "worker", {"answer": 42})
        ]
    finally:
        second.proc.kill()
        second.proc.wait()
