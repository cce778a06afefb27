"""The hub server: serves the union of the downstream servers' tools,
resources and prompts, forwarding progress, errors and cancellation."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp.types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.models import InitializationOptions

from mlhub_mcp.config import Settings, load_settings
from mlhub_mcp.hub._audit import caller_from_context, current_caller
from mlhub_mcp.hub._builtin import (
    AUDIT_TOOL,
    AUDIT_URI,
    STATUS_TOOL,
    STATUS_URI,
    builtin_resources,
    builtin_tools,
)
from mlhub_mcp.hub._downstream import ServerState
from mlhub_mcp.hub._hub import Hub, start_hub
from mlhub_mcp.hub._local_tools import LocalPrompt, LocalTool

__all__ = [
    "AUDIT_TOOL",
    "AUDIT_URI",
    "STATUS_TOOL",
    "STATUS_URI",
    "Hub",
    "HubServer",
    "create_hub_server",
    "run_hub",
    "run_hub_stdio",
]

logger = logging.getLogger(__name__)


class HubServer(Server[Hub]):
    """The hub's MCP server; the hub state starts once and is shared by every connection.

    `running` starts the hub. Over HTTP the app enters it once in its own
    lifespan, so the SDK's per-connection lifespan (run for every SSE client)
    reuses that hub instead of starting the downstream servers again. Over
    stdio the connection's lifespan starts it.
    """

    def __init__(
        self,
        settings: Settings,
        local_tools: list[LocalTool],
        local_prompts: list[LocalPrompt],
        **handlers: Any,
    ) -> None:
        super().__init__(
            "mlhub-hub",
            version="0.1.0",
            instructions=(
                "mlhub-mcp: register models and datasets, deploy models and run them on data, "
                "then read metrics and predictions."
            ),
            lifespan=_connection_lifespan,
            get_tool_input_schema=self._input_schema,
            **handlers,
        )
        self.settings = settings
        self.local_tools = local_tools
        self.local_prompts = local_prompts
        self.hub: Hub | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Hub]:
        """Start the hub, or reuse the one already running in this server."""
        if self.hub is not None:
            yield self.hub
            return

        tools = [*builtin_tools(), *self.local_tools]
        async with start_hub(self.settings, tools, self.local_prompts, builtin_resources()) as hub:
            self.hub = hub
            try:
                yield hub
            finally:
                self.hub = None

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        # The hub sends list_changed when a downstream server starts, stops or
        # changes its listings, so it advertises that on every transport.
        options = notification_options or NotificationOptions(
            prompts_changed=True, resources_changed=True, tools_changed=True
        )
        return super().create_initialization_options(options, experimental_capabilities, extensions)

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        # The SDK requests a tool's input schema on calls over HTTP. Serving it
        # from the cached listing spares a tools/list round per call.
        if self.hub is None:
            return None
        local = self.hub.local_tools.get(name)
        if local is not None:
            return local.tool.input_schema
        route = self.hub.routes.tools.get(name)
        return route[1].input_schema if route else None


@asynccontextmanager
async def _connection_lifespan(server: Server[Hub]) -> AsyncIterator[Hub]:
    assert isinstance(server, HubServer)
    async with server.running() as hub:
        yield hub


def _hub_for_call(ctx: ServerRequestContext[Hub]) -> Hub:
    """Return the hub and record the request's caller for the audit trail."""
    current_caller.set(caller_from_context(ctx))
    return ctx.lifespan_context


async def _on_initialized(ctx: ServerRequestContext[Hub], params: Any) -> None:
    ctx.lifespan_context.notifier.add(ctx.session)


