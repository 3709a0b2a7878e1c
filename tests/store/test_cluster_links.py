"""An action link in a cluster: two real daemons on one real PostgreSQL.  A
link signed with node A's key and address is opened on A and decided on B;
the decision reaches the request wherever it was issued, and the link is
spent on every node."""

from __future__ import annotations

import html
import re

import aiohttp

from operator_server.config import load_settings
from operator_server.notify.links import ActionLinks
from operator_server.store import MemoryStore
from tests.store.test_cluster_requests import HOOKED, ended
from tests.store.test_cluster_routing import create, mint, next_of, two_nodes
from tests.store.test_postgres_cluster import connect, daemons

ANN = "email:ann@example.org"


async def test_a_link_opened_on_one_node_is_decided_on_the_other_and_spent_on_both(
    pg_url: str,
) -> None:
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        op = await mint(http, b)
        ws = await connect(http, b, op)
        task_id = await create(http, a, HOOKED)  # issued on A, held by the socket on B
        hook = await next_of(ws, "hook_before")

        async def held_on_b(req_id: str) -> tuple[str, str]:
            return op["sid"], task_id

        # Minted as node A's notifier would: the cluster's secret ("s"), A's address.
        links = ActionLinks(
            load_settings(env={}, overrides={"secret": "s"}),
            MemoryStore(),
            held_on_b,
            lambda: a.base,
        )
        link = await links.mint(
            req_id=hook["req_id"], kind="hook_before", recipient=ANN, due_at=None
        )
        path = link.url[len(a.base) :]

        async with http.get(f"{a.base}{path}") as resp:
            assert resp.status == 200, await resp.text()
            found = re.search(r'name="check" value="([0-9a-f]+)"', await resp.text())
            assert found is not None
        async with http.head(f"{b.base}{path}") as resp:
            assert resp.status == 200
        form = {"check": found.group(1), "action": "reject", "reason": "decided on b"}
        async with http.post(f"{b.base}{path}", data=form, allow_redirects=False) as resp:
            assert resp.status == 303, await resp.text()

        cancel = await next_of(ws, "cancel")
        assert (cancel["req_id"], cancel["reason"]) == (hook["req_id"], "answered_elsewhere")
        task = await ended(http, a.base, task_id)
        assert task["status"] == "failed" and "decided on b" in task["error"]["message"]
        async with http.get(f"{a.base}/v1/audit?action=hook.rejected") as resp:
            entries = (await resp.json())["entries"]
        assert [(e["req_id"], e["principal"]) for e in entries] == [(hook["req_id"], ANN)]

        # Spent on every node: A shows the decision and refuses another.
        async with http.get(f"{a.base}{path}") as resp:
            assert resp.status == 200 and f"by <strong>{ANN}</strong>" in html.unescape(
                await resp.text()
            )
        async with http.post(f"{a.base}{path}", data=form, allow_redirects=False) as resp:
            assert resp.status == 409 and "link_used" in await resp.text()
        await ws.close()
