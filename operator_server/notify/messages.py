"""One message for one batch, declared once and rendered per channel.

A ``Digest`` is what a message carries: its idempotency key and its items
(each a notice's content and the link minted for it).  Every channel says
the same for each request: what is asked, for which task and agent, by when,
and its link; nothing else (``news.py`` says what is left out).

* email: ``multipart/alternative`` with a text/plain and a text/html part
  (every value escaped in the HTML); the key is its ``Message-ID`` and the
  ``X-Operator-Server-Delivery`` header.
* chat: the incoming-webhook JSON Slack documents (and Mattermost accepts):
  ``text`` as the fallback, ``blocks`` of ``section`` (mrkdwn) and
  ``actions`` blocks whose buttons carry the link's ``url``, within Block
  Kit's limits (50 blocks, 3000 characters of section text, 75 of button
  text): past ``CHAT_ITEMS_MAX`` requests the last block says how many more.
* webhook: ``{"type": "notification", "idempotency_key", "requests": [...]}``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from operator_server.notify.news import DUE_SOON, MOVED
from operator_server.wire.times import iso

# Blocks per chat message: a section and an actions block per request, and a
# closing section for what did not fit, within Slack's 50.
CHAT_BLOCKS_MAX = 50
CHAT_ITEMS_MAX = (CHAT_BLOCKS_MAX - 1) // 2
SECTION_TEXT_MAX = 3000
BUTTON_TEXT_MAX = 75
WEBHOOK_TYPE = "notification"


@dataclass(frozen=True)
class Item:
    news: dict[str, Any]
    link: dict[str, Any] | None  # {"url", "actions", "expires_at"}


@dataclass(frozen=True)
class Digest:
    key: str  # the idempotency key: the same on every try of this message
    items: list[Item]


def headline(news: dict[str, Any]) -> str:
    agent, attempt = news.get("agent"), news.get("attempt")
    of_agent = f"agent {agent!s}" + (f" (attempt {attempt})" if attempt else "")
    kind = news["kind"]
    if kind == "ask":
        what = "A question for you"
    elif kind == "hook_before":
        what = f"Approval needed: spawn {of_agent}"
    else:
        what = f"Work to do by hand: {of_agent}"
    if news["what"] == DUE_SOON:
        return f"Reminder, due soon: {what}"
    if news["what"] == MOVED:
        return f"{str(news.get('why', 'moved')).replace('_', ' ').capitalize()} to you: {what}"
    return what


def facts(news: dict[str, Any]) -> list[tuple[str, str]]:
    """The lines under a headline, as (label, value)."""
    rows = [("Task", str(news["task_id"])), ("Request", str(news["req_id"]))]
    if news.get("agent"):
        rows.append(("Agent", str(news["agent"])))
    rows.append(("Held by", ", ".join(news.get("roles") or []) or str(news.get("holder"))))
    deadline = news.get("deadline_at")
    rows.append(("Deadline", (iso(deadline) if deadline else None) or "none"))
    if news.get("on_timeout"):
        rows.append(("Then", f"on_timeout: {news['on_timeout']}"))
    if news.get("question") is not None:
        rows.append(("Question", str(news["question"])))
    if news.get("directive") is not None:
        rows.append(("Directive", str(news["directive"])))
    return rows


def how_to_answer(item: Item) -> str:
    if item.link is not None:
        return f"Decide here ({' / '.join(item.link['actions'])}): {item.link['url']}"
    return f"Answer in the console, or POST /v1/requests/{item.news['req_id']}/reply"


def subject(digest: Digest) -> str:
    if len(digest.items) == 1:
        news = digest.items[0].news
        return f"[operator-server] {headline(news)} (task {news['task_id']})"
    return f"[operator-server] {len(digest.items)} requests wait for you"


def plain_text(digest: Digest) -> str:
    blocks = []
    for item in digest.items:
        lines = [headline(item.news)]
        lines += [f"  {label}: {value}" for label, value in facts(item.news)]
        lines.append(f"  {how_to_answer(item)}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def html_text(digest: Digest) -> str:
    e = html.escape
    parts = []
    for item in digest.items:
        rows = "".join(
            f"<tr><th align='left'>{e(label)}</th><td>{e(value)}</td></tr>"
            for label, value in facts(item.news)
        )
        if item.link is not None:
            actions = " / ".join(item.link["actions"])
            act = f'<p><a href="{e(item.link["url"])}">Decide ({e(actions)})</a></p>'
        else:
            act = f"<p>{e(how_to_answer(item))}</p>"
        parts.append(f"<h3>{e(headline(item.news))}</h3><table>{rows}</table>{act}")
    return "<!doctype html><html><body>" + "".join(parts) + "</body></html>\n"


def email(digest: Digest, sender: str, to: str, domain: str = "operator-server") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject(digest)
    msg["Date"] = formatdate(usegmt=True)
    # The same on every try: a receiving system can drop a second copy.
    msg["Message-ID"] = f"<{digest.key}@{domain}>"
    msg["X-Operator-Server-Delivery"] = digest.key
    msg.set_content(plain_text(digest))
    msg.add_alternative(html_text(digest), subtype="html")
    return msg


def _mrkdwn(text: str) -> str:
    """Slack's three control characters, escaped as its docs ask."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def chat(digest: Digest) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = []
    shown = digest.items[:CHAT_ITEMS_MAX]
    for n, item in enumerate(shown):
        lines = [f"*{_mrkdwn(headline(item.news))}*"]
        lines += [f"{_mrkdwn(label)}: {_mrkdwn(value)}" for label, value in facts(item.news)]
        if item.link is None:
            lines.append(_mrkdwn(how_to_answer(item)))
        # Every block carries the message's idempotency key in its block_id.
        blocks.append(
            {
                "type": "section",
                "block_id": f"{digest.key}-s{n}",
                "text": {"type": "mrkdwn", "text": _cut("\n".join(lines), SECTION_TEXT_MAX)},
            }
        )
        if item.link is not None:
            label = "Decide: " + " / ".join(item.link["actions"])
            blocks.append(
                {
                    "type": "actions",
                    "block_id": f"{digest.key}-a{n}",
                    "elements": [
                        {
                            "type": "button",
                            "text": {"type": "plain_text", "text": _cut(label, BUTTON_TEXT_MAX)},
                            "url": item.link["url"],
                            "action_id": f"open-{n}",
                        }
                    ],
                }
            )
    more = len(digest.items) - len(shown)
    if more:
        blocks.append(
            {
                "type": "section",
                "block_id": f"{digest.key}-more",
                "text": {"type": "mrkdwn", "text": f"…and {more} more: see the console's inbox"},
            }
        )
    fallback = "; ".join(f"{headline(i.news)} (task {i.news['task_id']})" for i in digest.items)
    return {"text": _cut(fallback, SECTION_TEXT_MAX), "blocks": blocks}


def webhook(digest: Digest) -> dict[str, Any]:
    return {
        "type": WEBHOOK_TYPE,
        "idempotency_key": digest.key,
        "requests": [{**item.news, "link": item.link} for item in digest.items],
    }
