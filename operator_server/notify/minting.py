"""What the notifier needs of the action links (``links.py``): a minter.

The notifier depends on this Protocol only, not on how a link is signed or
verified; ``app.py`` hands it the real ``ActionLinks``.  A link is minted per
request and recipient when a message is cut, and kept with the message, so
every try of that message carries the same links.
"""

from __future__ import annotations

from typing import Protocol


class MintedLink(Protocol):
    @property
    def url(self) -> str: ...

    @property
    def actions(self) -> tuple[str, ...]: ...

    @property
    def expires_at(self) -> float: ...


class LinkMinter(Protocol):
    async def mint(
        self, *, req_id: str, kind: str, recipient: str | None, due_at: float | None
    ) -> MintedLink:
        """A link to the confirmation page of ``req_id`` for ``recipient``
        (``email:<address>``; None for a chat or webhook rule)."""
        ...
