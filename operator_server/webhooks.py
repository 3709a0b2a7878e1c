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

**Each try is counted on disk before it is sent**, so a crash during a try
never buys an extra one: a row still due with ``webhook_max_attempts`` tries
counted had its last try cut short, and is given up without sending.

**Where a try may go**, and how one is made: ``outbound.py``, shared with
the notifications.

**One slow receiver cannot starve the others.**  At most ``CONCURRENCY`` tries
are in flight, and at most ``PER_RECEIVER`` of them to one receiver (scheme,
host, port): deliveries to a receiver that is full wait for one of its own
tries to end while other receivers' deliveries go ahead.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
from yarl import URL

from operator_server import outbound
from operator_server.background import Background
from operator_server.config import Settings
from operator_server.engine import Engine
from operator_server.engine.reads import decode_row
from operator_server.engine.task_json import task_view
from operator_server.engine.tasks import Callback, Task
from operator_server.logs import get_logger
from operator_server.metrics import Metrics
from operator_server.store import StoreError

log = get_logger(__name__)
# Tries in flight at once, in all; and to one receiver (scheme, host, port).
CONCURRENCY = 64
PER_RECEIVER = 8
# Due rows read per look at most: enough to see past a full receiver's backlog.
LOOK_MAX = 2000
# With nothing due, look again this often anyway (a write that failed to wake us).
IDLE_S = 60.0

Receiver = tuple[str, str, int]


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
        # The receiver of each delivery seen (until it is settled), and how many
        # tries each receiver has in flight.
        self._receiver_of: dict[str, Receiver] = {}
        self._busy: Counter[Receiver] = Counter()
        self._http: aiohttp.ClientSession | None = None

    def backoff(self, tries: int) -> float:
        return outbound.backoff(self.settings, tries)

    async def run(self) -> None:
        due_event = self.engine.deliveries_due
        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s)
        connector = outbound.connector(self.settings, limit=CONCURRENCY)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
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
        """Start every delivery due now (up to ``CONCURRENCY`` at once, and
        ``PER_RECEIVER`` to one receiver); how long until the next one is due."""
        look = min(LOOK_MAX, CONCURRENCY + len(self._in_flight) + len(self._receiver_of))
        try:
            due = await self.store.next_deliveries(look)
        except StoreError as exc:
            log.error("could not read webhook deliveries", error=str(exc))
            return IDLE_S
        if len(due) < look and len(self._receiver_of) > len(due):
            # Every row was read: forget receivers of rows gone meanwhile (retention).
            present = {d.task_id for d in due} | self._in_flight
            self._receiver_of = {k: v for k, v in self._receiver_of.items() if k in present}
        now = time.time()
        for delivery in due:
            if delivery.task_id in self._in_flight:
                continue
            if delivery.due_at > now:
                return delivery.due_at - now
            if len(self._in_flight) >= CONCURRENCY:
                break  # a finishing try wakes the loop
            receiver = self._receiver_of.get(delivery.task_id)
            if receiver is not None and self._busy[receiver] >= PER_RECEIVER:
                continue  # its receiver is full: one of its tries ending wakes the loop
            self._in_flight.add(delivery.task_id)
            self.background.spawn(self._try(delivery.task_id), name=f"webhook:{delivery.task_id}")
        return IDLE_S

    async def _try(self, task_id: str) -> None:
        try:
            await self._deliver(task_id)
        finally:
            self._in_flight.discard(task_id)
            self.engine.deliveries_due.set()

    def _settled(self, task_id: str) -> None:
        self._receiver_of.pop(task_id, None)

    async def _deliver(self, task_id: str) -> None:
        assert self._http is not None  # set before any try starts
        row = await self.store.get_task(task_id)
        task = None if row is None else decode_row(row)
        callback = None if task is None else task.callback
        if task is None or callback is None:
            await self.store.record_delivery(task_id, None, None)
            self._settled(task_id)
            return
        url = URL(callback.url)
        receiver = (url.scheme, (url.host or "").lower(), url.port or 0)
        self._receiver_of[task_id] = receiver
        if self._busy[receiver] >= PER_RECEIVER:
            return  # started before its receiver was known; it waits its turn
        self._busy[receiver] += 1  # taken before any wait, so no two take the last slot
        try:
            await self._attempt(task_id, task, callback, url)
        finally:
            self._busy[receiver] -= 1
            if not self._busy[receiver]:
                del self._busy[receiver]

    async def _attempt(self, task_id: str, task: Task, callback: Callback, url: URL) -> None:
        if callback.attempts >= self.settings.webhook_max_attempts:
            # A try is counted before it is sent, and a try that ends at the last
            # attempt settles the row: this one's last try was cut short (a crash).
            await self._give_up(task_id, task, "the last try was cut short (the daemon stopped)")
            return
        # Counted on disk before anything is sent; if the daemon dies during the
        # try, the row is due again after the usual backoff, one try spent.
        callback.attempts += 1
        try:
            await self.store.record_delivery(
                task_id, task.to_record(), time.time() + self.backoff(callback.attempts)
            )
        except StoreError as exc:  # nothing sent: the row stays due
            log.error("could not count a webhook try", task_id=task_id, error=str(exc))
            return
        error = await self._post(url, task, callback.delivery_id)
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
        except StoreError as exc:  # the row stays due (its try counted): tried again
            log.error("could not record a webhook try", task_id=task_id, error=str(exc))
            return
        if due is None:
            self._settled(task_id)

    async def _post(self, url: URL, task: Task, delivery_id: str) -> str | None:
        """One try; what went wrong, or None when the receiver took it."""
        assert self._http is not None
        refusal = outbound.refusal(self.settings, url, "callback_url")
        if refusal is not None:
            return f"refused: {refusal}"
        return await outbound.post_json(
            self._http,
            url,
            task_view(task),
            delivery_id,
            secret=self.settings.webhook_secret,
            timeout=self.settings.webhook_timeout_s,
        )

    async def _give_up(self, task_id: str, task: Task, why: str) -> None:
        assert task.callback is not None
        task.callback.last_error = task.callback.last_error or why
        self.metrics.webhook_tried("gave_up")
        log.warning(
            "webhook delivery given up (webhook_max_attempts)",
            task_id=task_id,
            attempts=task.callback.attempts,
            error=why,
        )
        try:
            await self.store.record_delivery(task_id, task.to_record(), None)
        except StoreError as exc:
            log.error("could not record a webhook try", task_id=task_id, error=str(exc))
            return
        self._settled(task_id)
