"""The webhook wire format, declared once: header names, signing, verifying.

The body is the task JSON; ``X-Operator-Server-Signature`` is ``sha256=`` and
the hex HMAC-SHA256 of the exact body bytes keyed with ``webhook_secret``;
``X-Operator-Server-Delivery`` is one id per delivery, the same on every try.
A receiver verifies with ``verify`` (or the same three lines in any language).
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Operator-Server-Signature"
DELIVERY_HEADER = "X-Operator-Server-Delivery"


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """True when ``header`` is the signature of ``body`` (constant-time)."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)
