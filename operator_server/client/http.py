"""HTTP clients: the worker endpoints and the task routes."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import Mapping
from typing import Any

import aiohttp

from operator_server.client.errors import AskDeclined, RequestFailed

# A worker ask whose HTTP call dropped is picked up again this many times.
ASK_RETRIES = 5
# Where a client finds its credential when it is given none: an API key, or
# (the older name, still read) the daemon's api_token.  The key wins.
CREDENTIAL_ENV = ("OPERATOR_SERVER_API_KEY", "OPERATOR_SERVER_API_TOKEN")


def credential_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """The first of ``CREDENTIAL_ENV`` that is set and not empty; None if neither is."""
    env = os.environ if env is None else env
    return next((env[name] for name in CREDENTIAL_ENV if env.get(name)), None)


def _trace_headers(given: Mapping[str, str] | None) -> dict[str, str]:
    """The W3C context a call sends back (``client/tracecontext.py``).  A
    program that traces has loaded the OpenTelemetry API already, and one
    given a context has it (``given``, ``TRACEPARENT``): any other has none to
    send, and its start-up does not pay for loading the API."""
    if not given and "opentelemetry.trace" not in sys.modules and "TRACEPARENT" not in os.environ:
        return {}
    from operator_server.client.tracecontext import outgoing

    return outgoing(given)


class _Http:
    """A base URL, a bearer, and JSON in and out with coded errors.  Each call
    carries the caller's trace context (``traceparent``), if it has one."""

    def __init__(
        self, base_url: str, bearer: str | None, session: aiohttp.ClientSession | None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        self._session = session
        self._own_session = session is None
        # A W3C context to continue when the caller has no current span of its own.
        self.trace: dict[str, str] | None = None

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        http = await self._http()
        headers = {**self._headers, **_trace_headers(self.trace), **kwargs.pop("headers", {})}
        async with http.request(method, self.base_url + path, headers=headers, **kwargs) as resp:
            body: Any = await resp.json() if resp.content_type == "application/json" else None
            if resp.status >= 400:
                err = (body or {}).get("error", {}) if isinstance(body, dict) else {}
                raise RequestFailed(
                    resp.status,
                    err.get("code", "http_error"),
                    err.get("message", resp.reason or ""),
                    body,
                )
            return body

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            # Forgotten once closed: a later request (a leave after a stopped
            # start-up) opens a new one instead of failing "Session is closed".
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


class WorkerClient(_Http):
    """What a sub-agent uses with the ``worker_handle`` (or capability) of a spawn.

    ``trace``: the spawn's W3C context (its frame's ``trace``); else the one
    the prompt carries, once read, or ``TRACEPARENT`` from the environment.
    Each call sends it back as ``traceparent`` unless the caller has a span
    of its own current (then that one, a child in the same trace)."""

    def __init__(
        self,
        base_url: str,
        credential: str,
        session: aiohttp.ClientSession | None = None,
        trace: dict[str, str] | None = None,
    ) -> None:
        super().__init__(base_url, credential, session)
        self.trace = trace

    async def prompt(self) -> dict[str, Any]:
        """``{task_id, attempt, agent, system?, prompt, trace?}``"""
        body: dict[str, Any] = await self.request("GET", "/v1/worker/prompt")
        if self.trace is None and isinstance(body.get("trace"), dict):
            self.trace = body["trace"]
        return body

    async def result(self, value: Any, ok: bool = True, error: str | None = None) -> dict[str, Any]:
        """``error`` (with ``ok=False``): why the work failed, shown as the task's error."""
        payload: dict[str, Any] = {"value": value, "ok": ok}
        if error is not None:
            payload["error"] = error
        body: dict[str, Any] = await self.request("POST", "/v1/worker/result", json=payload)
        return body

    async def submit(self, text: str, ok: bool = True) -> dict[str, Any]:
        params = {} if ok else {"ok": "false"}
        body: dict[str, Any] = await self.request(
            "POST", "/v1/worker/submit", data=text.encode(), params=params
        )
        return body

    async def ask(
        self,
        question: Any,
        answer_schema: dict[str, Any] | None = None,
        timeout_s: int = 30,
        key: str | None = None,
    ) -> Any:
        """Ask the task's senior and return its answer (``answer_schema``: the
        form it must fill).  Long-polls ``timeout_s`` per HTTP call until the
        senior answers; a dropped call is picked up again under the ask's
        ``key``, so the senior is never asked twice.

        Raises ``AskDeclined`` when the senior refuses, ``RequestFailed`` when
        the ask cannot be answered (``no_senior``, ``attempt_ended``, ...).
        """
        body: dict[str, Any] = {
            "question": question,
            "timeout_s": timeout_s,
            "key": key or secrets.token_hex(16),
        }
        if answer_schema is not None:
            body["answer_schema"] = answer_schema
        reply = await self._picked_up("POST", "/v1/worker/ask", json=body)
        while reply.get("status") == "pending":
            reply = await self._picked_up(
                "GET", f"/v1/worker/ask/{reply['ask_id']}", params={"wait": str(timeout_s)}
            )
        if "declined" in reply:
            raise AskDeclined(reply["ask_id"], reply["declined"])
        return reply["value"]

    async def _picked_up(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One ask call, again after a dropped connection (the same key or
        ask_id names the same ask, so a retry asks nothing new)."""
        tries = 0
        while True:
            try:
                body: dict[str, Any] = await self.request(method, path, **kwargs)
                return body
            except aiohttp.ClientConnectionError:
                tries += 1
                if tries >= ASK_RETRIES:
                    raise
                await asyncio.sleep(0.2 * 2**tries)


class TaskClient(_Http):
    """The task routes, for scripts and the ``operator-server task`` commands.

    ``api_token``: an API key, the bootstrap api_token or a JWT; when None,
    ``$OPERATOR_SERVER_API_KEY``, else ``$OPERATOR_SERVER_API_TOKEN``."""

    def __init__(
        self,
        base_url: str,
        api_token: str | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        super().__init__(base_url, api_token or credential_from_env(), session)

    async def create(self, **task: Any) -> dict[str, Any]:
        body: dict[str, Any] = await self.request("POST", "/v1/tasks", json=task)
        return body

    async def get(self, task_id: str, wait: float = 0) -> dict[str, Any]:
        params = {"wait": str(wait)} if wait else {}
        body: dict[str, Any] = await self.request("GET", f"/v1/tasks/{task_id}", params=params)
        return body

    async def list(
        self, status: str | None = None, limit: int | None = None, after: str | None = None
    ) -> dict[str, Any]:
        params = {
            k: str(v) for k, v in (("status", status), ("limit", limit), ("after", after)) if v
        }
        body: dict[str, Any] = await self.request("GET", "/v1/tasks", params=params)
        return body

    async def cancel(self, task_id: str, reason: str | None = None) -> dict[str, Any]:
        payload = {"reason": reason} if reason else None
        body: dict[str, Any] = await self.request(
            "POST", f"/v1/tasks/{task_id}/cancel", json=payload
        )
        return body
