"""HTTP clients: the worker endpoints and the task routes."""

from __future__ import annotations

from typing import Any

import aiohttp

from operator_server.client.errors import RequestFailed


class _Http:
    """A base URL, a bearer, and JSON in and out with coded errors."""

    def __init__(
        self, base_url: str, bearer: str | None, session: aiohttp.ClientSession | None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        self._session = session
        self._own_session = session is None

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        http = await self._http()
        headers = {**self._headers, **kwargs.pop("headers", {})}
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
            await self._session.close()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


class WorkerClient(_Http):
    """What a sub-agent uses with the ``worker_handle`` (or capability) of a spawn."""

    def __init__(
        self, base_url: str, credential: str, session: aiohttp.ClientSession | None = None
    ) -> None:
        super().__init__(base_url, credential, session)

    async def prompt(self) -> dict[str, Any]:
        """``{task_id, attempt, agent, system?, prompt}``"""
        body: dict[str, Any] = await self.request("GET", "/v1/worker/prompt")
        return body

    async def result(self, value: Any, ok: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = await self.request(
            "POST", "/v1/worker/result", json={"value": value, "ok": ok}
        )
        return body

    async def submit(self, text: str, ok: bool = True) -> dict[str, Any]:
        params = {} if ok else {"ok": "false"}
        body: dict[str, Any] = await self.request(
            "POST", "/v1/worker/submit", data=text.encode(), params=params
        )
        return body


class TaskClient(_Http):
    """The task routes, for scripts and the ``operator-server task`` commands."""

    def __init__(
        self,
        base_url: str,
        api_token: str | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        super().__init__(base_url, api_token, session)

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
