"""The hub server: serves the union of the downstream servers' tools,
resources and prompts, forwarding progress, errors and cancellation."""

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp.types as types
from mcp import MCPError
from mcp.server import Server, ServerRequestContext
from mcp.types import INVALID_PARAMS

from mlhub_mcp.config import Settings, load_settings
from mlhub_mcp.hub._downstream import Downstream, ServerState
from mlhub_mcp.hub._local_tools import LocalPrompt, LocalTool, ProgressFn
from mlhub_mcp.hub._routing import RoutingTable

logger = logging.getLogger(__name__)

STATUS_TOOL = "hub_status"
STATUS_URI = "hub://status"


@dataclass
class Hub:
    """State of a running hub."""

    settings: Settings
    downstreams: list[Downstream] = field(default_factory=list)
    routes: RoutingTable = field(default_factory=RoutingTable)
    local_tools: dict[str, LocalTool] = field(default_factory=dict)
    local_prompts: dict[str, LocalPrompt] = field(default_factory=dict)

    def rebuild_routes(self) -> None:
        reserved = set(self.local_tools) | {f"prompt:{name}" for name in self.local_prompts}
        self.routes = RoutingTable.build(self.downstreams, reserved=reserved)

    async def call(
        self, name: str, arguments: dict[str, Any], progress: ProgressFn | None = None
    ) -> types.CallToolResult:
        """Call a tool by its public name, as a client of the hub would.

        Raises:
            MCPError: The downstream server answered with a protocol error.
        """
        local = self.local_tools.get(name)
        if local is not None:
            return await local.handler(self, arguments, progress or _ignore_progress)

        route = self.routes.tools.get(name)
        if route is None:
            text = f"Unknown tool: {name}"
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=text)], is_error=True
            )

        server, tool = route
        if server.client is None or server.state is not ServerState.READY:
            return _unavailable(server)

        # A downstream MCPError propagates unchanged, so the caller sees the same code.
        return await server.client.call_tool(
            tool.name,
            arguments,
            read_timeout_seconds=server.server.timeout_seconds,
            progress_callback=progress,
        )

    def status(self) -> dict[str, Any]:
        servers = [d.status() for d in self.downstreams]
        ready = all(s["state"] == ServerState.READY for s in servers)
        return {"ready": ready, "servers": servers}


async def _ignore_progress(progress: float, total: float | None, message: str | None) -> None:
    return None


async def _status(
    hub: Hub, arguments: dict[str, Any], progress: ProgressFn
) -> types.CallToolResult:
    status = hub.status()
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(status))],
        structured_content=status,
    )


def _status_tool() -> types.Tool:
    return types.Tool(
        name=STATUS_TOOL,
        title="Hub status",
        description=(
            "Report each downstream server of the hub (model, data, execution): whether it "
            "is ready, how many tools it serves, and the error if it failed to start."
        ),
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
        output_schema={
            "type": "object",
            "properties": {
                "ready": {"type": "boolean"},
                "servers": {"type": "array", "items": {"type": "object"}},
            },
            "required": ["ready", "servers"],
        },
        annotations=types.ToolAnnotations(read_only_hint=True, idempotent_hint=True),
    )


def _hub(ctx: ServerRequestContext[Hub]) -> Hub:
    return ctx.lifespan_context


