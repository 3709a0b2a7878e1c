"""The nodes of a cluster talking to each other through PostgreSQL ``LISTEN/NOTIFY``.

No broker of our own: a message is a ``NOTIFY`` on the database every node
already shares.  Each node listens on two channels — its own (``channel(node)``)
and ``os_all`` (every node, itself included) — on one dedicated connection.

A message is one of ``cluster/messages.py``, encoded there.  A
``NOTIFY`` payload is limited to 8000 bytes, so a larger message is stored in
``cluster_messages`` and only ``#<id>`` is notified; the receiver reads it from
there (the reaper deletes what is a minute old).

Every message heard from another node is counted, by kind and by whether it
was addressed to this node alone (``direct``) or to every node
(``broadcast``): ``received``, exposed as
``operator_server_cluster_messages_total``.  The direct ones are what a
task's work costs in crossings (``cluster/placement.py`` keeps them to the
one that hands a task over); the broadcasts are per batch, shared by every
task in it.

Messages are handed to their handler one at a time, in the order they arrived,
on the event loop: handlers are plain functions that must not block; anything
that has to wait is started by the handler itself as a background task.

A broadcast a node's store makes as a batch commits (``EventsStored``,
``TasksEnded``) is sent only while another node has a row in
``cluster_nodes``: a one-node cluster spends no ``NOTIFY`` on it, and hands it
to its own handlers instead (``hear_own``).

``NOTIFY`` is fire-and-forget: a message sent while a node's listening
connection is down is lost to it.  So nothing relies on a message alone: every
state it announces is also a row, and when the connection comes back the bus
calls its ``on_resync`` callbacks, which re-read what they might have missed.
The listener also pings the database every ``ping_s``, so a connection cut
without a FIN is noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import asyncpg

from operator_server.cluster.messages import Message, decode
from operator_server.logs import get_logger

log = get_logger(__name__)
ALL = "os_all"
# Below PostgreSQL's 8000-byte payload limit, with room for the channel name.
INLINE_MAX = 7000
RETRY_S = 0.5
START_TIMEOUT_S = 10
STOP_RETRY_S = 1.0
M = TypeVar("M", bound=Message)
Handler = Callable[[str, Any], None]  # (from node, message)


def channel(node_id: str) -> str:
    """A node's channel: a short, safe identifier whatever the node id holds.
    The same function is written in SQL where a statement notifies a node."""
    return "os_" + hashlib.md5(node_id.encode()).hexdigest()[:16]


SQL_CHANNEL = "'os_' || left(md5({}), 16)"


class PgBus:
    def __init__(self, url: str) -> None:
        self.url = url
        self.node_id = ""  # set before ``start``: the store learns it with its leases
        self._pool: asyncpg.Pool | None = None
        self._ping_s = 5.0
        self._handlers: dict[str, Handler] = {}
        self._resync: list[Callable[[], None]] = []
        # (channel, payload) as heard.
        self._inbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        # (kind, "direct" | "broadcast") -> messages heard from other nodes.
        self.received: Counter[tuple[str, str]] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    def on(self, kind: type[M], handler: Callable[[str, M], None]) -> None:
        """``handler(from_node, message)`` for every message of ``kind``."""
        self._handlers[kind.KIND] = handler

    def on_resync(self, callback: Callable[[], None]) -> None:
        """Called each time listening starts again after a lost connection, and
        when this node beats again after its leases lapsed (``resync``)."""
        self._resync.append(callback)

    def resync(self) -> None:
        """Have everything re-read what it may have missed: the listener was
        cut, or the other nodes took this one for dead (frozen, or cut off from
        the store for a whole lease) and buried it, unplugging the sockets it
        holds and withdrawing its requests."""
        for callback in self._resync:
            callback()

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    async def start(self, pool: asyncpg.Pool, ping_s: float) -> None:
        """Listen, and return once the first connection listens."""
        self._pool, self._ping_s = pool, ping_s
        # Owned by the store, like its writer: it lives exactly as long as the store is open.
        self._task = asyncio.get_running_loop().create_task(
            self._listen_forever(), name="store-postgres-listener"
        )
        # Not listening yet is not fatal (the listener keeps trying, then resyncs).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), START_TIMEOUT_S)

    async def stop(self) -> None:
        task, self._task = self._task, None
        # Cancelled again until it ends: a cancel that lands as an awaited call
        # completes can be absorbed by it, and the store's close must not hang.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=STOP_RETRY_S)

    # -- sending ------------------------------------------------------------

    def inline(self, message: Message) -> str | None:
        """The message as a NOTIFY payload a statement can send itself, or None
        when it is too large for one (then ``send`` it)."""
        text = message.encode(self.node_id)
        return text if len(text) <= INLINE_MAX else None

    async def send(self, node: str | None, message: Message) -> None:
        """Notify ``node`` (None: every node, this one too).  Raises
        ``OSError`` when it cannot; a node not listening just does not get it."""
        if self._pool is None:
            raise asyncpg.InterfaceError("the cluster bus is not started")
        text = message.encode(self.node_id)
        name = ALL if node is None else channel(node)
        try:
            async with self._pool.acquire() as conn:
                if len(text) <= INLINE_MAX:
                    await conn.execute("SELECT pg_notify($1, $2)", name, text)
                else:
                    await conn.execute(
                        "WITH m AS (INSERT INTO cluster_messages (body) VALUES ($2) "
                        "RETURNING id) SELECT pg_notify($1, '#' || id) FROM m",
                        name,
                        text,
                    )
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # One kind of failure for callers above the store: could not send.
            raise ConnectionError(f"cannot notify: {exc}") from exc

    # -- receiving ----------------------------------------------------------

    def hear_own(self, message: Message) -> None:
        """Handle a message of this node's own that was not sent, no other node
        being there to hear it (the store's batch news on a one-node cluster):
        as its echo would have been, so this node acts on it alike."""
        handler = self._handlers.get(message.KIND)
        try:
            if handler is not None:
                handler(self.node_id, message)
        except Exception:  # as ``_dispatch``: one bad message must not stop the writer
            log.exception("cluster message failed", kind=message.KIND)

    def _heard(self, conn: Any, pid: int, chan: str, payload: str) -> None:
        del conn, pid
        self._inbox.put_nowait((chan, payload))

    def counts(self) -> dict[tuple[str, str], float]:
        """Messages heard from other nodes so far, by (kind, direct or broadcast)."""
        return {key: float(n) for key, n in self.received.items()}

    async def _listen_forever(self) -> None:
        first = True
        while True:
            try:
                conn = await asyncpg.connect(self.url, timeout=10)
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                log.warning("cluster listener cannot connect; retrying", error=str(exc))
                await asyncio.sleep(RETRY_S)
                continue
            try:
                await conn.add_listener(channel(self.node_id), self._heard)
                await conn.add_listener(ALL, self._heard)
                self._listening.set()
                if not first:
                    log.info("cluster listener is back; re-reading what it may have missed")
                    self.resync()
                first = False
                await self._serve(conn)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("cluster listener lost its connection", error=str(exc))
            finally:
                self._listening.clear()
                conn.terminate()
            await asyncio.sleep(RETRY_S)

    async def _serve(self, conn: asyncpg.Connection) -> None:
        while True:
            # ``asyncio.timeout``, not ``wait_for``: on 3.11 ``wait_for`` can
            # swallow a cancel that arrives as the inner call completes.
            try:
                async with asyncio.timeout(self._ping_s):
                    chan, payload = await self._inbox.get()
            except TimeoutError:
                async with asyncio.timeout(self._ping_s):
                    await conn.execute("SELECT 1")
                continue
            if payload.startswith("#"):
                found = await conn.fetchval(
                    "SELECT body FROM cluster_messages WHERE id = $1", int(payload[1:])
                )
                if found is None:
                    continue
                payload = found
            self._dispatch(payload, chan != ALL)

    def _dispatch(self, payload: str, direct: bool) -> None:
        try:
            sender, message = decode(payload)
            if message is not None and sender != self.node_id:
                self.received[message.KIND, "direct" if direct else "broadcast"] += 1
            handler = None if message is None else self._handlers.get(message.KIND)
            if handler is not None:
                handler(sender, message)
        except Exception:  # one bad message must not stop the listener
            log.exception("cluster message failed", payload=payload[:200])
