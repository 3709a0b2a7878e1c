"""The pages of an action link, rendered on the server: the request and its
forms, what the link decided, and why a link offers nothing.

No script: each action is a plain form posting back to the page's own URL.
Every value shown comes from a request, a task or a token, so every one is
escaped.  The page carries its own small stylesheet, allowed by its hash in
the Content-Security-Policy (``HEADERS``), and nothing else may load or run.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from html import escape
from typing import Any

from operator_server.wire.times import iso

# Longest task directive or question shown; the rest is cut with an ellipsis.
SUMMARY_MAX = 1200
REASON_MAX = 2000
# The form field of an answer with no form of its own (JSON), and the prefix
# of each field drawn from an ask's answer_schema.
ANSWER_JSON = "answer"
ANSWER_FIELD = "answer."

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;"
    "color:#1b1b1b;line-height:1.45}"
    "h1{font-size:1.3rem}dt{font-weight:600;margin-top:.5rem}dd{margin:0}"
    "pre{white-space:pre-wrap;background:#f4f4f4;padding:.5rem;border-radius:4px}"
    "form{border-top:1px solid #ddd;margin-top:1rem;padding-top:1rem}"
    "label{display:block;margin:.5rem 0 .2rem}"
    "textarea,input[type=text],input[type=number],select{width:100%;box-sizing:border-box}"
    "button{margin:.75rem .5rem 0 0;padding:.4rem 1rem}"
    ".refused{color:#8a1c1c}.decided{color:#1c5e20}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

# Every link page's headers: nothing but its own stylesheet, forms posting to
# itself, no framing; no Referer (the URL is the credential), never cached,
# never indexed.
HEADERS: Mapping[str, str] = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": "; ".join(
        (
            "default-src 'none'",
            f"style-src 'sha256-{_STYLE_HASH}'",
            "form-action 'self'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        )
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex, nofollow",
}

# The refusals of a form, not of its link: the page can be filled again.
_FORM_CODES = frozenset({"bad_request", "bad_answer", "forbidden", "too_large"})
_VERBS = {
    "approve": "Approved",
    "reject": "Rejected",
    "answer": "Answered",
    "decline": "Declined",
    "halt": "Halted",
}


@dataclass(frozen=True)
class Shown:
    """What the page says about the request."""

    kind: str
    req_id: str
    task_id: str
    agent: str | None
    attempt: int | None
    question: Any
    directive: str | None
    answer_schema: dict[str, Any] | None
    deadline_at: float | None
    expires_at: float


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex, nofollow">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def _summary(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1] + "…"


def _facts(rows: Iterable[tuple[str, str | None]]) -> str:
    return (
        "<dl>"
        + "".join(
            f"<dt>{escape(name)}</dt><dd>{escape(value)}</dd>"
            for name, value in rows
            if value is not None
        )
        + "</dl>"
    )


def request_page(shown: Shown, actions: tuple[str, ...], check: str) -> str:
    """The request and one form per decision; nothing is decided until one is posted."""
    titles = {
        "hook_before": "Approve this spawn?",
        "ask": "An agent asks",
        "spawn": "A spawn waits for its operator",
    }
    facts = _facts(
        (
            ("Task", shown.task_id),
            ("Agent", shown.agent),
            ("Attempt", None if shown.attempt is None else str(shown.attempt)),
            ("Decide by", None if shown.deadline_at is None else iso(shown.deadline_at)),
            ("This link works until", iso(shown.expires_at)),
            ("Request", shown.req_id),
        )
    )
    parts = [f"<h1>{escape(titles.get(shown.kind, shown.kind))}</h1>", facts]
    if shown.question is not None:
        parts.append(f"<h2>Question</h2><pre>{escape(_summary(shown.question))}</pre>")
    if shown.directive:
        parts.append(f"<h2>The task's directive</h2><pre>{escape(_summary(shown.directive))}</pre>")
    hidden = f'<input type="hidden" name="check" value="{escape(check)}">'
    reason = (
        '<label for="reason">{}</label>'
        f'<textarea id="reason" name="reason" rows="3" maxlength="{REASON_MAX}"></textarea>'
    )
    if "approve" in actions:
        parts.append(
            f'<form method="post">{hidden}{reason.format("Reason (optional)")}'
            '<button type="submit" name="action" value="approve">Approve</button>'
            '<button type="submit" name="action" value="reject">Reject</button></form>'
        )
    if "answer" in actions:
        parts.append(
            f'<form method="post">{hidden}{_answer_fields(shown.answer_schema)}'
            '<button type="submit" name="action" value="answer">Answer</button></form>'
        )
    if "decline" in actions:
        parts.append(
            f'<form method="post">{hidden}{reason.format("Why decline (optional)")}'
            '<button type="submit" name="action" value="decline">Decline</button></form>'
        )
    if "halt" in actions:
        parts.append(
            f'<form method="post">{hidden}{reason.format("Why halt (optional)")}'
            '<button type="submit" name="action" value="halt">Halt the attempt</button></form>'
        )
    return _page(titles.get(shown.kind, shown.kind), "".join(parts))


def _answer_fields(schema: dict[str, Any] | None) -> str:
    """One field per property of an answer form; a JSON text area without one."""
    if schema is None:
        return (
            f'<label for="answer">Answer (JSON: a text in "quotes", a number, an object…)</label>'
            f'<textarea id="{ANSWER_JSON}" name="{ANSWER_JSON}" rows="5" required></textarea>'
        )
    required = set(schema.get("required", []))
    out = []
    if schema.get("description"):
        out.append(f"<p>{escape(str(schema['description']))}</p>")
    for n, (name, prop) in enumerate(schema.get("properties", {}).items()):
        field_id = f"f{n}"
        field = escape(ANSWER_FIELD + name)
        label = escape(str(prop.get("title") or name)) + (" *" if name in required else "")
        hint = f"<small>{escape(str(prop['description']))}</small>" if "description" in prop else ""
        default = prop.get("default")
        kind = prop.get("type")
        if kind == "boolean":
            checked = " checked" if default is True else ""
            out.append(
                f'<label><input type="checkbox" id="{field_id}" name="{field}" value="true"'
                f"{checked}> {label}</label>{hint}"
            )
            continue
        out.append(f'<label for="{field_id}">{label}</label>{hint}')
        if "enum" in prop:
            names = prop.get("enumNames") or prop["enum"]
            options = "".join(
                f'<option value="{escape(str(v))}"{" selected" if v == default else ""}>'
                f"{escape(str(names[i] if i < len(names) else v))}</option>"
                for i, v in enumerate(prop["enum"])
            )
            blank = "" if name in required else '<option value=""></option>'
            out.append(f'<select id="{field_id}" name="{field}">{blank}{options}</select>')
        else:
            typ = "number" if kind in ("number", "integer") else "text"
            step = ' step="1"' if kind == "integer" else ' step="any"' if kind == "number" else ""
            value = "" if default is None else f' value="{escape(str(default))}"'
            out.append(f'<input type="{typ}"{step} id="{field_id}" name="{field}"{value}>')
    return "".join(out)


def decided_page(action: str, principal: str, at: float, req_id: str) -> str:
    """What this link decided, by whom and when."""
    verb = _VERBS.get(action, action)
    body = (
        f'<h1 class="decided">{escape(verb)}</h1>'
        f"<p>This link was used: <strong>{escape(verb.lower())}</strong> by "
        f"<strong>{escape(principal)}</strong> at {escape(iso(at) or '')}.</p>"
        + _facts((("Request", req_id),))
    )
    return _page(verb, body)


def refused_page(status: int, code: str, message: str) -> str:
    """Why this link decides nothing (now, or ever)."""
    headline = {
        400: "That did not work",
        403: "This link is not valid",
        404: "No such link",
        409: "Nothing to decide here",
        410: "This link no longer works",
    }.get(status, "Nothing was decided")
    # A form that was refused can be filled again: the page's own URL shows it.
    back = '<p><a href="">Back to the request</a></p>' if code in _FORM_CODES else ""
    body = (
        f'<h1 class="refused">{escape(headline)}</h1><p>{escape(message)}</p>{back}'
        f"<p><small>{escape(code)} ({status}). Nothing was decided through this page.</small></p>"
    )
    return _page(headline, body)
