"""schemathesis against the live app: every operation of the served document.

The daemon runs in its own thread and event loop on a real loopback socket
(schemathesis calls it with blocking ``requests``).  Each operation gets a
bounded, derandomized set of generated requests, valid and invalid, and every
answer must be no 5xx and conform to the document: a documented status, a
documented content type and a body that matches its schema.

Credentials come from the live server: the api token from its config, a minted
session, and the worker handle of an attempt parked on a fake operator.  Every
other call keeps the generated path ids (unknown ids: the 404 paths); the
others use real ones, so the success answers are checked too.

The event streams are fuzzed too, most calls with their credential.  A task's
stream is pointed at a finished task, so it replays and closes, and
schemathesis checks each of its events against the document.  The all-tasks
stream never ends, so of its 200 only the status and headers are read (its
events have the same documented shape: test_openapi checks a real stream).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import requests
import schemathesis
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, checks

from operator_server.app import build_app, listening_on
from operator_server.http.openapi import documented_routes
from operator_server.wire.contract import Security
from tests.conftest import create_task, make_settings, wait_task
from tests.engine.test_capabilities import Parked, start_parked
from tests.wsop import mint

API_TOKEN = "schemathesis-api-token"
METRICS_TOKEN = "schemathesis-metrics-token"
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]
# Per operation, per generation mode: enough to reach every documented answer
# of these small bodies, few enough to keep the suite quick.
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", 25))
EVENT_STREAM = "text/event-stream"
T = TypeVar("T")


class LiveServer:
    """The app served from a thread of its own, driven from the test's thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-app", daemon=True)
        self.calls = itertools.count()
        self.stream_calls = itertools.count()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def start(self) -> None:
        self.thread.start()
        self.run(self._start())

    async def _start(self) -> None:
        app = build_app(make_settings(api_token=API_TOKEN, metrics_token=METRICS_TOKEN))
        self.client = TestClient(
            TestServer(app, host="127.0.0.1"), headers={"Authorization": f"Bearer {API_TOKEN}"}
        )
        await self.client.start_server()
        self.base_url = str(self.client.make_url("")).rstrip("/")
        listening_on(app, self.base_url)
        self.parked: Parked
        self.parked, task = await start_parked(self.client)
        self.worker = (await self.parked.attempt(1)).worker_handle
        self.task_id = task["id"]
        self.finished_id = (await create_task(self.client, agent="echo"))["id"]
        await wait_task(self.client, self.finished_id)
        self.sid, self.session_token = await mint(self.client)

    def stop(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _stop(self) -> None:
        for fut in self.parked.release.values():
            if not fut.done():
                fut.set_result(None)
        await self.client.close()

    def real_ids(self, case: schemathesis.Case) -> None:
        """Every other call: the path names things that exist."""
        if next(self.calls) % 2:
            return
        if (case.method.upper(), case.path) == ("POST", "/v1/tasks") and isinstance(
            case.body, dict
        ):
            # An agent that exists, so tasks are created and run (202).
            case.body["agent"] = "echo"
            case.body.pop("operator", None)
            case.body.pop("parent_task_id", None)
        params = case.path_parameters or {}
        if "task_id" in params:
            # A live task to cancel, or the parked one to read.
            cancelling = case.method.upper() == "POST"
            if cancelling:
                created = create_task(self.client, agent="coder", operator={"sid": "op-parked"})
                params["task_id"] = self.run(created)["id"]
            elif case.path.endswith("/events"):
                params["task_id"] = self.finished_id  # a stream that ends
            else:
                params["task_id"] = self.task_id
        if "sid" in params:
            if case.method.upper() == "DELETE":  # a session of its own to end
                params["sid"], token = self.run(mint(self.client))
                self.deleting = token
            else:
                params["sid"] = self.sid

    def call_stream(self, case: schemathesis.Case) -> schemathesis.Response:
        """An event-stream call, its body read only when the server ends it."""
        # One call in four without the credential: the streams' 401s are fuzzed too.
        bare = next(self.stream_calls) % 4 == 3
        headers = {} if bare else self.credential(case)
        kwargs = case.as_transport_kwargs(base_url=self.base_url, headers=headers)
        with requests.request(**kwargs, stream=True, timeout=10) as raw:
            endless = raw.status_code == 200 and "task_id" not in (case.path_parameters or {})
            content = b"" if endless else raw.content
            return schemathesis.Response(
                status_code=raw.status_code,
                headers={name: raw.raw.headers.getlist(name) for name in raw.raw.headers},
                content=content,
                request=raw.request,
                elapsed=raw.elapsed.total_seconds(),
                verify=True,
                message=raw.reason,
            )

    def credential(self, case: schemathesis.Case) -> dict[str, str]:
        security = [
            name for alt in case.operation.definition.raw.get("security", []) for name in alt
        ]
        token = {
            Security.API_KEY: API_TOKEN,
            Security.METRICS_TOKEN: METRICS_TOKEN,
            Security.WORKER: self.worker,
            Security.SESSION_TOKEN: getattr(self, "deleting", None)
            if case.method.upper() == "DELETE"
            else self.session_token,
        }
        for name in security:
            value = token.get(Security(name))
            if value:
                return {"Authorization": f"Bearer {value}"}
        return {}


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    server = LiveServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def contract(live: LiveServer) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{live.base_url}/v1/openapi.json")
    schema.config.update(base_url=live.base_url)
    return schema


def _operations() -> list[tuple[str, str]]:
    """(method, path) of every documented route, read off an app at collection."""
    app = build_app(make_settings())
    return [(method, path) for method, path, _ in documented_routes(app)]


@pytest.mark.parametrize(("method", "path"), _operations())
def test_every_operation_answers_as_documented(
    method: str, path: str, contract: schemathesis.BaseSchema, live: LiveServer
) -> None:
    operation = contract[path][method]
    streams = any(
        EVENT_STREAM in answer.get("content", {})
        for answer in operation.definition.raw["responses"].values()
    )
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def answers_as_documented(case: schemathesis.Case) -> None:
        live.real_ids(case)
        if streams:
            case.validate_response(live.call_stream(case), checks=CHECKS)
            return
        case.call_and_validate(headers=live.credential(case), checks=CHECKS, timeout=10)

    answers_as_documented()
