"""Webhooks against a receiver running on loopback: signed, retried, resumed, allow-listed."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from operator_server.config import ConfigError, load_settings
from operator_server.wire import json
from operator_server.wire.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, verify
from tests.conftest import Server, create_task, engine_of, wait_task
from tests.test_daemon import start_daemon
from tests.wsop import eventually

SECRET = "whsec-test"
HOOKS = {
    "webhook_secret": SECRET,
    "webhook_allow_hosts": ["127.0.0.1"],
    "webhook_backoff_s": 0.05,
}


@dataclass
class Receiver:
    url: str
    answers: list[int] = field(default_factory=list)  # statuses to give, then 200
    got: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    hold: asyncio.Event | None = None  # when set: hang each request until it is set


Receivers = Callable[[], Awaitable[Receiver]]


@pytest.fixture
async def receivers() -> AsyncIterator[Receivers]:
    """Makes receivers, each a real HTTP server on its own loopback port."""
    servers: list[TestServer] = []

    async def make() -> Receiver:
        box: list[Receiver] = []

        async def hook(request: web.Request) -> web.Response:
            rec = box[0]
            body = await request.read()
            rec.got.append((body, dict(request.headers)))
            if rec.hold is not None:
                await rec.hold.wait()
            return web.Response(status=rec.answers.pop(0) if rec.answers else 200)

        app = web.Application()
        app.router.add_post("/hook", hook)
        srv = TestServer(app, host="127.0.0.1")
        await srv.start_server()
        servers.append(srv)
        box.append(Receiver(str(srv.make_url("/hook"))))
        return box[0]

    yield make
    for srv in servers:
        await srv.close()


@pytest.fixture
async def receiver(receivers: Receivers) -> Receiver:
    return await receivers()


async def settled(client: Any, task_id: str, within: float = 10) -> dict[str, Any]:
    """The task's callback once its delivery is over (delivered or given up):
    no delivery row is left, so no further try can come."""
    store = engine_of(client).store
    for _ in range(int(within / 0.02)):
        if task_id not in {d.task_id for d in await store.next_deliveries(1000)}:
            return (await wait_task(client, task_id))["callback"]  # type: ignore[no-any-return]
        await asyncio.sleep(0.02)
    raise AssertionError(f"the delivery of {task_id} did not settle within {within}s")


async def test_the_final_task_is_posted_with_a_signature_that_verifies(
    server: Server, receiver: Receiver
) -> None:
    client = await server(**HOOKS)
    task = await create_task(client, agent="echo", callback_url=receiver.url)
    await eventually(lambda: len(receiver.got) == 1, what="the delivery")
    body, headers = receiver.got[0]
    # As a receiver would check it, with nothing of ours: HMAC-SHA256 of the exact body.
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Operator-Server-Signature"] == f"sha256={expected}"
    assert verify(SECRET, body, headers[SIGNATURE_HEADER])
    assert not verify("another secret", body, headers[SIGNATURE_HEADER])
    uuid.UUID(headers[DELIVERY_HEADER])
    sent = json.loads(body)
    assert (sent["id"], sent["status"]) == (task["id"], "passed")

    async def delivered() -> dict[str, Any]:
        return (await wait_task(client, task["id"]))["callback"]  # type: ignore[no-any-return]

    for _ in range(100):
        if (callback := await delivered())["delivered_at"] is not None:
            break
        await asyncio.sleep(0.02)
    assert callback["url"] == receiver.url
    assert (callback["attempts"], callback["last_error"]) == (1, None)


async def test_a_task_cancelled_before_its_run_took_a_step_is_delivered_too(
    server: Server, receiver: Receiver
) -> None:
    """Its end is written by the engine's settle path (nothing there can
    wait), not the usual one: the delivery must be owed all the same."""
    client = await server(**HOOKS)
    engine = engine_of(client)
    task = await engine.submit(agent="echo", directive="d", callback_url=receiver.url)
    assert await engine.cancel(task.id, "changed my mind")  # before the run's first step
    await eventually(lambda: len(receiver.got) == 1, what="the delivery")
    sent = json.loads(receiver.got[0][0])
    assert (sent["id"], sent["status"]) == (task.id, "cancelled")
    assert sent["error"]["message"] == "changed my mind"


async def test_a_500_then_a_200_makes_exactly_two_deliveries(
    server: Server, receiver: Receiver
) -> None:
    receiver.answers = [500]
    client = await server(**HOOKS)
    task = await create_task(client, agent="echo", callback_url=receiver.url)
    await eventually(lambda: len(receiver.got) == 2, what="the retry")
    for _ in range(200):
        callback = (await wait_task(client, task["id"]))["callback"]
        if callback["delivered_at"] is not None:
            break
        await asyncio.sleep(0.02)
    assert callback["attempts"] == 2 and callback["last_error"] is None
    # Both tries are one delivery: the receiver can drop the duplicate.
    assert receiver.got[0][1][DELIVERY_HEADER] == receiver.got[1][1][DELIVERY_HEADER]
    await client.close()  # nothing is left to send
    assert len(receiver.got) == 2


async def test_a_receiver_that_does_not_answer_in_time_is_retried(
    server: Server, receiver: Receiver
) -> None:
    receiver.hold = asyncio.Event()  # every request hangs until the test lets it go
    client = await server(**HOOKS, webhook_timeout_s=0.3)
    task = await create_task(client, agent="echo", callback_url=receiver.url)
    # A second try arrives only once the first one timed out.
    await eventually(lambda: len(receiver.got) == 2, what="the retry after a timeout")
    receiver.hold.set()
    for _ in range(200):
        callback = (await wait_task(client, task["id"]))["callback"]
        if callback["delivered_at"] is not None:
            break
        await asyncio.sleep(0.02)
    assert callback["attempts"] == 2 and callback["delivered_at"] is not None
    assert receiver.got[0][1][DELIVERY_HEADER] == receiver.got[1][1][DELIVERY_HEADER]


async def test_deliveries_give_up_after_webhook_max_attempts(
    server: Server, receiver: Receiver
) -> None:
    receiver.answers = [500] * 10
    client = await server(**HOOKS, webhook_max_attempts=3)
    task = await create_task(client, agent="echo", callback_url=receiver.url)
    # Watched until the delivery is over, not until the third try: a fourth
    # would otherwise go unseen.
    callback = await settled(client, task["id"])
    assert callback["delivered_at"] is None and callback["last_error"] == "HTTP 500"
    assert callback["attempts"] == 3
    assert len(receiver.got) == 3


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",  # a host not in the allow-list
        "http://127.0.0.1.evil.example/hook",
        "ftp://127.0.0.1/hook",  # not http(s)
        "not a url",
    ],
)
async def test_a_callback_url_outside_the_allow_list_is_400(server: Server, url: str) -> None:
    client = await server(**HOOKS)
    resp = await client.post(
        "/v1/tasks", json={"agent": "echo", "directive": "x", "callback_url": url}
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "callback_not_allowed"


async def test_callbacks_are_refused_while_no_webhook_secret_is_set(server: Server) -> None:
    client = await server(webhook_allow_hosts=["127.0.0.1"])
    resp = await client.post(
        "/v1/tasks",
        json={"agent": "echo", "directive": "x", "callback_url": "http://127.0.0.1/hook"},
    )
    assert resp.status == 400
    assert "webhook_secret" in (await resp.json())["error"]["message"]


def killable_sender(tmp_path: Path) -> tuple[str, ...]:
    """A daemon on a file store whose one try to the local receiver hangs (60 s
    timeout) until the test kills it, retrying after 0.05 s."""
    return (
        "--secret",
        "s",
        "--store-path",
        str(tmp_path / "d.sqlite"),
        "--webhook-secret",
        SECRET,
        "--webhook-allow-hosts",
        "127.0.0.1",
        "--webhook-timeout-s",
        "60",
        "--webhook-backoff-s",
        "0.05",
    )


async def test_a_delivery_pending_at_sigkill_is_made_after_the_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.hold = asyncio.Event()  # the first try hangs: in flight when the daemon dies
    # The try cut short was counted: the retry waits the usual backoff.
    args = killable_sender(tmp_path)
    first = await start_daemon(*args)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{first.base}/v1/tasks",
                json={"agent": "echo", "directive": "x", "callback_url": receiver.url},
            ) as resp:
                assert resp.status == 202
                task_id = (await resp.json())["id"]
            await eventually(lambda: len(receiver.got) == 1, what="the first try")
            first.proc.kill()
            first.proc.wait()
            receiver.hold.set()
            receiver.hold = None

            second = await start_daemon(*args)
            try:
                await eventually(lambda: len(receiver.got) == 2, within=10, what="the retry")
                body, headers = receiver.got[1]
                assert verify(SECRET, body, headers[SIGNATURE_HEADER])
                assert json.loads(body)["id"] == task_id
                for _ in range(200):
                    async with http.get(f"{second.base}/v1/tasks/{task_id}") as resp:
                        callback = (await resp.json())["callback"]
                    if callback["delivered_at"] is not None:
                        break
                    await asyncio.sleep(0.02)
                assert callback["delivered_at"] is not None
                assert callback["attempts"] == 2  # the try cut short by the kill counts
            finally:
                second.proc.kill()
                second.proc.wait()
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
            first.proc.wait()


async def test_with_a_secret_but_an_empty_allow_list_no_callback_is_accepted(
    server: Server,
) -> None:
    """Empty means none, not any."""
    client = await server(webhook_secret=SECRET)
    for url in ("http://127.0.0.1/hook", "https://hooks.example.com/x"):
        resp = await client.post(
            "/v1/tasks", json={"agent": "echo", "directive": "x", "callback_url": url}
        )
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "callback_not_allowed"


async def test_a_host_port_entry_allows_that_port_only(server: Server, receiver: Receiver) -> None:
    port = URL(receiver.url).port
    assert port is not None
    client = await server(**{**HOOKS, "webhook_allow_hosts": [f"127.0.0.1:{port}"]})
    task = await create_task(client, agent="echo", callback_url=receiver.url)
    callback = await settled(client, task["id"])
    assert callback["delivered_at"] is not None and len(receiver.got) == 1
    for other in (f"http://127.0.0.1:{port + 1}/hook", "http://127.0.0.1/hook"):
        resp = await client.post(
            "/v1/tasks", json={"agent": "echo", "directive": "x", "callback_url": other}
        )
        assert resp.status == 400, other
        assert (await resp.json())["error"]["code"] == "callback_not_allowed"


@pytest.mark.parametrize("entry", ["host:port", "host:0", "host:70000", "[::1", "a/b", ""])
def test_a_malformed_allow_list_entry_stops_start_up(entry: str) -> None:
    with pytest.raises(ConfigError, match="webhook_allow_hosts"):
        load_settings(env={}, overrides={"webhook_allow_hosts": [entry]})


def test_allow_list_entries_are_kept_in_one_spelling() -> None:
    settings = load_settings(
        env={},
        overrides={"webhook_allow_hosts": ["Hooks.Example.com", "[::1]:8443", "10.0.0.1:80"]},
    )
    assert settings.webhook_allow_hosts == ("hooks.example.com", "[::1]:8443", "10.0.0.1:80")


async def test_a_name_that_resolves_to_loopback_is_not_delivered_to_unless_allowed(
    server: Server, receiver: Receiver
) -> None:
    """``localhost`` is allow-listed by name, but resolves to a loopback
    address: refused at the connection, where the address is what is used."""
    by_name = str(URL(receiver.url).with_host("localhost"))
    hooks = {**HOOKS, "webhook_allow_hosts": ["localhost"], "webhook_max_attempts": 2}
    client = await server(**hooks)
    task = await create_task(client, agent="echo", callback_url=by_name)
    callback = await settled(client, task["id"])
    assert callback["delivered_at"] is None and callback["attempts"] == 2
    assert "refused" in callback["last_error"] and "127.0.0.1" in callback["last_error"]
    assert receiver.got == []

    allowed = await server(**hooks, webhook_allow_private=True)
    task = await create_task(allowed, agent="echo", callback_url=by_name)
    callback = await settled(allowed, task["id"])
    assert callback["delivered_at"] is not None and len(receiver.got) == 1


async def test_a_receiver_that_answers_at_once_is_not_kept_behind_hanging_ones(
    server: Server, receivers: Receivers
) -> None:
    hanging, quick = await receivers(), await receivers()
    hanging.hold = asyncio.Event()
    client = await server(**HOOKS, webhook_timeout_s=60)
    for _ in range(24):
        await create_task(client, agent="echo", callback_url=hanging.url)
    await eventually(lambda: len(hanging.got) >= 8, what="the hanging receiver's tries")
    task = await create_task(client, agent="echo", callback_url=quick.url)
    callback = await settled(client, task["id"], within=8)
    assert callback["delivered_at"] is not None and len(quick.got) == 1
    assert len(hanging.got) < 24  # one receiver gets a bounded share of the tries
    hanging.hold.set()


async def test_a_try_cut_short_by_sigkill_is_counted_and_never_exceeds_max_attempts(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.hold = asyncio.Event()  # the only try hangs: in flight when the daemon dies
    args = (*killable_sender(tmp_path), "--webhook-max-attempts", "1")
    first = await start_daemon(*args)
    second = None
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{first.base}/v1/tasks",
                json={"agent": "echo", "directive": "x", "callback_url": receiver.url},
            ) as resp:
                assert resp.status == 202
                task_id = (await resp.json())["id"]
            await eventually(lambda: len(receiver.got) == 1, what="the first try")
            first.proc.kill()
            first.proc.wait()
            receiver.hold.set()
            receiver.hold = None

            second = await start_daemon(*args)
            callback: dict[str, Any] = {}
            for _ in range(250):
                async with http.get(f"{second.base}/v1/tasks/{task_id}") as resp:
                    callback = (await resp.json())["callback"]
                if callback["last_error"] is not None or callback["delivered_at"] is not None:
                    break
                await asyncio.sleep(0.02)
            assert callback["delivered_at"] is None, "a second try was made"
            assert callback["attempts"] == 1 and "cut short" in callback["last_error"]
            await asyncio.sleep(0.3)  # room for a wrong extra try to arrive
            assert len(receiver.got) == 1
    finally:
        for daemon in (first, second):
            if daemon is not None and daemon.proc.poll() is None:
                daemon.proc.kill()
                daemon.proc.wait()
