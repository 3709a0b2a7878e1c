"""Every marshmallow schema a request needs is built once, not per request."""

from __future__ import annotations

from typing import Any

import marshmallow
import pytest

from tests.conftest import Server
from tests.wsop import connect, mint, thin_path_task


async def test_a_task_through_the_thin_path_builds_no_schema(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await server()
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    await thin_path_task(client, ws, sid)  # anything built lazily is built now

    built: list[str] = []
    init = marshmallow.Schema.__init__

    def counting(self: marshmallow.Schema, *args: Any, **kwargs: Any) -> None:
        built.append(type(self).__name__)
        init(self, *args, **kwargs)

    monkeypatch.setattr(marshmallow.Schema, "__init__", counting)
    await thin_path_task(client, ws, sid)
    assert built == []
