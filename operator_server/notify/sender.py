"""``Notifier``: from each request this node issues to messages delivered.

**Intake.**  The engine tells it of each request issued or moved on
(``request_observers``) and of each reminder (``due_soon_observers``); it
only notes them (an observer must not block).  Its one background task
(``notify``) then reads each request's view (``FindPending``: from where the
REST face reads it), matches the rules (``rules.py``) and queues one durable
notice per (rule, recipient, request, what happened) in the store.  A
request settled before that is not announced.

**Batching.**  Per (rule, recipient), at most one message per ``batch_s``:
the first new request goes at once; those that come within ``batch_s`` of
that message wait and go together in the next one, listing them all.  A
reminder (due soon) and a move to a new holder (escalated, reassigned,
handed over) are not batched away: each goes at once as its own message and
does not touch the batch's clock.  A restart forgets when each batch last
sent: its first message after a restart may come sooner than ``batch_s``.

**Delivery, at least once.**  When a message is cut, its links are minted
(per recipient) and kept with it, and it gets an idempotency key, the same
on every try.  Each try is counted on disk before it is made; a failed try
is retried after ``webhook_backoff_s`` doubled per try (capped at
``webhook_backoff_max_s``, with jitter) up to ``webhook_max_attempts``, then
given up with its reason kept.  A crash during a try means that try is
made again: the receiver may see a message twice, with the same key.
Nothing here ever waits on, or fails, the request itself.

**In a cluster** each node sends what it queued (the store's ``node``
column).  What a node that stopped had queued or still owed is *adopted* by
a live one (``adopt``, given only with a shared store): looked for at start
and each time nodes are found stopped (``nodes_gone``), each row by exactly
one node, then treated as if this node had queued it.  Its messages go with
the idempotency key and links they were cut with; its news of a new request
goes only if that request is still pending here (a request dies with the
node that issued it: the task's next attempt, on the node that takes it
over, is news of its own).  A node that froze past its heartbeat and wakes
is refused what a live node adopted meanwhile (``Fenced``) and forgets it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import aiohttp
from yarl import URL

from operator_server import outbound
from operator_server.background import Background
from operator_server.config import NotifyRule, Settings
from operator_server.engine.deadlines import DueSoon
from operator_server.engine.events import EventType
from operator_server.engine.observers import RequestReported
from operator_server.logs import get_logger
from operator_server.metrics import Metrics
from operator_server.notify import messages
from operator_server.notify.channels import send_email
from operator_server.notify.minting import LinkMinter
from operator_server.notify.news import (
    DUE_SOON,
    MOVED,
    NEW,
    FindPending,
    PendingView,
    TaskFacts,
    news,
)
from operator_server.notify.rules import batch_of, covers, recipients
from operator_server.store import AdoptNotices, Fenced, Notice, NoticeMessage, Store, StoreError

log = get_logger(__name__)
# With nothing due, look again this often anyway.
IDLE_S = 60.0
# After a store error, try again this soon.
RETRY_S = 1.0
# Requests whose view is remembered for a move (the request is between
# holders when the move is told).
SEEN_MAX = 4096
FindTask = Callable[[str], TaskFacts | None]
Observed = RequestReported | DueSoon


class Notifier:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        background: Background,
        metrics: Metrics,
        *,
        find_pending: FindPending,
        find_task: FindTask,
        minter: LinkMinter | None = None,
        adopt: AdoptNotices | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.background = background
        self.metrics = metrics
        self.minter = minter
        self._find_pending = find_pending
        self._find_task = find_task
        # batch -> (its rule, its recipient), from the rules configured now.
        self._targets: dict[str, tuple[NotifyRule, str | None]] = {
            batch_of(rule, to): (rule, to) for rule in settings.notify for to in recipients(rule)
        }
        self._intake: deque[Observed] = deque()
        self._unstored: list[Notice] = []  # matched, not yet stored (a store error)
        self._wake = asyncio.Event()
        self._seen: OrderedDict[str, PendingView] = OrderedDict()
        self._waiting: dict[str, list[Notice]] = {}  # batch -> notices no message carries yet
        self._carried: dict[str, list[Notice]] = {}  # message id -> its notices
        self._open: dict[str, NoticeMessage] = {}  # messages still to be tried
        self._last_cut: dict[str, float] = {}  # batch -> when its last batched message was cut
        self._in_flight: set[str] = set()
        self._http: aiohttp.ClientSession | None = None
        self._adopt = adopt
        # Look for orphans at start too: nodes may have stopped while none ran.
        self._orphans = adopt is not None

    # -- observers (on the reporting path: note and return) ---------------

    def request_reported(self, reported: RequestReported) -> None:
        self._intake.append(reported)
        self._wake.set()

    def due_soon(self, notice: DueSoon) -> None:
        self._intake.append(notice)
        self._wake.set()

    def nodes_gone(self) -> None:
        """Other nodes stopped (or that news may have been missed): adopt what they owed."""
        if self._adopt is not None:
            self._orphans = True
            self._wake.set()

    # -- the background task ----------------------------------------------

    def backoff(self, tries: int) -> float:
        return outbound.backoff(self.settings, tries)

    async def run(self) -> None:
        await self._load()
        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s)
        connector = outbound.connector(self.settings)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            self._http = http
            while True:
                self._wake.clear()
                wait = await self._take_in()
                if self._orphans:
                    wait = min(wait, await self._adopt_orphans())
                wait = min(wait, await self._cut_and_start(time.time()))
                try:
                    async with asyncio.timeout(max(0.0, wait)):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    async def _load(self) -> None:
        """What a restart owes: notices no message carries yet, and messages to try."""
        while True:
            try:
                notices, opened = await self.store.load_notices(self.settings.node_id)
                break
            except StoreError as exc:
                log.error("could not read the queued notifications", error=str(exc))
                await asyncio.sleep(RETRY_S)
        self._resume(notices, opened)
        if notices or opened:
            log.info("notifications resumed", queued=len(notices), messages=len(opened))

    async def _adopt_orphans(self) -> float:
        assert self._adopt is not None  # ``_orphans`` is only ever set with it
        self._orphans = False
        try:
            notices, opened = await self._adopt()
        except StoreError as exc:  # still theirs on disk: look again soon
            log.error("could not adopt the notifications of stopped nodes", error=str(exc))
            self._orphans = True
            return RETRY_S
        self._resume(notices, opened)
        if notices or opened:
            log.warning(
                "adopted the notifications of stopped nodes",
                queued=len(notices),
                messages=len(opened),
            )
        return IDLE_S

    def _resume(self, notices: list[Notice], opened: list[NoticeMessage]) -> None:
        """Take on stored notices and owed messages (this node's own after a
        restart, or adopted)."""
        for message in opened:
            self._open[message.id] = message
            self._carried.setdefault(message.id, [])
        for n in notices:
            if n.message_id is not None and n.message_id in self._carried:
                self._carried[n.message_id].append(n)
            elif n.message_id is None:
                self._waiting.setdefault(n.batch, []).append(n)

    async def _take_in(self) -> float:
        """Queue the notices of everything observed since the last look."""
        taken, self._unstored = self._unstored, []
        while self._intake:
            taken.extend(self._notices_of(self._intake.popleft()))
        if not taken:
            return IDLE_S
        try:
            await self.store.put_notices(taken)
        except StoreError as exc:  # kept, and queued again at the next look
            log.error("could not queue notifications; will retry", error=str(exc))
            self._unstored = taken
            return RETRY_S
        known = {n.id for batch in self._waiting.values() for n in batch}
        known.update(n.id for carried in self._carried.values() for n in carried)
        for n in taken:
            if n.id not in known:
                self._waiting.setdefault(n.batch, []).append(n)
                known.add(n.id)
        return IDLE_S

    def _notices_of(self, observed: Observed) -> list[Notice]:
        now = time.time()
        if isinstance(observed, DueSoon):
            view = self._find_pending(observed.req_id)
            if view is None:
                return []
            extra: dict[str, Any] = {"on_timeout": observed.on_timeout}
            return self._matched(DUE_SOON, view, extra, now, f"{DUE_SOON}:{observed.due_at}")
        if observed.type == EventType.REQUEST:
            view = self._find_pending(observed.req_id)
            if view is None:
                return []  # settled (or gone elsewhere) before we looked: nothing to tell
            self._seen[observed.req_id] = view
            while len(self._seen) > SEEN_MAX:
                self._seen.popitem(last=False)
            return self._matched(NEW, view, {}, now, NEW)
        # A move: the new holder's role is ``to``; the request may still be on its way.
        _source, to, step, why = observed.fields[:4]
        found = self._find_pending(observed.req_id)
        view = found or self._seen.get(observed.req_id)
        if view is None:
            return []
        if found is None or (to not in found.roles and to != found.sid):
            view = dataclasses.replace(view, roles=(str(to),), sid="", connected=False)
        extra = {"why": str(why), "moved_to": str(to), "step": step}
        return self._matched(MOVED, view, extra, now, f"{MOVED}:{step}:{to}")

    def _matched(
        self, what: str, view: PendingView, extra: dict[str, Any], now: float, tag: str
    ) -> list[Notice]:
        names = view.roles or (view.sid,)
        task = self._find_task(view.task_id)
        out = []
        for batch, (rule, _to) in self._targets.items():
            if not covers(rule, view.kind, names, attended=view.connected, new=what == NEW):
                continue
            data = news(what, view, task, include_text=rule.include_text, extra=extra)
            out.append(
                Notice(f"{batch}|{view.req_id}|{tag}", batch, self.settings.node_id, now, data)
            )
        return out

    async def _cut_and_start(self, now: float) -> float:
        """Cut the messages whose time has come, start the tries that are due;
        how long until the next of either."""
        wait = IDLE_S
        for batch in list(self._waiting):
            notices = self._waiting[batch]
            # A new request settled (or moved on: its move is told) before a
            # message carried it is told to nobody.
            settled = [
                n
                for n in notices
                if n.data["what"] == NEW and self._find_pending(n.data["req_id"]) is None
            ]
            if settled and not await self._drop(batch, settled, now):
                return RETRY_S
            gone = {n.id for n in settled}
            urgent = [n for n in notices if n.data["what"] != NEW and n.id not in gone]
            batched = [n for n in notices if n.data["what"] == NEW and n.id not in gone]
            for n in urgent:
                if await self._cut(batch, [n], now) is None:
                    return RETRY_S
            target = self._targets.get(batch)
            interval = target[0].batch_s if target is not None else 0.0
            next_at = self._last_cut.get(batch, -interval) + interval
            if batched and next_at <= now:
                if await self._cut(batch, batched, now) is None:
                    return RETRY_S
                self._last_cut[batch] = now
            elif batched:
                wait = min(wait, next_at - now)
        for message in list(self._open.values()):
            if message.id in self._in_flight:
                continue
            due = message.due_at if message.due_at is not None else now
            if due > now:
                wait = min(wait, due - now)
                continue
            self._in_flight.add(message.id)
            self.background.spawn(self._try(message.id), name=f"notify:{message.id}")
        return wait

    async def _cut(
        self, batch: str, notices: list[Notice], now: float, *, mint: bool = True
    ) -> NoticeMessage | None:
        """One message for ``notices``, its links minted: stored, then owed
        (None: it could not be stored)."""
        target = self._targets.get(batch)
        recipient = target[1] if target is not None else None
        links: dict[str, Any] = {}
        if self.minter is not None and mint:
            for n in notices:
                try:
                    link = await self.minter.mint(
                        req_id=n.data["req_id"],
                        kind=n.data["kind"],
                        recipient=recipient,
                        due_at=n.data.get("deadline_at"),
                    )
                except Exception:  # the message goes without it: it says how to answer
                    log.exception("could not mint an action link", req_id=n.data["req_id"])
                    continue
                links[n.id] = {
                    "url": link.url,
                    "actions": list(link.actions),
                    "expires_at": link.expires_at,
                }
        message = NoticeMessage(
            f"ntf-{uuid.uuid4()}", batch, self.settings.node_id, now, now, data={"links": links}
        )
        try:
            await self.store.cut_notice_message(message, [n.id for n in notices])
        except Fenced as exc:  # frozen past the heartbeat: a live node sends them now
            log.warning("notifications adopted by another node; not sent here", error=str(exc))
            self._forget_waiting(batch, {n.id for n in notices})
            return None
        except StoreError as exc:
            log.error("could not store a notification message", error=str(exc))
            return None
        self._forget_waiting(batch, {n.id for n in notices})
        self._open[message.id] = message
        self._carried[message.id] = [dataclasses.replace(n, message_id=message.id) for n in notices]
        return message

    def _forget_waiting(self, batch: str, ids: set[str]) -> None:
        left = [n for n in self._waiting.get(batch, []) if n.id not in ids]
        if left:
            self._waiting[batch] = left
        else:
            self._waiting.pop(batch, None)

    async def _drop(self, batch: str, notices: list[Notice], now: float) -> bool:
        """Their notices go, through a message cut and settled at once."""
        message = await self._cut(batch, notices, now, mint=False)
        if message is None:
            return False
        await self._record(dataclasses.replace(message, due_at=None, last_error=None))
        return True

    async def _try(self, message_id: str) -> None:
        try:
            await self._attempt(self._open[message_id])
        finally:
            self._in_flight.discard(message_id)
            self._wake.set()

    async def _attempt(self, message: NoticeMessage) -> None:
        target = self._targets.get(message.batch)
        channel = target[0].channel if target is not None else "gone"
        limit = self.settings.webhook_max_attempts
        if target is None:
            await self._settle(message, channel, "its [[notify]] rule is no longer configured")
            return
        if message.attempts >= limit:
            # Counted before sent: the last try was cut short (the daemon stopped).
            await self._settle(message, channel, message.last_error or "the last try was cut short")
            return
        tries = message.attempts + 1
        counted = dataclasses.replace(
            message, attempts=tries, due_at=time.time() + self.backoff(tries)
        )
        try:
            await self.store.record_notice_message(counted)
        except Fenced as exc:
            self._adopted_elsewhere(message, exc)
            return
        except StoreError as exc:  # nothing sent: still due
            log.error("could not count a notification try", message=message.id, error=str(exc))
            return
        self._open[message.id] = counted
        error = await self._send(target[0], target[1], counted)
        if error is None:
            self.metrics.notification(channel, "sent")
            log.info("notification sent", message=message.id, channel=channel, tries=tries)
            await self._record(dataclasses.replace(counted, due_at=None, last_error=None))
            return
        self.metrics.notification(channel, "failed")
        if tries >= limit:
            await self._settle(counted, channel, error)
            return
        self.metrics.notification(channel, "retried")
        retry = self.backoff(tries)
        log.info(
            "notification try failed; will retry",
            message=message.id,
            channel=channel,
            tries=tries,
            error=error,
            retry_in_s=round(retry, 3),
        )
        await self._record(
            dataclasses.replace(counted, due_at=time.time() + retry, last_error=error)
        )

    async def _settle(self, message: NoticeMessage, channel: str, why: str) -> None:
        self.metrics.notification(channel, "given_up")
        log.warning(
            "notification given up (webhook_max_attempts)",
            message=message.id,
            channel=channel,
            tries=message.attempts,
            error=why,
        )
        await self._record(dataclasses.replace(message, due_at=None, last_error=why))

    async def _record(self, message: NoticeMessage) -> None:
        try:
            await self.store.record_notice_message(message)
        except Fenced as exc:
            self._adopted_elsewhere(message, exc)
            return
        except StoreError as exc:  # still due on disk (its try counted): tried again
            log.error("could not record a notification try", message=message.id, error=str(exc))
            return
        if message.due_at is None:
            self._open.pop(message.id, None)
            self._carried.pop(message.id, None)
        else:
            self._open[message.id] = message

    def _adopted_elsewhere(self, message: NoticeMessage, exc: Fenced) -> None:
        """This node froze past its heartbeat and a live node adopted the
        message meanwhile: it is that node's to send (or to have sent)."""
        log.warning("notification adopted by another node; not sent here", error=str(exc))
        self._open.pop(message.id, None)
        self._carried.pop(message.id, None)

    def digest(self, message: NoticeMessage) -> messages.Digest:
        links = message.data.get("links", {})
        return messages.Digest(
            message.id,
            [messages.Item(n.data, links.get(n.id)) for n in self._carried.get(message.id, [])],
        )

    async def _send(
        self, rule: NotifyRule, recipient: str | None, message: NoticeMessage
    ) -> str | None:
        digest = self.digest(message)
        if not digest.items:
            return None  # its notices went with their task's retention: nothing to say
        timeout = self.settings.webhook_timeout_s
        if rule.channel == "email":
            smtp = self.settings.smtp
            to = (recipient or "").removeprefix("email:")
            return await send_email(smtp, messages.email(digest, smtp.sender, to), timeout)
        assert self._http is not None  # set before any try starts
        if rule.channel == "chat":
            return await outbound.post_json(
                self._http, rule.url, messages.chat(digest), digest.key, timeout=timeout
            )
        refusal = outbound.refusal(self.settings, URL(rule.url), "the rule's url")
        if refusal is not None:
            return f"refused: {refusal}"
        return await outbound.post_json(
            self._http,
            rule.url,
            messages.webhook(digest),
            digest.key,
            secret=self.settings.webhook_secret,
            timeout=timeout,
        )