async def _list_tools(
    ctx: ServerRequestContext[Hub], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    hub = ctx.lifespan_context
    tools = [local.tool for local in hub.local_tools.values()]
    for public, (_, tool) in hub.routes.tools.items():
        tools.append(tool.model_copy(update={"name": public}))
    return types.ListToolsResult(tools=tools)


async def _call_tool(
    ctx: ServerRequestContext[Hub], params: types.CallToolRequestParams
) -> types.CallToolResult:
    async def forward_progress(progress: float, total: float | None, message: str | None) -> None:
        await ctx.session.report_progress(progress, total, message)

    return await _hub_for_call(ctx).call(params.name, params.arguments or {}, forward_progress)


async def _list_resources(
    ctx: ServerRequestContext[Hub], params: types.PaginatedRequestParams | None
) -> types.ListResourcesResult:
    hub = ctx.lifespan_context
    resources = [local.resource for local in hub.local_resources.values()]
    for server in hub.downstreams:
        if server.state is ServerState.READY and server.name not in hub.routes.conflicts:
            resources.extend(server.resources)
    return types.ListResourcesResult(resources=resources)


async def _list_resource_templates(
    ctx: ServerRequestContext[Hub], params: types.PaginatedRequestParams | None
) -> types.ListResourceTemplatesResult:
    templates = [t for _, _, t in ctx.lifespan_context.routes.templates]
    return types.ListResourceTemplatesResult(resource_templates=templates)


async def _read_resource(
    ctx: ServerRequestContext[Hub], params: types.ReadResourceRequestParams
) -> types.ReadResourceResult:
    return await _hub_for_call(ctx).read_resource(str(params.uri))


async def _list_prompts(
    ctx: ServerRequestContext[Hub], params: types.PaginatedRequestParams | None
) -> types.ListPromptsResult:
    hub = ctx.lifespan_context
    prompts = [local.prompt for local in hub.local_prompts.values()]
    prompts += [
        prompt.model_copy(update={"name": public})
        for public, (_, prompt) in hub.routes.prompts.items()
    ]
    return types.ListPromptsResult(prompts=prompts)


async def _get_prompt(
    ctx: ServerRequestContext[Hub], params: types.GetPromptRequestParams
) -> types.GetPromptResult:
    return await _hub_for_call(ctx).get_prompt(params.name, dict(params.arguments or {}))


def create_hub_server(
    settings: Settings | None = None,
    local_tools: list[LocalTool] | None = None,
    local_prompts: list[LocalPrompt] | None = None,
) -> HubServer:
    """Build the hub; the downstream servers start when it starts.

    ``local_tools`` and ``local_prompts`` are served by the hub itself, next to
    the downstream servers' tools and prompts and the built-in hub_status and
    get_audit_log tools.
    """
    listen = _SubscriptionsListen()
    server = HubServer(
        settings or load_settings(),
        local_tools or [],
        local_prompts or [],
        on_list_tools=_list_tools,
        on_call_tool=_call_tool,
        on_list_resources=_list_resources,
        on_list_resource_templates=_list_resource_templates,
        on_read_resource=_read_resource,
        on_list_prompts=_list_prompts,
        on_get_prompt=_get_prompt,
        on_subscriptions_listen=listen,
    )
    server.add_notification_handler(
        "notifications/initialized", types.NotificationParams, _on_initialized
    )
    return server


class _SubscriptionsListen:
    """Serves subscriptions/listen with the running hub's subscription bus."""

    async def __call__(
        self, ctx: ServerRequestContext[Hub], params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        return await ctx.lifespan_context.notifier.listen_handler(ctx, params)


def create_hub_with_workflows(settings: Settings | None = None) -> HubServer:
    """Build the hub with the workflow tools and prompts of ``mlhub_mcp.hub.workflows``."""
    from mlhub_mcp.hub.workflows import workflow_prompts, workflow_tools

    return create_hub_server(
        settings, local_tools=workflow_tools(), local_prompts=workflow_prompts()
    )


async def run_hub_stdio(settings: Settings | None = None) -> None:
    """Serve the hub over stdio until the client disconnects."""
    from mcp.server.stdio import stdio_server

    server = create_hub_with_workflows(settings)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def run_hub(
    settings: Settings,
    transport: str = "stdio",
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
) -> None:
    """Run the hub over stdio, streamable HTTP or SSE.

    Raises:
        ConfigurationError: Serving HTTP on a non-loopback address without a token.
    """
    if transport == "stdio":
        anyio.run(run_hub_stdio, settings)
        return

    from mlhub_mcp.hub._http import serve_http

    serve_http(create_hub_with_workflows(settings), settings, transport, host, port, token)
