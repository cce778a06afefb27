"""The hub over streamable HTTP and SSE: security, concurrency, and downstream transports."""

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import MCPError

from mlhub_mcp.config import ServerSettings, Settings
from mlhub_mcp.errors import ConfigurationError
from mlhub_mcp.hub._http import build_hub_app
from mlhub_mcp.hub.server import create_hub_server
from tests.hub.conftest import (
    TOKEN,
    connect,
    echo_process,
    echo_stdio,
    http_hub,
    hub_client,
    marks,
    text_of,
)

pytestmark = pytest.mark.anyio


async def test_http_rejects_bad_token_host_and_origin(hub_settings: Settings) -> None:
    async with http_hub(hub_settings) as (url, _), httpx2.AsyncClient() as http:
        body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        no_token = await http.post(f"{url}/mcp", json=body)
        wrong_token = await http.post(
            f"{url}/mcp", json=body, headers={"Authorization": "Bearer nope"}
        )
        bad_host = await http.get(f"{url}/health", headers={"Host": "evil.example:80"})
        bad_origin = await http.post(
            f"{url}/mcp",
            json=body,
            headers={"Authorization": f"Bearer {TOKEN}", "Origin": "http://evil.example"},
        )
        upload = await http.put(f"{url}/uploads/x.csv", content=b"a\n1\n")

    assert no_token.status_code == 401
    assert no_token.headers["www-authenticate"].startswith("Bearer")
    assert wrong_token.status_code == 401
    assert bad_host.status_code == 421
    assert bad_origin.status_code == 403
    assert upload.status_code == 401


async def test_health_reveals_states_only(hub_settings: Settings) -> None:
    async with http_hub(hub_settings) as (url, _), httpx2.AsyncClient() as http:
        response = await http.get(f"{url}/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "servers": [{"name": "a", "state": "ready"}]}
    assert TOKEN not in response.text


async def test_body_over_the_limit_is_rejected(hub_settings: Settings) -> None:
    hub_settings.http.max_request_body_bytes = 1000
    async with http_hub(hub_settings) as (url, _), httpx2.AsyncClient() as http:
        response = await http.post(
            f"{url}/mcp",
            content=b"x" * 5000,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )

    assert response.status_code == 413
    assert response.json()["id"] is None


def _oversized_call(request_id: int | str, size: int = 3000) -> bytes:
    call = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": "a_echo", "arguments": {"text": "x" * size}},
    }
    return json.dumps(call).encode()


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 500):
        yield body[start : start + 500]


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
async def test_oversized_request_jsonrpc_error(hub_settings: Settings, streamed: bool) -> None:
    hub_settings.http.max_request_body_bytes = 2000
    body = _oversized_call(7)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with http_hub(hub_settings) as (url, _), httpx2.AsyncClient() as http:
        content = _chunks(body) if streamed else body
        response = await http.post(f"{url}/mcp", content=content, headers=headers)

    reply = response.json()
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert reply["jsonrpc"] == "2.0"
    assert reply["id"] == 7
    assert reply["error"]["code"] == -32600
    assert "2000 bytes" in reply["error"]["message"]
    assert "max_request_body_bytes" in reply["error"]["message"]


async def test_body_limit_error_over_http(hub_settings: Settings) -> None:
    hub_settings.http.max_request_body_bytes = 2000
    async with http_hub(hub_settings) as (url, _), connect(url) as client:
        with anyio.fail_after(10), pytest.raises(MCPError) as error:
            await client.call_tool("a_echo", {"text": "x" * 3000})
        small = await client.call_tool("a_echo", {"text": "still works"})

    assert error.value.code == -32600
    assert "max_request_body_bytes" in error.value.message
    assert text_of(small) == "still works"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_body_limit_error_over_sse(hub_settings: Settings, mode: str) -> None:
    hub_settings.http.max_request_body_bytes = 2000
    async with http_hub(hub_settings, transport="sse") as (url, _):
        async with connect(url, "sse", mode=mode) as client:
            with anyio.fail_after(10), pytest.raises(MCPError) as error:
                await client.call_tool("a_echo", {"text": "x" * 3000}, read_timeout_seconds=30)

        async with httpx2.AsyncClient() as http:
            post = await http.post(
                f"{url}/messages/?session_id={'0' * 32}",
                content=_oversized_call("call-1"),
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            )

    assert error.value.code == -32600
    assert "2000 bytes" in error.value.message
    assert post.status_code == 413
    assert post.json()["id"] == "call-1"
    assert "max_request_body_bytes" in post.json()["error"]["message"]


