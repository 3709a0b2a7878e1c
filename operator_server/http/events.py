"""Task event streams over Server-Sent Events.

``GET /v1/tasks/{id}/events`` follows one task and closes after the event that
makes it terminal; ``GET /v1/events?status=&agent=`` follows every task.  Both
need the api token, like the task routes.  Each event is::

    id: <monotonic id>
    event: <type>
    data: {"task_id": ..., "type": ..., "at": ..., "agent": ..., "status": ..., ...}

A client reconnecting with ``Last-Event-ID`` gets exactly the events after that
id — read from the store, so also after a restart — and then the live ones.
An id past the newest is taken as given (ids are global, and in a cluster
another node may have sent it first): nothing is sent until newer events
exist, and a task's stream still closes when the task ends (at once if it has).
Without it, a task's stream starts at the task's creation, and the all-tasks
stream starts now: "follow" means what happens from here, not a replay of
every task the store still holds (``Last-Event-ID: 0`` asks for that).
The subscription is taken *before* the store is read, and events are
de-duplicated by id, so nothing falls between the two.

A live stream writes at most every ``WRITE_EVERY_S``: what was published
meanwhile goes out in one write.  With hundreds of streams open, a write per
stream per commit is what slowed every task down; a reader sees an event at
most that much later.  (Streams that want every event share one feed, encoded
once for all of them: ``engine/events.py``.)

A quiet stream gets a ``: keepalive`` comment every ``event_keepalive_s``.  A
reader that does not keep up is cut off exactly like a slow operator socket:
``outbound_queue_max`` events waiting, or one write blocked past
``write_timeout_s``.  At shutdown the fan-out closes every subscription and
each stream ends cleanly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from marshmallow import Schema, fields, validate

from operator_server.appkeys import ENGINE, METRICS, SETTINGS
from operator_server.auth.principal import Scope
from operator_server.engine.events import Encoded, FeedSubscription, Subscription, is_terminal, sse
from operator_server.engine.tasks import TaskStatus
from operator_server.errors import ApiError, Code
from operator_server.logs import get_logger
from operator_server.store import TaskEvent
from operator_server.wire.contract import EVENT_STREAM, Body, Operation, Security, documented

log = get_logger(__name__)
routes = web.RouteTableDef()
# Events read from the store per query while catching up.
BACKLOG_PAGE = 500
KEEPALIVE = b": keepalive\n\n"
# A live stream's writes are at least this far apart (see the module docstring).
WRITE_EVERY_S = 0.1


class EventsQuerySchema(Schema):
    status = fields.Enum(
        TaskStatus,
        by_value=True,
        metadata={"description": "only events after which the task has this status"},
    )
    agent = fields.String(
        validate=validate.Length(min=1, max=200),
        metadata={"description": "only events of tasks for this agent"},
    )


class EventDataSchema(Schema):
    """The JSON of one event's ``data:`` line (documentation; built by the engine)."""

    task_id = fields.String(required=True)
    type = fields.String(
        required=True,
        validate=validate.OneOf(
            [
                "created",
                "status",
                "attempt_started",
                "attempt_ended",
                "output",
                "request",
                "reply",
                "request_due_soon",
                "request_moved",
            ]
        ),
    )
    at = fields.String(required=True, metadata={"description": "ISO 8601 UTC"})
    agent = fields.String(required=True)
    status = fields.String(
        required=True, metadata={"description": "the task's status once the event applies"}
    )
    attempt = fields.Integer()
    node = fields.String(
        metadata={"description": "attempt_started: the node_id of the node running the attempt"}
    )
    outcome = fields.String(metadata={"description": "attempt_ended: the attempt's status"})
    error_code = fields.String()
    kind = fields.String(metadata={"description": "output: final | output"})
    source = fields.String(metadata={"description": "output: worker | ack | halt | agent"})
    ok = fields.Boolean()
    req_id = fields.String()
    face = fields.String()
    sid = fields.String()
    due_at = fields.String(
        metadata={"description": "request_due_soon: when the request's deadline passes (ISO)"}
    )
    on_timeout = fields.String(
        metadata={"description": "request_due_soon: what it becomes then (fail|decline|approve)"}
    )
    from_ = fields.String(
        data_key="from",
        metadata={"description": "request_moved: the role (or sid) the request left"},
    )
    to = fields.String(metadata={"description": "request_moved: the role it went to"})
    step = fields.Integer(metadata={"description": "request_moved: its place in the chain now"})
    reason = fields.String(
        metadata={"description": "request_moved: why (escalated | reassigned | handed_over)"}
    )
    after_s = fields.Float(
        metadata={"description": "request_moved: how long it waited at the step it left"}
    )
    note = fields.String(
        metadata={"description": "request_moved: the reassigning principal's note, if any"}
    )


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID", "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ApiError(Code.BAD_REQUEST, "Last-Event-ID: expected an event id (digits)")
    return int(raw)


