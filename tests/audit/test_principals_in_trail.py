"""The trail names principals, not just "local": a key's holder for what its
session answers, whoever made or revoked a key (over REST or with the CLI on
the store), and never the key's secret."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from tests.auth.test_keys import ADMIN, BOOT, bearer, make_key
from tests.conftest import Server
from tests.wsop import connect, expect


async def trail(client: TestClient[Any, Any], **params: str) -> list[tuple[Any, ...]]:
    resp = await client.get("/v1/audit", params={"limit": "1000", **params}, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    return [(e["action"], e["principal"], e["outcome"]) for e in (await resp.json())["entries"]]


async def test_what_a_keys_session_answers_is_that_keys_act_and_its_tasks_creators(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    reviewer = (await make_key(client, "operate:review-*", name="reviewer"))["key"]
    ci = (await make_key(client, "tasks:create", "tasks:read", name="ci"))["key"]
    minted = await client.post(
        "/v1/operators", json={"roles": ["review-a"]}, headers=bearer(reviewer)
    )
    op = await minted.json()
    ws = await connect(client, op["sid"], op["token"])
    created = await client.post(
        "/v1/tasks",
        json={"agent": "coder", "directive": "x", "operator": {"role": "review-a"}},
        headers=bearer(ci),
    )
    task = await created.json()
    hook = await expect(ws, "hook_before")
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": False, "reason": "no"})
    ended = await client.get(f"/v1/tasks/{task['id']}", params={"wait": "5"}, headers=bearer(ci))
    assert (await ended.json())["status"] == "failed"

    entries = await trail(client, task_id=task["id"])
    assert entries[0] == ("task.created", "key:ci", "pending")
    assert ("hook.rejected", "key:reviewer", "rejected") in entries
    assert ("session.minted", "key:reviewer", "review-a") in await trail(
        client, action="session.minted"
    )
    await ws.close()


async def test_keys_made_and_revoked_over_rest_are_the_admins_acts_without_the_secret(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    made = await make_key(client, "tasks:read", name="dashboard")
    assert (await client.delete(f"/v1/keys/{made['id']}", headers=ADMIN)).status == 204
    assert (await client.delete("/v1/keys/0000000000000000", headers=ADMIN)).status == 404
    resp = await client.get("/v1/audit", params={"action": "key.created"}, headers=ADMIN)
    created = (await resp.json())["entries"]
    assert [(e["principal"], e["outcome"], e["reason"]) for e in created] == [
        ("bootstrap", made["id"], "dashboard")
    ]
    assert made["key"] not in json.dumps(created)
    # The unknown key's refusal wrote nothing.
    assert await trail(client, action="key.revoked") == [("key.revoked", "bootstrap", made["id"])]


async def test_a_key_made_with_the_cli_on_the_store_is_the_accounts_act(
    server: Server, tmp_path: Path
) -> None:
    path = tmp_path / "keys.sqlite"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "operator_server", "keys", "create", "--name", "ops",
        "--scope", "admin", "--store-path", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    key = out.decode().strip().splitlines()[-1]
    client = await server(api_token=BOOT, store__path=str(path))
    resp = await client.get("/v1/audit", params={"action": "key.created"}, headers=bearer(key))
    (entry,) = (await resp.json())["entries"]
    assert entry["principal"].startswith("cli") and entry["reason"] == "ops"
