"""The access log: one line per HTTP request, by route pattern, with no secrets."""

from __future__ import annotations

from structlog.testing import capture_logs

from tests.conftest import Server


async def test_each_request_logs_one_line_with_route_status_duration_and_remote(
    server: Server,
) -> None:
    client = await server(access_log=True, api_token="admin-secret")
    with capture_logs() as logs:
        resp = await client.get(
            "/v1/tasks/t-nope",
            params={"wait": "0", "token": "leaked-in-query"},
            headers={"Authorization": "Bearer admin-secret"},
        )
        assert resp.status == 404
        assert (await client.get("/v1/healthz")).status == 200
    lines = [e for e in logs if e["event"] == "http request"]
    assert len(lines) == 2
    first = lines[0]
    assert first["log_level"] == "info"
    assert first["route"] == "/v1/tasks/{task_id}" and first["path"] == "/v1/tasks/t-nope"
    assert first["status"] == 404 and first["method"] == "GET"
    assert first["remote"] == "127.0.0.1" and first["duration_s"] >= 0
    assert lines[1]["route"] == "/v1/healthz" and lines[1]["status"] == 200
    text = repr(lines)
    assert "leaked-in-query" not in text and "admin-secret" not in text


async def test_a_request_refused_at_the_door_is_logged_and_counted(server: Server) -> None:
    """A 403 host_not_allowed (admission, before any handler) is a request like
    any other to whoever runs the daemon: a burst of them is worth seeing."""
    client = await server(access_log=True)
    with capture_logs() as logs:
        resp = await client.get("/v1/healthz", headers={"Host": "evil.example"})
        assert resp.status == 403
    (line,) = [e for e in logs if e["event"] == "http request"]
    assert (line["route"], line["status"]) == ("/v1/healthz", 403)
    metrics = await (await client.get("/metrics")).text()
    assert 'operator_server_http_requests_total{route="/v1/healthz",status="403"} 1.0' in metrics


async def test_the_access_log_is_off_by_default(server: Server) -> None:
    client = await server()
    with capture_logs() as logs:
        assert (await client.get("/v1/healthz")).status == 200
    assert not [e for e in logs if e["event"] == "http request"]
