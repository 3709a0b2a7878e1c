"""The clients find their credential in ``OPERATOR_SERVER_API_KEY`` (and still
in ``OPERATOR_SERVER_API_TOKEN``; the key wins when both are set): the ``task``
CLI, the terminal operator (and the MCP bridge, which shares its options) as
real processes, and ``OperatorClient`` as a library."""

from __future__ import annotations

import pytest

from operator_server.client import OperatorClient
from tests.auth.test_keys import BOOT, make_key
from tests.client.test_cli import base, run_cli, start_operator, stop
from tests.conftest import Server, directory_of


async def test_the_task_cli_takes_the_key_from_the_environment_before_the_token(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await server(api_token=BOOT)
    key = (await make_key(client, "tasks:read"))["key"]
    monkeypatch.setenv("OPERATOR_SERVER_API_KEY", key)
    monkeypatch.setenv("OPERATOR_SERVER_API_TOKEN", "not-the-token")
    code, listed, err = await run_cli("task", "list", "--url", base(client))
    assert code == 0, err
    assert listed["tasks"] == []
    # The key is used, not the bootstrap token: it may read but not create.
    code, _, err = await run_cli("task", "create", "--url", base(client), "--agent", "echo",
                                 "--directive", "x")  # fmt: skip
    assert code == 1 and "forbidden" in err and "tasks:create" in err

    monkeypatch.delenv("OPERATOR_SERVER_API_KEY")
    monkeypatch.setenv("OPERATOR_SERVER_API_TOKEN", BOOT)  # the older name still works
    code, _, err = await run_cli("task", "list", "--url", base(client))
    assert code == 0, err


async def test_the_terminal_operator_mints_with_the_key_from_the_environment(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await server(api_token=BOOT)
    key = (await make_key(client, "operate:review-*", name="desk"))["key"]
    monkeypatch.setenv("OPERATOR_SERVER_API_KEY", key)
    proc = await start_operator(client, "--role", "review-1")
    try:
        (session,) = directory_of(client).sessions.values()
        assert session.roles == ["review-1"] and session.minted_by == "key:desk"
    finally:
        await stop(proc)


async def test_operator_client_reads_the_key_from_the_environment(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await server(api_token=BOOT)
    key = (await make_key(client, "operate:*", name="lib"))["key"]
    monkeypatch.setenv("OPERATOR_SERVER_API_KEY", key)
    operator = OperatorClient(base(client), roles=["main"])
    try:
        await operator.join()
        assert operator.sid is not None
        assert directory_of(client).sessions[operator.sid].minted_by == "key:lib"
    finally:
        await operator.close()