async def _list_tools(
    ctx: ServerRequestContext[Hub], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    hub = _hub(ctx)
    tools = [local.tool for local in hub.local_tools.values()]
    for public, (_, tool) in hub.routes.tools.items():
        tools.append(tool.model_copy(update={"name": public}))
    return types.ListToolsResult(tools=tools)


def _unavailable(server: Downstream) -> types.CallToolResult:
    text = f"server {server.name!r} is unavailable ({server.state}): {server.error or 'no session'}"
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


async def _call_tool(
    ctx: ServerRequestContext[Hub], params: types.CallToolRequestParams
) -> types.CallToolResult:
    async def forward_progress(progress: float, total: float | None, message: str | None) -> None:
        await ctx.session.report_progress(progress, total, message)

    return await _hub(ctx).call(params.name, params.arguments or {}, forward_progress)


async def _list_resources(
    ctx: ServerRequestContext[Hub], params: types.PaginatedRequestParams | None
) -> types.ListResourcesResult:
    hub = _hub(ctx)
    resources = [
        types.Resource(
            uri=STATUS_URI,
            name="hub_status",
            description="State of each downstream server, as JSON",
            mime_type="application/json",
        )
    ]
    for server in hub.downstreams:
        if server.state is ServerState.READY:
            resources.extend(server.resources)
    return types.ListResourcesResult(resources=resources)


async def _list_resource_templates(
    ctx: ServerRequestContext[Hub], params: types.PaginatedRequestParams | None
) -> types.ListResourceTemplatesResult:
    templates = [t for _, _, t in _hub(ctx).routes.templates]
    return types.ListResourceTemplatesResult(resource_templates=templates)


async def _read_resource(
    ctx: ServerRequestContext[Hub], params: types.ReadResourceRequestParams
) -> types.ReadResourceResult:
    hub = _hub(ctx)
    uri = str(params.uri)
    if uri == STATUS_URI:
        contents = types.TextResourceContents(
            uri=uri, text=json.dumps(hub.status(), indent=2), mime_type="application/json"
        )
        return types.ReadResourceResult(contents=[contents])

    server = hub.routes.server_for_uri(uri)
    if server is None:
        raise MCPError(INVALID_PARAMS, f"Unknown resource: {uri}", {"uri": uri})
    if server.client is None or server.state is not ServerState.READY:
        raise MCPError(
            -32603, f"server {server.name!r} is unavailable: {server.error}", {"uri": uri}
        )

    return await server.client.read_resource(uri)


async def _list_prompts(
    ctx: ServerRequestContext[Hub], params: types.PaginatedRequestParams | None
) -> types.ListPromptsResult:
    hub = _hub(ctx)
    prompts = [local.prompt for local in hub.local_prompts.values()]
    prompts += [
        prompt.model_copy(update={"name": public})
        for public, (_, prompt) in hub.routes.prompts.items()
    ]
    return types.ListPromptsResult(prompts=prompts)


async def _get_prompt(
    ctx: ServerRequestContext[Hub], params: types.GetPromptRequestParams
) -> types.GetPromptResult:
    hub = _hub(ctx)
    local = hub.local_prompts.get(params.name)
    if local is not None:
        return await local.handler(hub, dict(params.arguments or {}))

    route = hub.routes.prompts.get(params.name)
    if route is None:
        known = sorted([*hub.local_prompts, *hub.routes.prompts])
        raise MCPError(
            INVALID_PARAMS,
            f"unknown prompt {params.name!r}; known prompts: {known}",
            {"name": params.name},
        )

    server, prompt = route
    if server.client is None or server.state is not ServerState.READY:
        raise MCPError(-32603, f"server {server.name!r} is unavailable: {server.error}")
    return await server.client.get_prompt(prompt.name, params.arguments or {})


def create_hub_server(
    settings: Settings | None = None,
    local_tools: list[LocalTool] | None = None,
    local_prompts: list[LocalPrompt] | None = None,
) -> Server[Hub]:
    """Build the hub; the downstream servers start when it starts.

    ``local_tools`` and ``local_prompts`` are served by the hub itself, next to
    the downstream servers' tools and prompts.
    """
    local_tools = local_tools or []
    local_prompts = local_prompts or []
    settings = settings or load_settings()
    running: list[Hub] = []

    @asynccontextmanager
    async def lifespan(server: Server[Hub]) -> AsyncIterator[Hub]:
        hub = Hub(settings=settings)
        hub.local_tools[STATUS_TOOL] = LocalTool(_status_tool(), _status)
        for extra in local_tools:
            hub.local_tools[extra.tool.name] = extra
        for extra_prompt in local_prompts:
            hub.local_prompts[extra_prompt.prompt.name] = extra_prompt
        for config in settings.servers.values():
            if config.enabled:
                hub.downstreams.append(Downstream(config, settings))

        async with anyio.create_task_group() as group:
            for downstream in hub.downstreams:
                settled = anyio.Event()
                group.start_soon(downstream.run, settled)
                await settled.wait()

            hub.rebuild_routes()
            running.append(hub)
            try:
                yield hub
            finally:
                running.remove(hub)
                group.cancel_scope.cancel()

    def input_schema(name: str) -> dict[str, Any] | None:
        # The SDK asks for a tool's input schema on calls over HTTP; serving it
        # from the cached listing spares a tools/list round per call.
        if not running:
            return None
        local = running[-1].local_tools.get(name)
        if local is not None:
            return local.tool.input_schema
        route = running[-1].routes.tools.get(name)
        return route[1].input_schema if route else None

    server: Server[Hub] = Server(
        "mlhub-hub",
        version="0.1.0",
        instructions=(
            "mlhub-mcp: register models and datasets, deploy models and run them on data, "
            "then read metrics and predictions."
        ),
        lifespan=lifespan,
        get_tool_input_schema=input_schema,
        on_list_tools=_list_tools,
        on_call_tool=_call_tool,
        on_list_resources=_list_resources,
        on_list_resource_templates=_list_resource_templates,
        on_read_resource=_read_resource,
        on_list_prompts=_list_prompts,
        on_get_prompt=_get_prompt,
    )
    return server


async def run_hub_stdio(settings: Settings | None = None) -> None:
    """Serve the hub over stdio until the client disconnects."""
    from mcp.server.stdio import stdio_server

    server = create_hub_server(settings)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def run_hub(
    settings: Settings,
    transport: str = "stdio",
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
) -> None:
    """Run the hub over stdio, streamable HTTP or SSE."""
    if transport == "stdio":
        anyio.run(run_hub_stdio, settings)
        return

    from mlhub_mcp.hub._http import serve_http

    serve_http(create_hub_server(settings), settings, transport, host, port, token)
