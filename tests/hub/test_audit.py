"""The audit trail of routed calls, and secrets kept out of logs, errors and the trail."""

import hashlib
import json
import logging
from typing import Any

import mcp.types as types
import pytest
from mcp import Client, MCPError

from mlhub_mcp.config import ServerSettings, Settings
from mlhub_mcp.errors import InvalidInput
from mlhub_mcp.hub._local_tools import LocalTool
from mlhub_mcp.hub.server import create_hub_server
from mlhub_mcp.scrub import scrub_text
from tests.hub.conftest import hub_client, text_of

pytestmark = pytest.mark.anyio

AUDIT_FIELDS = {
    "id",
    "timestamp",
    "protocol_version",
    "message_id",
    "sender_name",
    "sender_version",
    "via",
    "client_address",
    "server",
    "message_type",
    "operation",
    "payload_bytes",
    "payload_sha256",
    "file_name",
    "duration_ms",
    "outcome",
    "error_code",
    "error",
}


async def test_audit_records_each_routed_call(hub_settings: Settings) -> None:
    arguments = {"text": "héllo"}
    async with hub_client(hub_settings) as client:
        await client.call_tool("a_echo", arguments)
        await client.call_tool("a_fail", {"message": "broken"})
        with pytest.raises(MCPError):
            await client.read_resource("nowhere://x")
        await client.read_resource("hub://status")
        page = await client.call_tool("get_audit_log", {"limit": 10})
        resource = await client.read_resource("hub://audit")

    entries = page.structured_content["entries"]
    by_operation = {e["operation"]: e for e in entries}
    echo = by_operation["a_echo"]
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert set(echo) == AUDIT_FIELDS
    assert echo["server"] == "a"
    assert echo["message_type"] == "tools/call"
    assert echo["outcome"] == "ok"
    assert echo["protocol_version"] == "2025-11-25"
    assert echo["message_id"] is not None
    assert echo["sender_name"] == "mcp"
    assert echo["payload_bytes"] == len(canonical.encode())
    assert echo["payload_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert echo["duration_ms"] > 0
    # In process there is no HTTP client address, and only uploads have a file name.
    assert echo["client_address"] is None
    assert echo["file_name"] is None
    assert by_operation["a_fail"]["outcome"] == "is_error"
    assert "broken" in by_operation["a_fail"]["error"]
    assert by_operation["nowhere://x"]["outcome"] == "protocol_error"
    assert by_operation["nowhere://x"]["error_code"] == -32602
    assert by_operation["hub://status"]["message_type"] == "resources/read"
    assert by_operation["hub://status"]["server"] == "hub"
    assert "a_echo" in resource.contents[0].text


async def test_audit_log_filters_and_pages(hub_settings: Settings) -> None:
    async with hub_client(hub_settings) as client:
        for index in range(5):
            await client.call_tool("a_echo", {"text": str(index)})
        await client.call_tool("a_fail", {"message": "x"})

        first = await client.call_tool("get_audit_log", {"operation": "a_echo", "limit": 3})
        cursor = first.structured_content["next_cursor"]
        second = await client.call_tool(
            "get_audit_log", {"operation": "a_echo", "limit": 3, "cursor": cursor}
        )
        errors = await client.call_tool("get_audit_log", {"server": "a", "outcome": "is_error"})
        invalid = await client.call_tool("get_audit_log", {"outcome": "maybe"})

    first_ids = [e["id"] for e in first.structured_content["entries"]]
    second_ids = [e["id"] for e in second.structured_content["entries"]]
    assert len(first_ids) == 3
    assert len(second_ids) == 2
    assert not set(first_ids) & set(second_ids)
    assert first_ids == sorted(first_ids, reverse=True)
    assert second.structured_content["next_cursor"] is None
    assert [e["operation"] for e in errors.structured_content["entries"]] == ["a_fail"]
    assert invalid.is_error


async def test_secrets_stay_out_of_logs_status_and_audit(
    hub_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    password = "pa55-w0rd-91c"
    token = "tok-secret-4e8d2"
    api_key = "key-value-77aa1"
    hub_settings.servers["remote"] = ServerSettings(
        name="remote",
        transport="http",
        url=f"http://admin:{password}@127.0.0.1:9/mcp?token={token}",
        bearer_token=token,
        headers={"X-Api-Key": api_key},
    )
    secrets = (password, token, api_key)

    caplog.set_level(logging.DEBUG)
    async with hub_client(hub_settings) as client:
        status = await client.call_tool("hub_status", {})
        call = await client.call_tool("a_echo", {"text": f"Bearer {token}"})
        logging.getLogger("test").info("connecting to %s", hub_settings.servers["remote"].url)
        audit = await client.call_tool("get_audit_log", {})

    status_text = json.dumps(status.structured_content)
    audit_text = json.dumps(audit.structured_content)
    remote = {s["name"]: s for s in status.structured_content["servers"]}["remote"]
    assert remote["state"] == "failed"
    assert not call.is_error
    for secret in secrets:
        assert secret not in caplog.text
        assert secret not in status_text
        assert secret not in audit_text
    assert "admin:***@" in caplog.text


def test_scrub_masks_common_secret_forms() -> None:
    cases = {
        "http://u:hunter2@h/x": "http://u:***@h/x",
        "Authorization: Bearer abc.def": "Authorization: Bearer ***",
        "GET /x?api_key=zz9&page=2": "GET /x?api_key=***&page=2",
        '{"password": "pw-1"}': '{"password": "***"}',
        "nothing to hide": "nothing to hide",
    }

    for raw, expected in cases.items():
        assert scrub_text(raw) == expected


async def test_audit_log_bad_cursor(
    hub_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with hub_client(hub_settings) as client:
        garbage = await client.call_tool("get_audit_log", {"cursor": "garbage"})
        wrong_type = await client.call_tool("get_audit_log", {"cursor": 5})

    assert garbage.is_error
    assert "cursor" in text_of(garbage)
    assert "'garbage'" in text_of(garbage)
    assert wrong_type.is_error
    assert "cursor" in text_of(wrong_type)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_hub_tool_errors_are_results(hub_settings: Settings) -> None:
    async def invalid(hub: Any, arguments: dict[str, Any], progress: Any) -> Any:
        raise InvalidInput("invalid value for 'size': -1")

    async def crash(hub: Any, arguments: dict[str, Any], progress: Any) -> Any:
        raise RuntimeError("boom")

    schema = {"type": "object"}
    tools = [
        LocalTool(types.Tool(name="invalid", input_schema=schema), invalid),
        LocalTool(types.Tool(name="crash", input_schema=schema), crash),
    ]
    server = create_hub_server(hub_settings, local_tools=tools)
    async with Client(server, mode="legacy") as client:
        invalid_result = await client.call_tool("invalid", {})
        crash_result = await client.call_tool("crash", {})

    assert invalid_result.is_error
    assert text_of(invalid_result) == "invalid value for 'size': -1"
    assert crash_result.is_error
    assert "RuntimeError: boom" in text_of(crash_result)


def test_scrub_keeps_words_and_punctuation() -> None:
    cases = {
        "rejected a request for /mcp: wrong bearer token": (
            "rejected a request for /mcp: wrong bearer token"
        ),
        "missing bearer token.": "missing bearer token.",
        "Authorization: Basic credentials": "Authorization: Basic credentials",
        "Bearer token abc123": "Bearer token ***",
        "Bearer token-abc123": "Bearer ***",
        "(see https://h/x?token=abc123)": "(see https://h/x?token=***)",
        "[docs](https://h/x?api_key=k1).": "[docs](https://h/x?api_key=***).",
        "password=a)b": "password=***",
        "Authorization: Bearer abc.def.": "Authorization: Bearer ***.",
        "open http://u:pw@h/x).": "open http://u:***@h/x).",
    }

    for raw, expected in cases.items():
        assert scrub_text(raw) == expected, raw
