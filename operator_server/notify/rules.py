"""Which ``[[notify]]`` rules cover a request, and who each one tells.

A rule covers a request when its kind is one of the rule's ``kinds`` and one
of the roles it is held under matches one of the rule's ``roles`` globs (a
session with no role is matched by its sid); with ``only_unattended`` only
while no connected session holds it.  An email rule tells each address in
``to`` (its own batch and links, attributed to ``email:<address>``); a chat or
webhook rule has one unnamed recipient.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from fnmatch import fnmatchcase

from operator_server.config import NotifyRule


def rule_key(rule: NotifyRule) -> str:
    """A rule's stable name: the same rule keeps it across restarts, so what
    it queued before one is still its own after."""
    text = "\x1f".join([rule.channel, rule.url, *rule.to, "|", *rule.roles, "|", *rule.kinds])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recipients(rule: NotifyRule) -> list[str | None]:
    return [f"email:{address}" for address in rule.to] if rule.channel == "email" else [None]


def batch_of(rule: NotifyRule, recipient: str | None) -> str:
    """What one message is for: a rule and one of its recipients."""
    return f"{rule_key(rule)}|{recipient or '*'}"


def role_covered(rule: NotifyRule, names: Iterable[str]) -> bool:
    return any(fnmatchcase(name, glob) for name in names for glob in rule.roles)


def covers(
    rule: NotifyRule, kind: str, names: Iterable[str], *, attended: bool, new: bool = True
) -> bool:
    """``names``: the roles the request is held under (or its session's sid);
    ``attended``: a connected session holds it.  ``only_unattended`` looks at
    new requests only: a reminder or a move is news to whoever holds it."""
    if kind not in rule.kinds or not role_covered(rule, names):
        return False
    return not (new and rule.only_unattended and attended)


def covers_role(rules: Iterable[NotifyRule], role: str, kind: str) -> bool:
    """Whether some rule tells someone of ``kind`` requests held under
    ``role`` (however attended): a dispatch whose face issues them to that
    role may wait rather than fail.  A rule for other kinds does not count:
    a request would wait with nobody told."""
    return any(kind in rule.kinds and role_covered(rule, (role,)) for rule in rules)
