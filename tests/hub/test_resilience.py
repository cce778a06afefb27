"""The hub keeps serving when downstream servers fail, hang, crash or change."""

import sys
import time
from pathlib import Path

import anyio
import mcp.types as types
import pytest
from mcp import Client

from mlhub_mcp.config import ServerSettings, Settings
from tests.hub.conftest import echo_stdio, hub_client, text_of, wait_for_mark

pytestmark = pytest.mark.anyio


async def _status(client: Client) -> dict[str, dict]:
    result = await client.call_tool("hub_status", {})
    return {s["name"]: s for s in result.structured_content["servers"]}


async def _wait_for_state(client: Client, name: str, state: str) -> dict:
    with anyio.fail_after(20):
        while True:
            server = (await _status(client))[name]
            if server["state"] == state:
                return server
            await anyio.sleep(0.05)


async def test_crash_during_call_errors_then_restarts(hub_settings: Settings) -> None:
    async with hub_client(hub_settings) as client:
        first_pid = (await client.call_tool("a_pid", {})).structured_content["result"]

        started = time.monotonic()
        crashed = await client.call_tool("a_crash", {})
        elapsed = time.monotonic() - started

        after = await client.call_tool("a_echo", {"text": "back"})
        status = (await _status(client))["a"]
        second_pid = (await client.call_tool("a_pid", {})).structured_content["result"]

    assert crashed.is_error
    assert "closed the connection" in text_of(crashed)
    assert elapsed < 3
    assert not after.is_error, text_of(after)
    assert text_of(after) == "back"
    assert status["state"] == "ready"
    assert status["restarts"] == 1
    assert second_pid != first_pid


async def test_misconfigured_server_does_not_delay_the_others(
    hub_settings: Settings, echo_dir: Path
) -> None:
    hub_settings.servers["missing"] = ServerSettings(
        name="missing", command="/nonexistent/mlhub-server"
    )
    hub_settings.servers["unreachable"] = ServerSettings(
        name="unreachable", transport="http", url="http://127.0.0.1:9/mcp"
    )
    hub_settings.hub.startup_wait_seconds = 30

    started = time.monotonic()
    async with hub_client(hub_settings) as client:
        connected = time.monotonic()
        tools = {t.name for t in (await client.list_tools()).tools}
        status = await _status(client)

    ready_after = connected - started
    assert "a_echo" in tools
    assert status["a"]["state"] == "ready"
    assert status["missing"]["state"] == "failed"
    assert "start failed" in status["missing"]["error"]
    assert status["unreachable"]["state"] == "failed"
    # The hub waits for the echo server to start (about a second here), not
    # for the broken ones: they fail at once.
    assert ready_after < 10


async def test_hanging_server_bounded_by_startup_wait(
    hub_settings: Settings,
) -> None:
    """A server that never responds costs startup_wait_seconds, then joins the failed ones."""
    hub_settings.servers["hang"] = ServerSettings(
        name="hang",
        command=sys.executable,
        args=["-c", "import time; time.sleep(60)"],
        start_timeout_seconds=4,
    )
    hub_settings.hub.startup_wait_seconds = 2

    started = time.monotonic()
    async with hub_client(hub_settings) as client:
        waited = time.monotonic() - started
        hanging = (await _status(client))["hang"]
        await _wait_for_state(client, "a", "ready")
        tools = {t.name for t in (await client.list_tools()).tools}
        call = await client.call_tool("a_echo", {"text": "still served"})
        failed = await _wait_for_state(client, "hang", "failed")

    assert waited < 2 + 2
    assert hanging["state"] == "starting"
    assert "a_echo" in tools
    assert text_of(call) == "still served"
    assert "timed out" in failed["error"]


async def test_unavailable_server_gives_clear_error(hub_settings: Settings) -> None:
    hub_settings.servers["missing"] = ServerSettings(
        name="missing", prefix="m_", command="/nonexistent/mlhub-server"
    )
    async with hub_client(hub_settings) as client:
        result = await client.call_tool("m_echo", {"text": "x"})

    # The failed server's tools are not listed, so the name is unknown.
    assert result.is_error
    assert "Unknown tool: m_echo" in text_of(result)


async def test_call_timeout_cancels_downstream(hub_settings: Settings, echo_dir: Path) -> None:
    hub_settings.servers["a"] = echo_stdio("a", echo_dir, timeout_seconds=1)

    async with hub_client(hub_settings) as client:
        started = time.monotonic()
        result = await client.call_tool("a_sleep", {"seconds": 30})
        elapsed = time.monotonic() - started
        await wait_for_mark(echo_dir, "cancelled")
        audit = await client.call_tool("get_audit_log", {"operation": "a_sleep"})

    assert result.is_error
    assert "did not answer" in text_of(result)
    assert elapsed < 5
    entry = audit.structured_content["entries"][0]
    assert entry["outcome"] == "timeout"
    assert entry["error_code"] == types.REQUEST_TIMEOUT


async def test_client_cancel_reaches_downstream(hub_settings: Settings, echo_dir: Path) -> None:
    async with hub_client(hub_settings) as client:
        with anyio.move_on_after(1):
            await client.call_tool("a_sleep", {"seconds": 30})

        await wait_for_mark(echo_dir, "cancelled")
        audit = await client.call_tool("get_audit_log", {"operation": "a_sleep"})
        after = await client.call_tool("a_echo", {"text": "ok"})

    assert audit.structured_content["entries"][0]["outcome"] == "cancelled"
    assert text_of(after) == "ok"


async def test_list_changed_refreshes_and_reaches_clients(hub_settings: Settings) -> None:
    notified = anyio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            notified.set()

    from mlhub_mcp.hub.server import create_hub_server

    server = create_hub_server(hub_settings)
    async with Client(server, mode="legacy", message_handler=on_message) as client:
        before = {t.name for t in (await client.list_tools()).tools}
        await client.call_tool("a_add_tool", {"name": "fresh"})
        with anyio.fail_after(10):
            await notified.wait()
        after = {t.name for t in (await client.list_tools()).tools}
        called = await client.call_tool("a_fresh", {})

    assert "a_fresh" not in before
    assert "a_fresh" in after
    assert text_of(called) == "added"


async def test_modern_client_gets_list_changed_events(hub_settings: Settings) -> None:
    from mlhub_mcp.hub.server import create_hub_server

    server = create_hub_server(hub_settings)
    async with Client(server) as client:
        events = []
        async with client.listen(tools_list_changed=True) as subscription:
            await client.call_tool("a_add_tool", {"name": "later"})
            with anyio.fail_after(10):
                async for event in subscription:
                    events.append(event)
                    break

    assert events