def encode(events: list[TaskEvent]) -> bytes:
    return b"".join(sse(e) for e in events)


class _CutOff(Exception):
    """The reader is not keeping up."""


class EventStream:
    """One SSE response: catch up from the store, then follow the fan-out."""

    def __init__(
        self,
        request: web.Request,
        task_id: str | None,
        wants: Callable[[TaskEvent], bool] | None = None,
    ) -> None:
        app = request.app
        self.request = request
        self.task_id = task_id
        self.wants = wants
        self.engine = app[ENGINE]
        self.settings = app[SETTINGS]
        self.metrics = app[METRICS]
        self.resume_after = _last_event_id(request)
        self.after = 0
        self.response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # proxies: pass events through as they come
            }
        )

    async def run(self) -> web.StreamResponse:
        settings = self.settings
        fanout = self.engine.fanout
        sub = fanout.subscribe(self.task_id, settings.outbound_queue_max, self.wants)
        if self.resume_after is not None:
            self.after = self.resume_after
        elif self.task_id is None:
            # Taken after subscribing: whatever is published from here on is
            # newer, and queued for this stream.
            self.after = self.engine.published_event_id
        try:
            await self.response.prepare(self.request)
            if await self._catch_up():
                return self.response
            if self.task_id is not None:
                task = await self.engine.reads.find(self.task_id)
                if task is None or task.status.terminal:
                    # It ended while we caught up; its end is committed, so its
                    # events are stored or queued here: send what is queued, then stop.
                    await self._send_live(sub)
                    return self.response
            while True:
                if not await sub.wait(settings.event_keepalive_s):
                    await self._write(KEEPALIVE)
                    continue
                if sub.overflowed:
                    raise _CutOff("outbound_queue_max events waiting")
                if await self._send_live(sub) or sub.closed:
                    return self.response
                # Gather what comes meanwhile into the next write; then, under
                # load, ``wait`` finds it there and sets no timer.
                await asyncio.sleep(WRITE_EVERY_S)
        except _CutOff as why:
            log.warning(
                "event stream reader is not reading: disconnecting",
                reason=str(why),
                task_id=self.task_id,
            )
            self.metrics.slow_peer_disconnected()
            if (transport := self.request.transport) is not None:
                transport.abort()
            return self.response
        except (ConnectionError, RuntimeError) as exc:  # the reader went away
            log.debug("event stream ended by the reader", error=str(exc))
            return self.response
        finally:
            sub.close()

    async def _catch_up(self) -> bool:
        """Send the stored events after ``after``; True when the stream is done."""
        store = self.engine.store
        while True:
            page = await store.load_events(self.after, self.task_id, BACKLOG_PAGE)
            if await self._send(page):
                return True
            if len(page) < BACKLOG_PAGE:
                return False

    async def _send_live(self, sub: Subscription | FeedSubscription) -> bool:
        if isinstance(sub, FeedSubscription):
            await self._send_encoded(sub.take())
            return False
        return await self._send(sub.take())

    async def _send_encoded(self, entries: list[Encoded]) -> None:
        """Write the feed's entries not sent yet (every event: no filter, no end)."""
        after = self.after
        if not entries or entries[-1][0] <= after:
            return
        self.after = entries[-1][0]
        if entries[0][0] > after:  # the usual case: nothing here was sent in the catch-up
            await self._write(b"".join([block for _, block in entries]))
        else:
            await self._write(b"".join([block for id, block in entries if id > after]))

    async def _send(self, events: list[TaskEvent]) -> bool:
        """Write the events not sent yet; True when one ended the task's stream."""
        fresh = []
        done = False
        for event in events:
            if event.id <= self.after:
                # Sent already (in the catch-up as well as queued live), or before
                # the reader's Last-Event-ID.  Either way not sent again; but a
                # task's end still ends its stream, also for a Last-Event-ID past
                # the task's own events, which would otherwise never close.
                if self.task_id is not None and is_terminal(event):
                    done = True
                    break
                continue
            self.after = event.id
            if self.wants is not None and not self.wants(event):
                continue
            fresh.append(event)
            if self.task_id is not None and is_terminal(event):
                done = True
                break
        if fresh:
            await self._write(encode(fresh))
        return done

    async def _write(self, data: bytes) -> None:
        timeout = self.settings.write_timeout_s
        transport = self.request.transport
        if not timeout or (
            transport is not None
            # + a chunk header and trailer
            and transport.get_write_buffer_size() + len(data) + 32
            < transport.get_write_buffer_limits()[1]
        ):
            # Below the high-water mark the write cannot pause, so it cannot block:
            # no timer needed (one per write was a fair share of a busy stream's cost).
            await self.response.write(data)
            return
        try:
            async with asyncio.timeout(timeout):
                await self.response.write(data)
        except TimeoutError:
            raise _CutOff("a write stayed blocked past write_timeout_s") from None


