"""Worker credentials over real HTTP: every way a capability is refused."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from operator_server.app import build_app, listening_on
from operator_server.engine import AttemptContext, WorkerResult
from operator_server.store import Events, Fenced, SQLiteStore, StoreError
from operator_server.store.base import Audit
from tests.conftest import Server, create_task, engine_of, make_settings, wait_task
from tests.fakes import FakeOperator
from tests.wsop import eventually, handler_suspended, slow_body


class Parked:
    """An operator whose attempts wait until released, exposing their credentials."""

    def __init__(self) -> None:
        self.contexts: list[AttemptContext] = []
        self.arrived = asyncio.Condition()
        self.release: dict[int, asyncio.Future[WorkerResult | None]] = {}

    async def execute(self, ctx: AttemptContext, cap: str) -> WorkerResult | None:
        fut: asyncio.Future[WorkerResult | None] = asyncio.get_running_loop().create_future()
        self.release[ctx.attempt] = fut
        async with self.arrived:
            self.contexts.append(ctx)
            self.arrived.notify_all()
        return await fut

    async def attempt(self, n: int) -> AttemptContext:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.contexts) >= n), 3)
        return self.contexts[n - 1]


async def start_parked(client: TestClient[Any, Any], **task: Any) -> tuple[Parked, dict[str, Any]]:
    parked = Parked()
    engine_of(client).resolution.register("op-parked", FakeOperator(execute=parked.execute))
    body = {"agent": "coder", "operator": {"sid": "op-parked"}, "layers": ["operator_delegate"]}
    body.update(task)
    return parked, await create_task(client, **body)


def bearer(cred: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {cred}"}


async def error_of(resp: Any) -> tuple[int, str]:
    body = await resp.json()
    return resp.status, body["error"]["code"]


async def test_token_and_handle_both_fetch_the_prompt(server: Server) -> None:
    client = await server()
    parked, task = await start_parked(client, directive={"spec": 1}, system="be brief")
    ctx = await parked.attempt(1)
    for cred in (ctx.capability_token, ctx.worker_handle):
        resp = await client.get("/v1/worker/prompt", headers=bearer(cred))
        assert resp.status == 200
        assert await resp.json() == {
            "task_id": task["id"],
            "attempt": 1,
            "agent": "coder",
            "system": "be brief",
            "prompt": {"spec": 1},
        }
    # 128 random bits, then the task it is for (where a cluster node sends it).
    secret, task = ctx.worker_handle.removeprefix("wh-").split(".")
    assert len(secret) == 32 and task == ctx.task_id
    parked.release[1].set_result(WorkerResult("ok"))


async def test_missing_credential_is_401(server: Server) -> None:
    client = await server()
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}):
        resp = await client.get("/v1/worker/prompt", headers=headers)
        assert await error_of(resp) == (401, "missing_credential")


async def test_tampered_signature_is_401(server: Server) -> None:
    client = await server()
    parked, _ = await start_parked(client)
    ctx = await parked.attempt(1)
    claims = json.loads(base64.urlsafe_b64decode(ctx.capability_token + "=="))
    claims["task_id"] = "t-someone-else"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    resp = await client.get("/v1/worker/prompt", headers=bearer(forged))
    assert await error_of(resp) == (401, "invalid_capability")
    garbage = await client.get("/v1/worker/prompt", headers=bearer("not-base64-!!"))
    assert await error_of(garbage) == (401, "invalid_capability")
    parked.release[1].set_result(WorkerResult("ok"))


async def test_expired_capability_is_401(server: Server) -> None:
    client = await server()
    parked, _ = await start_parked(client)
    ctx = await parked.attempt(1)
    # Move the issuer's clock past the TTL instead of sleeping for half an hour.
    expire_at = json.loads(base64.urlsafe_b64decode(ctx.capability_token + "=="))["expire_at"]
    engine_of(client).capabilities._clock = lambda: expire_at + 1
    for cred in (ctx.capability_token, ctx.worker_handle):
        resp = await client.get("/v1/worker/prompt", headers=bearer(cred))
        assert await error_of(resp) == (401, "capability_expired")
    parked.release[1].set_result(WorkerResult("ok"))


async def test_wrong_task_is_403(server: Server) -> None:
    client = await server()
    parked, task = await start_parked(client)
    other = await create_task(client, agent="echo")
    ctx = await parked.attempt(1)
    resp = await client.get(
        "/v1/worker/prompt", params={"task_id": other["id"]}, headers=bearer(ctx.worker_handle)
    )
    assert await error_of(resp) == (403, "wrong_task")
    resp = await client.post(
        "/v1/worker/result",
        json={"value": 1, "task_id": other["id"]},
        headers=bearer(ctx.capability_token),
    )
    assert await error_of(resp) == (403, "wrong_task")
    ok = await client.get(
        "/v1/worker/prompt", params={"task_id": task["id"]}, headers=bearer(ctx.worker_handle)
    )
    assert ok.status == 200
    parked.release[1].set_result(WorkerResult("ok"))


async def test_a_late_worker_of_attempt_1_cannot_write_into_attempt_2(server: Server) -> None:
    client = await server()
    parked, task = await start_parked(client, max_attempts=2)
    first = await parked.attempt(1)
    parked.release[1].set_result(WorkerResult("no", ok=False))
    second = await parked.attempt(2)
    resp = await client.post(
        "/v1/worker/result", json={"value": "late"}, headers=bearer(first.capability_token)
    )
    assert await error_of(resp) == (403, "wrong_attempt")
    # The handle of attempt 1 is gone altogether.
    resp = await client.post(
        "/v1/worker/result", json={"value": "late"}, headers=bearer(first.worker_handle)
    )
    assert await error_of(resp) == (401, "unknown_handle")
    posted = await client.post(
        "/v1/worker/result", json={"value": "fresh"}, headers=bearer(second.worker_handle)
    )
    assert posted.status == 200
    assert await posted.json() == {"accepted": True, "task_id": task["id"], "attempt": 2}
    parked.release[2].set_result(None)
    done = await wait_task(client, task["id"])
    assert done["result"] == {"value": "fresh", "ok": True}


async def test_a_capability_used_after_its_attempt_ended_is_403(server: Server) -> None:
    client = await server()
    parked, task = await start_parked(client)
    ctx = await parked.attempt(1)
    parked.release[1].set_result(WorkerResult("done"))
    await wait_task(client, task["id"])
    resp = await client.get("/v1/worker/prompt", headers=bearer(ctx.capability_token))
    assert await error_of(resp) == (403, "capability_revoked")
    resp = await client.get("/v1/worker/prompt", headers=bearer(ctx.worker_handle))
    assert await error_of(resp) == (401, "unknown_handle")


async def test_unknown_handle_is_401(server: Server) -> None:
    client = await server()
    resp = await client.get("/v1/worker/prompt", headers=bearer("wh-" + "0" * 32))
    assert await error_of(resp) == (401, "unknown_handle")


async def test_submit_takes_raw_text_as_the_final_result(server: Server) -> None:
    client = await server()
    parked, task = await start_parked(client)
    ctx = await parked.attempt(1)
    resp = await client.post(
        "/v1/worker/submit",
        params={"ok": "false"},
        data=b"could not finish\n",
        headers=bearer(ctx.worker_handle),
    )
    assert resp.status == 200
    parked.release[1].set_result(None)
    done = await wait_task(client, task["id"])
    assert done["status"] == "blocked"
    assert done["result"] == {"value": "could not finish\n", "ok": False}


async def test_the_last_worker_final_decides(server: Server) -> None:
    client = await server()
    parked, task = await start_parked(client)
    ctx = await parked.attempt(1)
    for value in ("draft", "final"):
        resp = await client.post(
            "/v1/worker/result", json={"value": value}, headers=bearer(ctx.worker_handle)
        )
        assert resp.status == 200
    parked.release[1].set_result(WorkerResult("ack"))
    done = await wait_task(client, task["id"])
    assert done["result"]["value"] == "final"


def test_a_minted_token_carries_every_claim_field_and_verifies() -> None:
    from dataclasses import asdict

    from operator_server.engine.capabilities import CapabilityIssuer

    issuer = CapabilityIssuer(b"k", 60)
    grant = issuer.mint("t-1", 2)
    raw = grant.token + "=" * (-len(grant.token) % 4)
    signed = json.loads(base64.urlsafe_b64decode(raw))
    expected = dict(asdict(grant.claims), scopes=list(grant.claims.scopes))
    assert {k: v for k, v in signed.items() if k != "sig"} == expected
    assert issuer.verify(grant.token, "prompt", "t-1") == grant.claims


class EndsHeld(SQLiteStore):
    """A real SQLite store whose writes of an attempt's end wait until released:
    the window in which the decided attempt's end is being written, held open."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def put_task(
        self,
        record: dict[str, Any],
        events: Events = (),
        *,
        deliver_at: float | None = None,
        audit: Audit = (),
        ended_as: dict[str, Any] | None = None,
    ) -> None:
        attempts = record["attempts"]
        if attempts and attempts[-1]["status"] != "running":
            self.holding.set()
            await self.release.wait()
        await super().put_task(
            record, events, deliver_at=deliver_at, audit=audit, ended_as=ended_as
        )


