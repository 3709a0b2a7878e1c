"""Each middleware path, driven over real HTTP with in-test operator faces."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from operator_server.engine import AttemptContext, HookVerdict, WorkerResult
from operator_server.engine.middleware import ESCALATION_SCHEMA
from tests.conftest import Server, create_task, engine_of, wait_task
from tests.fakes import FakeOperator


def seat(client: TestClient[Any, Any], fake: FakeOperator, sid: str = "op-fake") -> str:
    engine_of(client).resolution.register(sid, fake)
    return sid


async def test_echo_agent_serves_a_task_with_no_operator(server: Server) -> None:
    client = await server()
    task = await create_task(client, agent="echo", directive={"say": "hi"})
    assert task["status"] == "pending" and task["kind"] == "automate"
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed"
    assert done["result"] == {"value": {"say": "hi"}, "ok": True}
    assert done["attempts"][0]["outputs"][0]["source"] == "agent"


async def test_hook_rejection_fails_the_task_with_its_code_and_reason(server: Server) -> None:
    client = await server()
    fake = FakeOperator(verdict=HookVerdict(False, "not today"))
    task = await create_task(client, agent="coder", operator={"sid": seat(client, fake)})
    done = await wait_task(client, task["id"])
    assert done["status"] == "failed"
    assert done["error"] == {"code": "spawn_rejected", "message": "spawn rejected: not today"}
    assert not fake.executing.is_set()


async def test_hook_approval_runs_the_operator_and_reports_after(server: Server) -> None:
    client = await server()
    fake = FakeOperator()
    task = await create_task(
        client, agent="coder", directive="p", operator={"sid": seat(client, fake)}
    )
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed" and done["kind"] == "main_ai"
    assert done["result"] == {"value": {"done": "p"}, "ok": True}
    assert fake.before_calls == [1]
    await asyncio.wait_for(fake.after_called.wait(), 2)
    assert fake.after_results == [WorkerResult({"done": "p"})]
    assert done["attempts"][0]["served_by"] == {
        "senior_bridge": "op-fake",
        "spawn_hook": "op-fake",
        "backend": "op-fake",
    }


async def test_automate_kind_skips_the_spawn_hook(server: Server) -> None:
    client = await server()
    fake = FakeOperator(verdict=HookVerdict(False, "would reject"))
    sid = seat(client, fake)
    task = await create_task(client, agent="coder", operator={"sid": sid, "kind": "automate"})
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed"
    assert fake.before_calls == []


async def test_senior_overrides_ok_false(server: Server) -> None:
    client = await server()

    async def refuse(ctx: AttemptContext, cap: str) -> WorkerResult:
        return WorkerResult("half done", ok=False)

    answer = {"decision": "override", "note": "ship it anyway"}
    fake = FakeOperator(execute=refuse, answer=answer)
    task = await create_task(client, agent="coder", operator={"sid": seat(client, fake)})
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed"
    assert done["result"]["value"] == {"original": "half done", "senior_answer": answer}
    assert fake.schemas == [ESCALATION_SCHEMA]
    assert fake.questions == [
        (task["id"], {"reason": "worker reported ok=false", "value": "half done"})
    ]


async def test_a_senior_who_upholds_keeps_the_attempt_blocked_with_the_note(
    server: Server,
) -> None:
    client = await server()

    async def refuse(ctx: AttemptContext, cap: str) -> WorkerResult:
        return WorkerResult("half done", ok=False)

    fake = FakeOperator(execute=refuse, answer={"decision": "uphold", "note": "tests must pass"})
    task = await create_task(client, agent="coder", operator={"sid": seat(client, fake)})
    done = await wait_task(client, task["id"])
    assert done["status"] == "blocked"
    assert done["result"] == {"value": "half done", "ok": False}
    assert done["error"] == {"code": "senior_upheld", "message": "tests must pass"}
    assert done["attempts"][0]["error"] == done["error"]


async def test_ok_false_without_a_senior_layer_is_blocked(server: Server) -> None:
    client = await server()

    async def refuse(ctx: AttemptContext, cap: str) -> WorkerResult:
        return WorkerResult("cannot", ok=False)

    fake = FakeOperator(execute=refuse)
    task = await create_task(
        client,
        agent="coder",
        operator={"sid": seat(client, fake)},
        layers=["main_ai", "operator_delegate"],
    )
    done = await wait_task(client, task["id"])
    assert done["status"] == "blocked"
    assert done["result"] == {"value": "cannot", "ok": False}
    assert fake.questions == []


async def test_worker_posted_final_beats_the_ack_value(server: Server) -> None:
    client = await server()

    async def via_worker(ctx: AttemptContext, cap: str) -> WorkerResult:
        headers = {"Authorization": f"Bearer {ctx.worker_handle}"}
        prompt = await client.get("/v1/worker/prompt", headers=headers)
        assert (await prompt.json())["prompt"] == "write it"
        resp = await client.post(
            "/v1/worker/result", json={"value": {"from": "worker"}}, headers=headers
        )
        assert resp.status == 200
        return WorkerResult({"from": "ack"})

    fake = FakeOperator(execute=via_worker)
    task = await create_task(
        client, agent="coder", directive="write it", operator={"sid": seat(client, fake)}
    )
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed"
    assert done["result"] == {"value": {"from": "worker"}, "ok": True}
    sources = [(e["kind"], e["source"]) for e in done["attempts"][0]["outputs"]]
    assert sources == [("final", "worker"), ("output", "ack")]


async def test_ack_value_is_the_result_when_no_worker_posted(server: Server) -> None:
    client = await server()

    async def ack_only(ctx: AttemptContext, cap: str) -> WorkerResult:
        return WorkerResult({"from": "ack"})

    task = await create_task(
        client, agent="coder", operator={"sid": seat(client, FakeOperator(execute=ack_only))}
    )
    done = await wait_task(client, task["id"])
    assert done["result"] == {"value": {"from": "ack"}, "ok": True}


async def test_no_final_result_fails_the_attempt(server: Server) -> None:
    client = await server()

    async def nothing(ctx: AttemptContext, cap: str) -> None:
        return None

    task = await create_task(
        client, agent="coder", operator={"sid": seat(client, FakeOperator(execute=nothing))}
    )
    done = await wait_task(client, task["id"])
    assert done["status"] == "failed"
    assert done["error"] == {"code": "no_final_result", "message": "no final result"}


async def test_retries_increment_the_attempt_until_one_passes(server: Server) -> None:
    client = await server()
    seen: list[int] = []

    async def flaky(ctx: AttemptContext, cap: str) -> WorkerResult:
        seen.append(ctx.attempt)
        return WorkerResult(f"try {ctx.attempt}", ok=ctx.attempt == 3)

    task = await create_task(
        client,
        agent="coder",
        max_attempts=5,
        layers=["operator_delegate"],
        operator={"sid": seat(client, FakeOperator(execute=flaky))},
    )
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed" and done["attempt"] == 3
    assert seen == [1, 2, 3]
    assert [a["status"] for a in done["attempts"]] == ["blocked", "blocked", "passed"]


async def test_retries_stop_at_max_attempts_with_the_last_outcome(server: Server) -> None:
    client = await server()

    async def nothing(ctx: AttemptContext, cap: str) -> None:
        return None

    task = await create_task(
        client,
        agent="coder",
        max_attempts=2,
        operator={"sid": seat(client, FakeOperator(execute=nothing))},
    )
    done = await wait_task(client, task["id"])
    assert done["status"] == "failed" and done["attempt"] == 2
    assert [a["error"]["code"] for a in done["attempts"]] == ["no_final_result"] * 2


async def test_cancel_stops_the_in_flight_attempt(server: Server) -> None:
    client = await server()

    async def forever(ctx: AttemptContext, cap: str) -> None:
        await asyncio.Event().wait()

    fake = FakeOperator(execute=forever)
    task = await create_task(client, agent="coder", operator={"sid": seat(client, fake)})
    await asyncio.wait_for(fake.executing.wait(), 2)
    running = await (await client.get(f"/v1/tasks/{task['id']}")).json()
    assert running["status"] == "running"
    resp = await client.post(f"/v1/tasks/{task['id']}/cancel", json={"reason": "changed my mind"})
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "cancelled"
    assert body["error"] == {"code": "cancelled", "message": "changed my mind"}
    assert body["attempts"][0]["status"] == "cancelled"
    assert fake.cancelled.is_set()
    again = await client.post(f"/v1/tasks/{task['id']}/cancel")
    assert again.status == 409
    assert (await again.json())["error"]["code"] == "task_finished"
    assert fake.last_ctx is not None
    late = await client.get(
        "/v1/worker/prompt", headers={"Authorization": f"Bearer {fake.last_ctx.worker_handle}"}
    )
    assert late.status == 401  # the cancelled attempt's credential died with it


async def test_unknown_agent_with_a_resolving_operator_is_the_operators_business(
    server: Server,
) -> None:
    client = await server()
    task = await create_task(
        client, agent="anything", operator={"sid": seat(client, FakeOperator())}
    )
    assert (await wait_task(client, task["id"]))["status"] == "passed"


async def test_a_role_nobody_holds_fails_the_task_saying_how_to_seat_one(server: Server) -> None:
    client = await server()
    task = await create_task(client, agent="coder", operator={"role": "nobody"})
    done = await wait_task(client, task["id"])
    assert done["status"] == "failed"
    assert done["error"] == {
        "code": "operator_not_found",
        "message": "no operator holds role 'nobody': start one with "
        "`operator-server operator --role nobody` (or join with that role in the console), "
        "or see who holds which role with GET /v1/operators",
    }


async def test_a_missing_operator_named_for_one_face_says_which_face(server: Server) -> None:
    client = await server()
    sid = seat(client, FakeOperator())
    task = await create_task(
        client, agent="coder", operator={"sid": sid, "senior_bridge": "op-gone"}
    )
    done = await wait_task(client, task["id"])
    assert done["error"] == {
        "code": "operator_not_found",
        "message": "no operator session 'op-gone' for its senior_bridge: it left or expired "
        "(GET /v1/operators lists the sessions)",
    }


async def test_a_role_resolves_to_its_sid_at_dispatch_time(server: Server) -> None:
    """The role moves between two attempts of one task: each dispatch looks it up."""
    client = await server()
    engine = engine_of(client)
    first_done = asyncio.Event()
    moved = asyncio.Event()

    async def blocked_then_wait(ctx: AttemptContext, _: str) -> WorkerResult:
        first_done.set()
        await moved.wait()
        return WorkerResult("not yet", ok=False)

    first = seat(client, FakeOperator(execute=blocked_then_wait), "op-first")
    second = seat(client, FakeOperator(), "op-second")
    engine.resolution.roles.claim(first, ["reviewer"])
    task = await create_task(
        client,
        agent="coder",
        operator={"role": "reviewer"},
        layers=["operator_delegate"],
        max_attempts=2,
    )
    await asyncio.wait_for(first_done.wait(), 5)
    engine.resolution.roles.release(first)
    engine.resolution.roles.claim(second, ["reviewer"])
    moved.set()
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed"
    assert [a["served_by"]["backend"] for a in done["attempts"]] == [first, second]


async def test_per_face_names_mix_an_operator_with_a_local_agent(server: Server) -> None:
    client = await server()
    fake = FakeOperator(verdict=HookVerdict(False, "hook says no"))
    sid = seat(client, fake)
    task = await create_task(client, agent="echo", directive="local", operator={"spawn_hook": sid})
    done = await wait_task(client, task["id"])
    assert done["error"]["message"] == "spawn rejected: hook says no"
    assert not fake.executing.is_set()


async def test_layers_come_from_config_when_the_task_gives_none(server: Server) -> None:
    client = await server(default_layers=["operator_delegate"])
    fake = FakeOperator(verdict=HookVerdict(False, "unused"))
    task = await create_task(client, agent="coder", operator={"sid": seat(client, fake)})
    done = await wait_task(client, task["id"])
    assert done["layers"] == ["operator_delegate"]
    assert done["status"] == "passed" and fake.before_calls == []


async def test_a_crashing_face_fails_the_attempt_instead_of_wedging(server: Server) -> None:
    client = await server()

    async def boom(ctx: AttemptContext, cap: str) -> None:
        raise RuntimeError("kaboom")

    task = await create_task(
        client, agent="coder", operator={"sid": seat(client, FakeOperator(execute=boom))}
    )
    done = await wait_task(client, task["id"])
    assert done["status"] == "failed"
    assert done["error"] == {"code": "agent_crashed", "message": "RuntimeError: kaboom"}


async def test_shutdown_ends_running_tasks_cancelled_with_a_reason(server: Server) -> None:
    client = await server()

    async def forever(ctx: AttemptContext, cap: str) -> None:
        await asyncio.Event().wait()

    fake = FakeOperator(execute=forever)
    task = await create_task(client, agent="coder", operator={"sid": seat(client, fake)})
    await asyncio.wait_for(fake.executing.wait(), 2)
    engine = engine_of(client)
    await client.close()  # runs the app's shutdown, as SIGTERM does
    stored = await engine.reads.find(task["id"])
    assert stored is not None and stored.status == "cancelled"
    assert stored.error is not None and stored.error.message == "server shutting down"
