"""Chat notifications: the payload a Slack-style incoming webhook takes,
received by an aiohttp server this test runs (it stands in for the chat
service) and checked against the documented Block Kit shape and limits."""

from __future__ import annotations

from typing import Any

import jsonschema
from aiohttp import web

from operator_server.appkeys import ACTION_LINKS
from operator_server.notify import messages
from tests.conftest import Server, create_task
from tests.notify.receivers import Receiver
from tests.wsop import connect, eventually, expect, mint

# The subset of Block Kit the notifier uses, with the limits Slack documents:
# at most 50 blocks a message; section text up to 3000 characters; actions
# blocks of up to 25 elements; a button's plain_text up to 75 characters,
# its url up to 3000, action_id and block_id up to 255.
_TEXT = {"type": "string", "minLength": 1}
BLOCK_KIT = {
    "type": "object",
    "required": ["text", "blocks"],
    "additionalProperties": False,
    "properties": {
        "text": _TEXT,
        "blocks": {
            "type": "array",
            "maxItems": 50,
            "items": {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["type", "text"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"const": "section"},
                            "block_id": {"type": "string", "maxLength": 255},
                            "text": {
                                "type": "object",
                                "required": ["type", "text"],
                                "additionalProperties": False,
                                "properties": {
                                    "type": {"const": "mrkdwn"},
                                    "text": {**_TEXT, "maxLength": 3000},
                                },
                            },
                        },
                    },
                    {
                        "type": "object",
                        "required": ["type", "elements"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"const": "actions"},
                            "block_id": {"type": "string", "maxLength": 255},
                            "elements": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": 25,
                                "items": {
                                    "type": "object",
                                    "required": ["type", "text"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "type": {"const": "button"},
                                        "text": {
                                            "type": "object",
                                            "required": ["type", "text"],
                                            "additionalProperties": False,
                                            "properties": {
                                                "type": {"const": "plain_text"},
                                                "text": {**_TEXT, "maxLength": 75},
                                            },
                                        },
                                        "url": {
                                            "type": "string",
                                            "maxLength": 3000,
                                            "pattern": "^https?://",
                                        },
                                        "action_id": {"type": "string", "maxLength": 255},
                                    },
                                },
                            },
                        },
                    },
                ]
            },
        },
    },
}


async def chat_server(
    server: Server, aiohttp_server: Any, receiver: Receiver, **overrides: Any
) -> Any:
    service = await aiohttp_server(receiver.app())
    rule = {"channel": "chat", "url": f"http://127.0.0.1:{service.port}/hook", "batch_s": 0}
    rule.update(overrides.pop("rule", {}))
    return await server(notify=[rule], **overrides)


async def test_the_chat_service_gets_block_kit_sections_with_a_link_button_per_request(
    server: Server, aiohttp_server: Any
) -> None:
    receiver = Receiver()
    client = await chat_server(server, aiohttp_server, receiver)
    sid, token = await mint(client, ["reviewer"])
    ws = await connect(client, sid, token)
    task = await create_task(
        client, agent="coder", directive="ship <it>", operator={"role": "reviewer"}
    )
    hb = await expect(ws, "hook_before")
    await eventually(lambda: receiver.bodies, what="the chat message")
    (payload,) = receiver.bodies
    jsonschema.validate(payload, BLOCK_KIT)
    section, actions = payload["blocks"]
    assert "Approval needed: spawn agent coder" in section["text"]["text"]
    assert task["id"] in section["text"]["text"] and "ship &lt;it&gt;" in section["text"]["text"]
    (button,) = actions["elements"]
    origin = str(client.make_url("")).rstrip("/")
    assert button["url"].startswith(f"{origin}/v1/links/")
    app: web.Application = client.app
    claims = await app[ACTION_LINKS].verify(button["url"].rsplit("/", 1)[1])
    # A chat rule names no recipient: a decision through it is the principal "link"'s.
    assert (claims.req_id, claims.recipient, claims.principal) == (hb["req_id"], None, "link")
    assert button["text"]["text"] == "Decide: approve / reject"
    resp = await client.get(button["url"].removeprefix(origin))
    shown = await resp.text()
    assert resp.status == 200 and hb["req_id"] in shown and task["id"] in shown
    key = receiver.headers[0]["X-Operator-Server-Delivery"]
    assert section["block_id"].startswith(key) and actions["block_id"].startswith(key)
    assert task["id"] in payload["text"]
    await ws.close()


def test_a_message_listing_many_requests_stays_within_block_kits_limits() -> None:
    item = messages.Item(
        {
            "what": "new",
            "req_id": "op-1-hb-x",
            "kind": "hook_before",
            "task_id": "t-1",
            "agent": "a" * 200,
            "attempt": 1,
            "holder": "op-1",
            "roles": ["r"],
            "deadline_at": 1.0,
            "question": None,
            "directive": "d" * 5000,
        },
        {
            "url": "http://links.test/" + "x" * 100,
            "actions": ["approve", "reject"],
            "expires_at": 1.0,
        },
    )
    payload = messages.chat(messages.Digest("ntf-1", [item] * 60))
    jsonschema.validate(payload, BLOCK_KIT)
    assert payload["blocks"][-1]["text"]["text"].startswith(
        f"…and {60 - messages.CHAT_ITEMS_MAX} more"
    )
