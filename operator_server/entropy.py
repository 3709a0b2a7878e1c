"""Random bytes for ids and credentials: ``os.urandom``, read a block at a time.

Every ``os.urandom`` (and so every ``uuid4`` and ``secrets.token_*``) is a
system call, and a task needs about six random values (its id, a request id
per operator request, a capability nonce and a worker handle): in the e2e
profile they were ~1 s of 30 s busy.  Here one call reads ``BLOCK`` bytes and
the values are slices of it: the same bytes from the same source, each handed
out once (a lock guards the cursor).  A forked child starts a fresh block, so
it never repeats its parent's.
"""

from __future__ import annotations

import os
import threading

BLOCK = 4096


class _Pool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._block = b""
        self._at = 0

    def take(self, n: int) -> bytes:
        with self._lock:
            at = self._at
            if at + n > len(self._block):
                self._block, at = os.urandom(max(BLOCK, n)), 0
            self._at = at + n
            return self._block[at : at + n]

    def forget(self) -> None:
        self._block, self._at = b"", 0
        self._lock = threading.Lock()


_pool = _Pool()
os.register_at_fork(after_in_child=_pool.forget)


def token_bytes(n: int) -> bytes:
    """``n`` random bytes, as ``secrets.token_bytes``."""
    return _pool.take(n)


def token_hex(n: int) -> str:
    """``n`` random bytes as hex, as ``secrets.token_hex``."""
    return _pool.take(n).hex()


def uuid4_text() -> str:
    """A random (version 4) UUID's text, as ``str(uuid.uuid4())``, without
    building a ``uuid.UUID`` (every operator request's id holds one)."""
    raw = bytearray(_pool.take(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
