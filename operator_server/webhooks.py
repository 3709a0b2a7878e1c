"""Webhook deliveries: POST a finished task to its ``callback_url``.

The engine commits a delivery row with the task's final end (same commit);
this sender makes each delivery due, in due order, a few at a time, and
records every try on the task (``callback: {url, attempts, delivered_at,
last_error}``) together with the row's next due time — so a restart resumes
exactly where it stopped.  Delivery is at-least-once: a try cut short by a
crash or shutdown is made again.

A non-2xx answer, a redirect (never followed: the allow-list must not be
side-stepped), a connection error or no answer within ``webhook_timeout_s``
is a failed try, retried after ``webhook_backoff_s`` doubled per try (capped
at ``webhook_backoff_max_s``), with jitter, up to ``webhook_max_attempts``.
"""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp

from operator_server.background import Background
from operator_server.config import Settings
from operator_server.engine import Engine
from operator_server.logs import get_logger
from operator_server.metrics import Metrics
from operator_server.store import StoreError
from operator_server.wire import json
from operator_server.wire.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, sign

log = get_logger(__name__)
# Deliveries in flight at once, and how many due rows are read per look.
CONCURRENCY = 16
# With nothing due, look again this often anyway (a write that failed to wake us).
IDLE_S = 60.0


class WebhookSender:
    def __init__(
        self, engine: Engine, settings: Settings, background: Background, metrics: Metrics
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.settings = settings
        self.background = background
        self.metrics = metrics
        self._in_flight: set[str] = set()
        self._http: aiohttp.ClientSession | None = None

    def backoff(self, tries: int) -> float:
        """Wait after ``tries`` failed tries: exponential, capped, with jitter."""
        s = self.settings
        ceiling = min(s.webhook_backoff_max_s, s.webhook_backoff_s * 2 ** (tries - 1))
        return ceiling * random.uniform(0.5, 1.0)

    async def run(self) -> None:
        due_event = self.engine.deliveries_due
        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            self._http = http
            while True:
                due_event.clear()
                wait = await self._start_due()
                try:
                    async with asyncio.timeout(wait):
                        await due_event.wait()
                except TimeoutError:
                    pass

    async def _start_due(self) -> float:
        """Start every delivery due now (up to ``CONCURRENCY`` at once); how long
        until the next one is due."""
        try:
            due = await self.store.next_deliveries(CONCURRENCY + len(self._in_flight))
        except StoreError as exc:
            log.error("could not read webhook deliveries", error=str(exc))
            return IDLE_S
        now = time.time()
        for delivery in due:
            if delivery.task_id in self._in_flight:
                continue
            if delivery.due_at > now:
                return delivery.due_at - now
            if len(self._in_flight) >= CONCURRENCY:
                break  # a finishing try wakes the loop
            self._in_flight.add(delivery.task_id)
            self.background.spawn(self._try(delivery.task_id), name=f"webhook:{delivery.task_id}")
        return IDLE_S

    async def _try(self, task_id: str) -> None:
        try:
            await self._deliver(task_id)
        finally:
            self._in_flight.discard(task_id)
            self.engine.deliveries_due.set()

    async def _deliver(self, task_id: str) -> None:
        assert self._http is not None  # set before any try starts
        row = await self.store.get_task(task_id)
        task = None if row is None else self.engine.decode_row(row)
        callback = None if task is None else task.callback
        if task is None or callback is None:
            await self.store.record_delivery(task_id, None, None)
            return
        body = json.dumps(task.as_dict()).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.settings.webhook_secret, body),
            DELIVERY_HEADER: callback.delivery_id,
        }
        callback.attempts += 1
        error = None
        try:
            async with self._http.post(
                callback.url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                if not 200 <= resp.status < 300:
                    error = f"HTTP {resp.status}"
        except TimeoutError:
            error = f"no answer within {self.settings.webhook_timeout_s:g}s"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"
        now = time.time()
        callback.last_error = error
        due: float | None = None
        if error is None:
            callback.delivered_at = now
            self.metrics.webhook_tried("delivered")
            log.info("webhook delivered", task_id=task_id, attempts=callback.attempts)
        elif callback.attempts >= self.settings.webhook_max_attempts:
            self.metrics.webhook_tried("gave_up")
            log.warning(
                "webhook delivery given up (webhook_max_attempts)",
                task_id=task_id,
                attempts=callback.attempts,
                error=error,
            )
        else:
            due = now + self.backoff(callback.attempts)
            self.metrics.webhook_tried("failed")
            log.info(
                "webhook try failed; will retry",
                task_id=task_id,
                attempts=callback.attempts,
                error=error,
                retry_in_s=round(due - now, 3),
            )
        try:
            await self.store.record_delivery(task_id, task.to_record(), due)
        except StoreError as exc:  # the row stays due: the try is made again
            log.error("could not record a webhook try", task_id=task_id, error=str(exc))
