"""What a node does for callers on other nodes (cluster mode).

A worker's HTTP call, or a cancel, may reach any node; only the node running
the task's attempt can do it (``Engine._on_owner``, through
``cluster/routing.py``).  The receiving node passes it on with
``Cluster.call``; the owner runs the same engine method a local caller
would, so every check — the attempt still live, the credential not revoked,
the same ask ``key`` — is made where the state is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from operator_server.audit.principals import SERVER
from operator_server.engine.capabilities import claims_from_wire, claims_wire
from operator_server.engine.faces import WorkerResult

if TYPE_CHECKING:
    from operator_server.cluster.calls import Cluster
    from operator_server.engine.engine import Engine


def serve_calls(engine: Engine, cluster: Cluster) -> None:
    async def verify_worker(args: dict[str, Any]) -> dict[str, Any]:
        claims = engine.capabilities.verify(args["bearer"], args["verb"], args["task_id"])
        return claims_wire(claims)

    async def worker_prompt(args: dict[str, Any]) -> dict[str, Any]:
        return engine.worker.worker_view(claims_from_wire(args["claims"]))

    async def worker_result(args: dict[str, Any]) -> dict[str, Any]:
        # ``error`` is absent from a call sent by a node older than it.
        result = WorkerResult(args["value"], bool(args["ok"]), error=args.get("error"))
        await engine.worker.post_worker_result(claims_from_wire(args["claims"]), result)
        return {}

    async def worker_ask(args: dict[str, Any]) -> dict[str, Any]:
        claims = claims_from_wire(args["claims"])
        ask = engine.worker.worker_ask(claims, args["question"], args["schema"], args["key"])
        return ask.to_record()

    async def wait_ask(args: dict[str, Any]) -> dict[str, Any]:
        claims = claims_from_wire(args["claims"])
        ask = await engine.worker.wait_ask(claims, str(args["ask_id"]), float(args["wait"]))
        return {"ask": None if ask is None else ask.to_record()}

    async def cancel(args: dict[str, Any]) -> dict[str, Any]:
        # The caller's principal travels with it: the end is audited here.
        by = str(args.get("principal") or SERVER)
        return {"cancelled": await engine.cancel(str(args["task_id"]), str(args["reason"]), by)}

    for fn in (verify_worker, worker_prompt, worker_result, worker_ask, wait_ask, cancel):
        cluster.serve(fn.__name__, fn)
