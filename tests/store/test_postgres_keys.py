"""API keys in a cluster: two real daemons on one real PostgreSQL.  A key
revoked on one node is refused by the other, which had it cached, as soon as
the revocation's notice reaches it; one revoked by the CLI on the database
likewise; and a session minted on one node names its minter on the other."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from tests.auth.test_keys import keys_cli
from tests.store.test_cluster_routing import two_nodes
from tests.store.test_postgres_cluster import daemons
from tests.test_daemon import Daemon

BOOT = "cluster-bootstrap"
ADMIN = {"Authorization": f"Bearer {BOOT}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def heard_revocation(node: Daemon, key_id: str) -> None:
    """Wait until ``node`` logs that it dropped ``key_id`` (its stdout, JSON lines)."""
    assert node.proc.stdout is not None
    async with asyncio.timeout(10):
        while True:
            line = await asyncio.to_thread(node.proc.stdout.readline)
            assert line, "the node exited"
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("event", "").startswith("API key revoked") and (
                    entry.get("key_id") == key_id
                ):
                    return


async def code_of(http: aiohttp.ClientSession, url: str, key: str) -> tuple[int, Any]:
    async with http.get(url, headers=bearer(key)) as resp:
        body = await resp.json()
        return resp.status, body["error"]["code"] if resp.status >= 400 else None


async def test_a_key_revoked_on_one_node_is_refused_by_the_other_that_cached_it(
    pg_url: str,
) -> None:
    a, b = await two_nodes(pg_url, 10, "--api-token", BOOT)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        body = {"name": "ci", "scopes": ["tasks:read", "operate:*"]}
        async with http.post(f"{a.base}/v1/keys", json=body, headers=ADMIN) as resp:
            assert resp.status == 201
            made = await resp.json()
        key, key_id = made["key"], made["id"]
        assert await code_of(http, f"{b.base}/v1/tasks", key) == (200, None)  # cached on B

        # A session minted on A names its minter on B too.
        async with http.post(
            f"{a.base}/v1/operators", json={"roles": ["main"]}, headers=bearer(key)
        ) as resp:
            op = await resp.json()
        async with http.get(
            f"{b.base}/v1/operators/{op['sid']}", headers=bearer(op["token"])
        ) as resp:
            assert (await resp.json())["minted_by"] == "key:ci"

        async with http.delete(f"{a.base}/v1/keys/{key_id}", headers=ADMIN) as resp:
            assert resp.status == 204
        await heard_revocation(b, key_id)
        assert await code_of(http, f"{b.base}/v1/tasks", key) == (401, "key_revoked")
        assert await code_of(http, f"{a.base}/v1/tasks", key) == (401, "key_revoked")


async def test_a_key_revoked_by_the_cli_on_the_database_is_refused_by_running_nodes(
    pg_url: str,
) -> None:
    a, b = await two_nodes(pg_url, 10, "--api-token", BOOT)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        code, out, err = await keys_cli(
            "create", "--store-url", pg_url, "--name", "cli", "--scope", "tasks:read"
        )
        assert code == 0, err
        key = out.strip().splitlines()[-1]
        key_id = key.split("_")[1]
        for node in (a, b):
            assert await code_of(http, f"{node.base}/v1/tasks", key) == (200, None)
        code, _, err = await keys_cli("revoke", key_id, "--store-url", pg_url)
        assert code == 0, err
        for node in (a, b):
            await heard_revocation(node, key_id)
            assert await code_of(http, f"{node.base}/v1/tasks", key) == (401, "key_revoked")
        # The CLI never joined the cluster: no node row of its own.
        async with http.get(f"{a.base}/v1/healthz") as resp:
            assert resp.status == 200