async def test_a_result_arriving_while_the_decided_end_is_written_is_refused_409(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    path = str(tmp_path / "held.sqlite")
    store = EndsHeld(path)
    app = build_app(make_settings(**{"store.path": path}), store=store)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    listening_on(app, str(client.make_url("")).rstrip("/"))
    parked, task = await start_parked(client)
    ctx = await parked.attempt(1)

    # A worker's post whose credential is checked now, its body sent later.
    body_sent = asyncio.Event()
    posting = asyncio.create_task(
        client.post(
            "/v1/worker/result",
            data=slow_body(b'{"value": "la', body_sent, b'te"}'),
            headers=bearer(ctx.worker_handle),
        )
    )
    await eventually(lambda: handler_suspended("read_json"), what="the body being read")
    # The operator decides the attempt; its end is being written (held).
    parked.release[1].set_result(WorkerResult("decided"))
    await asyncio.wait_for(store.holding.wait(), 5)
    body_sent.set()
    resp = await posting
    assert resp.status == 409, await resp.text()
    assert await error_of(resp) == (409, "attempt_ended")

    store.release.set()
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed"
    assert done["result"] == {"value": "decided", "ok": True}
    finals = [e for e in done["attempts"][0]["outputs"] if e["kind"] == "final"]
    assert [e["source"] for e in finals] == ["ack"]


class SlowToWithdraw(FakeOperator):
    """A senior that never answers, and takes its time letting go of an ask
    that is withdrawn: the attempt is decided, its asks still being withdrawn."""

    def __init__(self, execute: Any) -> None:
        super().__init__(execute=execute)
        self.asked = asyncio.Event()
        self.withdrawing = asyncio.Event()
        self.let_go = asyncio.Event()

    async def ask(self, task_id: str, question: Any, **_: Any) -> Any:
        self.asked.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.withdrawing.set()
            await self.let_go.wait()
            raise


async def test_a_result_arriving_while_the_decided_attempts_asks_are_withdrawn_is_refused_409(
    server: Server,
) -> None:
    client = await server()
    parked = Parked()
    senior = SlowToWithdraw(parked.execute)
    engine_of(client).resolution.register("op-slow", senior)
    task = await create_task(
        client, agent="coder", operator={"sid": "op-slow"}, layers=["operator_delegate"]
    )
    ctx = await parked.attempt(1)
    asked = await client.post(
        "/v1/worker/ask", json={"question": "?", "timeout_s": 0}, headers=bearer(ctx.worker_handle)
    )
    assert asked.status == 202
    await asyncio.wait_for(senior.asked.wait(), 5)

    body_sent = asyncio.Event()
    posting = asyncio.create_task(
        client.post(
            "/v1/worker/result",
            data=slow_body(b'{"value": "la', body_sent, b'te"}'),
            headers=bearer(ctx.worker_handle),
        )
    )
    await eventually(lambda: handler_suspended("read_json"), what="the body being read")
    # Decided; its open ask is being withdrawn when the body arrives.
    parked.release[1].set_result(WorkerResult("decided"))
    await asyncio.wait_for(senior.withdrawing.wait(), 5)
    body_sent.set()
    resp = await posting
    assert resp.status == 409, await resp.text()
    assert await error_of(resp) == (409, "attempt_ended")

    senior.let_go.set()
    done = await wait_task(client, task["id"])
    assert done["result"] == {"value": "decided", "ok": True}
    finals = [e for e in done["attempts"][0]["outputs"] if e["kind"] == "final"]
    assert [e["source"] for e in finals] == ["ack"]


async def test_a_result_posted_while_the_senior_weighs_the_decided_result_is_refused_409(
    server: Server,
) -> None:
    client = await server()
    parked = Parked()
    senior = SlowToWithdraw(parked.execute)
    engine_of(client).resolution.register("op-slow", senior)
    task = await create_task(
        client,
        agent="coder",
        operator={"sid": "op-slow"},
        layers=["senior_escalation", "operator_delegate"],
    )
    ctx = await parked.attempt(1)
    # The operator's ack decides the tail (ok=false); the senior is asked about it.
    parked.release[1].set_result(WorkerResult("half", ok=False))
    await asyncio.wait_for(senior.asked.wait(), 5)
    resp = await client.post(
        "/v1/worker/result", json={"value": "late"}, headers=bearer(ctx.worker_handle)
    )
    assert resp.status == 409, await resp.text()
    assert await error_of(resp) == (409, "attempt_ended")

    senior.let_go.set()
    assert await engine_of(client).cancel(task["id"], "enough")
    done = await wait_task(client, task["id"])
    assert [e["value"] for e in done["attempts"][0]["outputs"]] == ["half"]


class OutputsHeld(SQLiteStore):
    """A real SQLite store whose writes of a worker's result wait until
    released: the window in which a result is appended but not yet on disk."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def put_output(
        self, task_id: str, attempt: int, output: list[Any], *, audit: Audit = ()
    ) -> None:
        self.holding.set()
        await self.release.wait()
        await super().put_output(task_id, attempt, output, audit=audit)


async def test_a_result_being_written_when_the_operator_acks_is_answered_200_and_decides(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """A worker's result is answered only once it is on disk; the operator's
    ack arriving meanwhile does not decide the attempt without it."""
    path = str(tmp_path / "held.sqlite")
    store = OutputsHeld(path)
    app = build_app(make_settings(**{"store.path": path}), store=store)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    listening_on(app, str(client.make_url("")).rstrip("/"))
    parked, task = await start_parked(client)
    ctx = await parked.attempt(1)

    posting = asyncio.create_task(
        client.post(
            "/v1/worker/result", json={"value": "worker's"}, headers=bearer(ctx.worker_handle)
        )
    )
    await asyncio.wait_for(store.holding.wait(), 5)
    parked.release[1].set_result(WorkerResult("ack"))
    shown = await (await client.get(f"/v1/tasks/{task['id']}", params={"wait": "0.3"})).json()
    assert shown["status"] == "running"  # the decision waits for the result's write
    assert not posting.done()  # ... and so does its 200

    store.release.set()
    resp = await posting
    assert resp.status == 200, await resp.text()
    done = await wait_task(client, task["id"])
    assert done["result"] == {"value": "worker's", "ok": True}
    assert [(e["source"], e["kind"]) for e in done["attempts"][0]["outputs"]] == [
        ("worker", "final"),
        ("ack", "output"),
    ]


class FirstOutputFails(SQLiteStore):
    """A real SQLite store that fails the first output queued with nobody
    waiting (a fault injected at the store's write call, as a full disk
    would fail it) and writes everything else."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.failed = False

    def put_output_soon(
        self, task_id: str, attempt: int, output: list[Any], *, audit: Audit = ()
    ) -> asyncio.Future[None]:
        if self.failed:
            return super().put_output_soon(task_id, attempt, output, audit=audit)
        self.failed = True
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_exception(StoreError("injected: the disk is full"))
        return done


async def test_an_ack_whose_row_failed_is_written_again_before_the_attempts_end(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    path = str(tmp_path / "fails.sqlite")
    store = FirstOutputFails(path)
    app = build_app(make_settings(**{"store.path": path}), store=store)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    listening_on(app, str(client.make_url("")).rstrip("/"))
    parked, task = await start_parked(client)
    await parked.attempt(1)
    parked.release[1].set_result(WorkerResult("ack"))
    done = await wait_task(client, task["id"])
    assert store.failed
    assert [(e["source"], e["value"]) for e in done["attempts"][0]["outputs"]] == [("ack", "ack")]
    # Read back from the store (the task has left memory): the same.
    row = await store.get_task(task["id"])
    assert row is not None
    assert [(o[1], o[2]) for o in row.value["attempts"][0]["tail"]] == [("ack", "ack")]


class ResultsFenced(SQLiteStore):
    """A real SQLite store that refuses a worker's result as a shared store
    does once another node holds the task (``Fenced``)."""

    async def put_output(
        self, task_id: str, attempt: int, output: list[Any], *, audit: Audit = ()
    ) -> None:
        raise Fenced(f"task {task_id} was taken over; its output was not stored")


async def test_a_result_the_store_fences_off_is_409_and_decides_nothing(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    path = str(tmp_path / "fenced.sqlite")
    app = build_app(make_settings(**{"store.path": path}), store=ResultsFenced(path))
    client: TestClient[Any, Any] = await aiohttp_client(app)
    listening_on(app, str(client.make_url("")).rstrip("/"))
    parked, task = await start_parked(client)
    ctx = await parked.attempt(1)
    resp = await client.post(
        "/v1/worker/result", json={"value": "lost"}, headers=bearer(ctx.worker_handle)
    )
    assert await error_of(resp) == (409, "attempt_ended")
    parked.release[1].set_result(WorkerResult("ack"))
    done = await wait_task(client, task["id"])
    assert done["result"] == {"value": "ack", "ok": True}
    assert [e["source"] for e in done["attempts"][0]["outputs"]] == ["ack"]
