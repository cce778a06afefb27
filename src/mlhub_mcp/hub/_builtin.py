"""Tools and resources every hub serves: its status and its audit trail."""

import json
from typing import Any

import mcp.types as types
from mcp import MCPError

from mlhub_mcp.errors import BackendUnavailable, InvalidInput
from mlhub_mcp.hub._hub import Hub, LocalResource, error_result
from mlhub_mcp.hub._local_tools import LocalTool, ProgressFn

STATUS_TOOL = "hub_status"
STATUS_URI = "hub://status"
AUDIT_TOOL = "get_audit_log"
AUDIT_URI = "hub://audit"
OUTCOMES = ("ok", "is_error", "protocol_error", "timeout", "cancelled", "rejected")
MAX_AUDIT_PAGE = 500
_AUDIT_RESOURCE_ENTRIES = 50

READ_ONLY = types.ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)


def _json_result(payload: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(payload))],
        structured_content=payload,
    )


async def _status(
    hub: Hub, arguments: dict[str, Any], progress: ProgressFn
) -> types.CallToolResult:
    return _json_result(hub.status())


def _status_tool() -> types.Tool:
    return types.Tool(
        name=STATUS_TOOL,
        title="Hub status",
        description=(
            "Report each downstream server of the hub (model, data, execution): whether it "
            "is ready, how many tools it serves, how often it was restarted, and the error "
            "if it failed; also whether the audit trail is being written."
        ),
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
        output_schema={
            "type": "object",
            "properties": {
                "ready": {"type": "boolean"},
                "servers": {"type": "array", "items": {"type": "object"}},
                "audit": {"type": "object"},
            },
            "required": ["ready", "servers", "audit"],
        },
        annotations=READ_ONLY,
    )


def _audit_tool() -> types.Tool:
    return types.Tool(
        name=AUDIT_TOOL,
        title="Audit log",
        description=(
            "List the calls the hub routed (tool calls, resource reads, prompt requests), "
            "newest first: when, from which client, to which server, the operation, the "
            "size and SHA-256 of the arguments, the duration in milliseconds and the "
            "outcome. Arguments themselves are never stored."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "server": {
                    "type": "string",
                    "description": "Only calls routed to this server, e.g. 'model', or "
                    "'hub' for the hub's own tools",
                },
                "operation": {
                    "type": "string",
                    "description": "Only calls of this tool name, resource URI or prompt name",
                },
                "outcome": {
                    "type": "string",
                    "enum": list(OUTCOMES),
                    "description": "Only calls that ended this way",
                },
                "limit": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_AUDIT_PAGE,
                    "default": 50,
                    "description": "Page size",
                },
                "cursor": {
                    "type": "string",
                    "description": "next_cursor of the previous page",
                },
            },
            "additionalProperties": False,
        },
        output_schema={
            "type": "object",
            "properties": {
                "entries": {"type": "array", "items": {"type": "object"}},
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "pass as 'cursor' to get the next page",
                },
            },
            "required": ["entries", "next_cursor"],
        },
        annotations=READ_ONLY,
    )


def _audit_filters(arguments: dict[str, Any]) -> tuple[dict[str, Any], int, str | None]:
    unknown = set(arguments) - {"server", "operation", "outcome", "limit", "cursor"}
    if unknown:
        raise ValueError(f"unknown arguments {sorted(unknown)}")

    filters: dict[str, Any] = {}
    for name in ("server", "operation", "outcome"):
        value = arguments.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        filters[name] = value

    if "outcome" in filters and filters["outcome"] not in OUTCOMES:
        raise ValueError(f"outcome must be one of {list(OUTCOMES)}, got {filters['outcome']!r}")

    limit = arguments.get("limit", 50)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_AUDIT_PAGE:
        raise ValueError(f"limit must be an integer from 1 to {MAX_AUDIT_PAGE}, got {limit!r}")

    cursor = arguments.get("cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise ValueError(f"cursor must be a string, got {cursor!r}")

    return filters, limit, cursor


async def _audit(hub: Hub, arguments: dict[str, Any], progress: ProgressFn) -> types.CallToolResult:
    try:
        filters, limit, cursor = _audit_filters(arguments)
    except ValueError as exc:
        return error_result(f"invalid arguments for {AUDIT_TOOL}: {exc}")

    try:
        entries, next_cursor = await hub.audit.find(filters, limit, cursor)
    except InvalidInput as exc:
        # The catalog checks the cursor's format: "invalid cursor '...'".
        return error_result(f"invalid arguments for {AUDIT_TOOL}: {exc}")
    except BackendUnavailable as exc:
        return error_result(str(exc))

    return _json_result({"entries": entries, "next_cursor": next_cursor})


async def _read_status(hub: Hub) -> types.ReadResourceResult:
    text = json.dumps(hub.status(), indent=2)
    contents = types.TextResourceContents(uri=STATUS_URI, text=text, mime_type="application/json")
    return types.ReadResourceResult(contents=[contents])


async def _read_audit(hub: Hub) -> types.ReadResourceResult:
    try:
        entries, _ = await hub.audit.find({}, _AUDIT_RESOURCE_ENTRIES, None)
    except BackendUnavailable as exc:
        raise MCPError(types.INTERNAL_ERROR, str(exc)) from exc

    text = json.dumps({"entries": entries}, indent=2)
    contents = types.TextResourceContents(uri=AUDIT_URI, text=text, mime_type="application/json")
    return types.ReadResourceResult(contents=[contents])


def builtin_tools() -> list[LocalTool]:
    """Return the hub_status and get_audit_log tools."""
    return [LocalTool(_status_tool(), _status), LocalTool(_audit_tool(), _audit)]


def builtin_resources() -> list[LocalResource]:
    """Return the hub://status and hub://audit resources."""
    status = types.Resource(
        uri=STATUS_URI,
        name="hub_status",
        description="State of each downstream server and of the audit trail, as JSON",
        mime_type="application/json",
    )
    audit = types.Resource(
        uri=AUDIT_URI,
        name="hub_audit",
        description=f"The {_AUDIT_RESOURCE_ENTRIES} latest calls routed by the hub, as JSON",
        mime_type="application/json",
    )
    return [LocalResource(status, _read_status), LocalResource(audit, _read_audit)]
