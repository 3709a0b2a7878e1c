"""A small Server-Sent Events reader for tests."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientResponse


@dataclass
class Event:
    id: int
    type: str
    data: dict[str, Any]


async def next_block(resp: ClientResponse, timeout: float = 5) -> list[str] | None:
    """The lines of the next SSE block (up to a blank line); None at the end of the stream."""
    lines: list[str] = []
    while True:
        raw = await asyncio.wait_for(resp.content.readline(), timeout)
        if not raw:
            return None
        line = raw.decode().rstrip("\n")
        if line == "":
            if lines:
                return lines
            continue
        lines.append(line)


def fields_of(lines: list[str]) -> dict[str, str]:
    """A block's fields as sent (``id``, ``event``, ``data``), comments left out."""
    fields: dict[str, str] = {}
    for line in lines:
        if line.startswith(":"):
            continue
        name, _, value = line.partition(": ")
        fields[name] = value
    return fields


def parse(lines: list[str]) -> Event | None:
    """The event in a block, or None for a comment-only block (keepalive)."""
    fields = fields_of(lines)
    if not fields:
        return None
    return Event(int(fields["id"]), fields["event"], json.loads(fields["data"]))


async def next_event(resp: ClientResponse, timeout: float = 5) -> Event | None:
    """The next event, skipping comments; None at the end of the stream."""
    while True:
        block = await next_block(resp, timeout)
        if block is None:
            return None
        event = parse(block)
        if event is not None:
            return event


async def read_all(resp: ClientResponse, timeout: float = 5) -> list[Event]:
    """Every event until the server closes the stream."""
    out = []
    while (event := await next_event(resp, timeout)) is not None:
        out.append(event)
    return out