_STREAM = Body(
    "Server-Sent Events: `id:` (monotonic), `event:` (the type) and `data:` (an EventData "
    "object) per event; `: keepalive` comments every event_keepalive_s. Send "
    "`Last-Event-ID` to resume after that id. Without it, a task's stream starts at "
    "its creation and the all-tasks stream at the newest event (`Last-Event-ID: 0`: "
    "everything stored).",
    EventDataSchema,
    media=(EVENT_STREAM,),
)


@routes.get("/v1/tasks/{task_id}/events")
@documented(
    Operation(
        "Follow one task's events from creation to its end (the stream then closes)",
        {200: _STREAM},
        errors={
            400: "a malformed Last-Event-ID",
            401: "no credential, or one that is not accepted",
            404: "no such task, or task events are turned off (events = false)",
        },
        security=(Security.API_KEY,),
        scopes=(Scope.EVENTS_READ,),
        # None are recorded, so there is nothing to follow: as if the route did not exist.
        switch=("events", "task events"),
        tags=("tasks",),
    )
)
async def task_events(request: web.Request) -> web.StreamResponse:
    task_id = request.match_info["task_id"]
    stream = EventStream(request, task_id)  # a bad Last-Event-ID is a 400 before the lookup
    if await request.app[ENGINE].reads.find(task_id) is None:
        raise ApiError(Code.TASK_NOT_FOUND, f"no task {task_id!r}")
    return await stream.run()


@routes.get("/v1/events")
@documented(
    Operation(
        "Follow every task's events, optionally filtered by status or agent",
        {200: _STREAM},
        errors={
            400: "a bad query or Last-Event-ID",
            401: "no credential, or one that is not accepted",
            404: "task events are turned off (events = false)",
        },
        security=(Security.API_KEY,),
        scopes=(Scope.EVENTS_READ,),
        switch=("events", "task events"),
        query=EventsQuerySchema,
        tags=("tasks",),
    )
)
async def all_events(request: web.Request, query: dict[str, Any]) -> web.StreamResponse:
    status = str(query["status"]) if "status" in query else None
    agent = query.get("agent")
    wants = None
    if status is not None or agent is not None:

        def wants(event: TaskEvent) -> bool:
            return (status is None or event.status == status) and (
                agent is None or event.agent == agent
            )

    return await EventStream(request, None, wants).run()
