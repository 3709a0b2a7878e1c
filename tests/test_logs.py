"""Logging as the daemon configures it: JSON lines, context, and no secrets."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator

import pytest
import structlog

from operator_server.logs import configure_logging, get_logger
from tests.conftest import Server, create_task, wait_task
from tests.wsop import connect, expect, mint, thin_path_task


def logging_to_buffer(monkeypatch: pytest.MonkeyPatch, level: str) -> Iterator[io.StringIO]:
    """The daemon's own configuration at ``level``, writing to a buffer instead of stdout."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    configure_logging(level, "json")
    try:
        yield out
    finally:
        structlog.reset_defaults()


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Every line, ``debug`` and up."""
    yield from logging_to_buffer(monkeypatch, "debug")


@pytest.fixture
def info_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The daemon's shipped level, ``info``."""
    yield from logging_to_buffer(monkeypatch, "info")


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line]


def test_secret_keys_are_redacted_by_the_configured_pipeline(
    json_logs: io.StringIO,
) -> None:
    log = get_logger("test")
    log.info(
        "careless",
        token="tok-123",
        api_token="api-456",
        capability_token="cap-789",
        worker_handle="wh-abc",
        authorization="Bearer xyz",
        task_id="t-1",
    )
    (line,) = lines(json_logs)
    assert line["event"] == "careless" and line["task_id"] == "t-1"
    for key in ("token", "api_token", "capability_token", "worker_handle", "authorization"):
        assert line[key] == "[redacted]"
    rendered = json.dumps(line)
    for secret in ("tok-123", "api-456", "cap-789", "wh-abc", "xyz"):
        assert secret not in rendered


def test_context_bound_in_contextvars_reaches_every_line(
    json_logs: io.StringIO,
) -> None:
    structlog.contextvars.bind_contextvars(task_id="t-9", token="sneaky")
    try:
        get_logger("test").info("working")
    finally:
        structlog.contextvars.clear_contextvars()
    (line,) = lines(json_logs)
    assert line["task_id"] == "t-9"
    assert line["token"] == "[redacted]"


def test_every_line_is_one_ascii_json_object_whatever_it_carries(json_logs: io.StringIO) -> None:
    log = get_logger("test")
    log.info("plain", n=1, ok=True)
    log.info("unicode", name="zoë ✓")
    log.info("huge", n=2**70)
    log.info("odd", value=object(), keyed={1: "one"})
    raw = json_logs.getvalue().splitlines()
    assert all(text.isascii() for text in raw)
    plain, unicode, huge, odd = lines(json_logs)
    assert (plain["n"], plain["ok"]) == (1, True)
    assert unicode["name"] == "zoë ✓"
    assert huge["n"] == 2**70
    assert str(odd["value"]).startswith("<object object") and odd["keyed"] == {"1": "one"}


async def test_at_info_a_task_logs_one_line_its_end_with_outcome_and_duration(
    info_logs: io.StringIO, server: Server
) -> None:
    client = await server()
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    passed = await thin_path_task(client, ws, sid)
    failed = await create_task(client, agent="coder", directive="d", operator={"sid": sid})
    hook = await expect(ws, "hook_before")
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": False})
    assert (await wait_task(client, failed["id"]))["status"] == "failed"

    for task, status in ((passed, "passed"), (failed, "failed")):
        about = [line for line in lines(info_logs) if line.get("task_id") == task["id"]]
        assert len(about) == 1, about
        (end,) = about
        assert (end["level"], end["event"], end["status"]) == ("info", "task finished", status)
        assert isinstance(end["duration_s"], float) and end["attempts"] == 1
        assert ("code" in end) == (status == "failed")  # why it did not pass