async def test_rejections_logged_without_token(
    hub_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    hub_settings.http.max_request_body_bytes = 2000
    caplog.set_level(logging.WARNING)
    async with http_hub(hub_settings) as (url, _), httpx2.AsyncClient() as http:
        await http.post(f"{url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        await http.post(
            f"{url}/mcp",
            content=_oversized_call(2),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    missing = [m for m in warnings if "missing bearer token" in m]
    too_large = [m for m in warnings if "max_request_body_bytes" in m]
    assert len(missing) == 1
    assert "/mcp from 127.0.0.1:" in missing[0]
    assert len(too_large) == 1
    assert "/mcp from 127.0.0.1:" in too_large[0]
    assert TOKEN not in caplog.text


async def test_health_degraded_on_conflict(
    hub_settings: Settings, echo_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clash = echo_stdio("b", echo_dir)
    clash.prefix = "a_"
    hub_settings.servers["b"] = clash
    caplog.set_level(logging.INFO)

    async with http_hub(hub_settings) as (url, _), httpx2.AsyncClient() as http:
        response = await http.get(f"{url}/health")
        async with connect(url) as client:
            status = await client.call_tool("hub_status", {})
            await client.call_tool("a_echo", {"text": "x"})

    conflict_logs = [r for r in caplog.records if "left out of the hub" in r.getMessage()]
    assert response.json() == {
        "status": "degraded",
        "servers": [{"name": "a", "state": "ready"}, {"name": "b", "state": "conflict"}],
    }
    assert status.structured_content["ready"] is False
    assert len(conflict_logs) == 1


def test_non_loopback_bind_requires_a_token(
    hub_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLHUB_HUB_TOKEN", raising=False)
    server = create_hub_server(hub_settings)

    with pytest.raises(ConfigurationError) as error:
        build_hub_app(server, hub_settings, "http", "0.0.0.0", None)

    assert "--token" in str(error.value)
    assert "MLHUB_HUB_TOKEN" in str(error.value)
    build_hub_app(server, hub_settings, "http", "0.0.0.0", "a-token-value")


async def test_fifty_concurrent_calls_over_http(hub_settings: Settings) -> None:
    results: dict[int, str] = {}

    async with http_hub(hub_settings) as (url, _), connect(url) as client:

        async def call(index: int) -> None:
            result = await client.call_tool("a_echo", {"text": f"call {index}"})
            assert not result.is_error, text_of(result)
            results[index] = text_of(result)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                for index in range(50):
                    group.start_soon(call, index)

    assert results == {i: f"call {i}" for i in range(50)}


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_sse_reuses_downstreams_across_connections(
    hub_settings: Settings, echo_dir: Path, mode: str
) -> None:
    pids = set()
    async with http_hub(hub_settings, transport="sse") as (url, server):
        hubs = set()
        for _ in range(3):
            async with connect(url, "sse", mode=mode) as client:
                result = await client.call_tool("a_pid", {})
                pids.add(result.structured_content["result"])
                hubs.add(id(server.hub))

    assert len(pids) == 1
    assert len(hubs) == 1
    assert len(marks(echo_dir, "start")) == 1


@pytest.mark.parametrize("transport", ["http", "sse"])
async def test_downstream_over_network_transports(
    settings: Settings, echo_dir: Path, transport: str
) -> None:
    path = "/mcp" if transport == "http" else "/sse"
    token = "downstream-token-5b1e"
    with echo_process(transport, echo_dir, MLHUB_SERVER_TOKEN=token) as url:
        settings.servers = {
            "remote": ServerSettings(
                name="remote", transport=transport, url=f"{url}{path}", bearer_token=token
            ),
            "anonymous": ServerSettings(
                name="anonymous", prefix="anon_", transport=transport, url=f"{url}{path}"
            ),
        }
        async with hub_client(settings) as client:
            result = await client.call_tool("echo", {"text": transport})
            status = await client.call_tool("hub_status", {})

    servers = {s["name"]: s for s in status.structured_content["servers"]}
    assert text_of(result) == transport
    assert servers["remote"]["state"] == "ready"
    # The same server without the token is rejected with 401.
    assert servers["anonymous"]["state"] == "failed"
    assert token not in str(status.structured_content)


@pytest.mark.parametrize("transport", ["http", "sse"])
async def test_audit_records_client_address(hub_settings: Settings, transport: str) -> None:
    async with http_hub(hub_settings, transport=transport) as (url, _):
        async with connect(url, transport) as client:
            await client.call_tool("a_echo", {"text": "x"})
            page = await client.call_tool("get_audit_log", {"operation": "a_echo"})

    [entry] = page.structured_content["entries"]
    assert entry["client_address"].startswith("127.0.0.1:")
