"""The hub's state and the routing of calls to the downstream servers.

`start_hub` starts every enabled downstream server at once. The hub serves
as soon as all of them are ready or failed, or after
``startup_wait_seconds``. Servers still starting join later, and the
clients are notified. Each routed
call is bounded by its server's ``timeout_seconds`` and recorded in the
audit trail.
"""

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import mcp.types as types
from mcp import MCPError
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CONNECTION_CLOSED, INTERNAL_ERROR, INVALID_PARAMS, REQUEST_TIMEOUT

from mlhub_mcp.config import Settings
from mlhub_mcp.hub._audit import AuditLog, Caller, CallRecord, current_caller
from mlhub_mcp.hub._downstream import Downstream, DownstreamUnavailable, ServerState
from mlhub_mcp.hub._local_tools import LocalPrompt, LocalTool, ProgressFn
from mlhub_mcp.hub._notify import ClientNotifier, ListingChange
from mlhub_mcp.hub._routing import RoutingTable
from mlhub_mcp.scrub import install_log_scrubbing, scrub_text

logger = logging.getLogger(__name__)

HUB_SERVER_NAME = "hub"

# The /health state of a ready server left out because of a name conflict.
CONFLICT_STATE = "conflict"

ResourceReader = Callable[["Hub"], Awaitable[types.ReadResourceResult]]


@dataclass
class LocalResource:
    """A resource served by the hub process itself."""

    resource: types.Resource
    reader: ResourceReader


@dataclass
class Hub:
    """State of a running hub."""

    settings: Settings
    downstreams: list[Downstream] = field(default_factory=list)
    routes: RoutingTable = field(default_factory=RoutingTable)
    local_tools: dict[str, LocalTool] = field(default_factory=dict)
    local_prompts: dict[str, LocalPrompt] = field(default_factory=dict)
    local_resources: dict[str, LocalResource] = field(default_factory=dict)
    notifier: ClientNotifier = field(default_factory=ClientNotifier)
    audit: AuditLog = field(init=False)

    def __post_init__(self) -> None:
        self.audit = AuditLog(self.settings)

    def rebuild_routes(self) -> ListingChange:
        """Index the ready servers' listings again and return which listings changed."""
        before = _fingerprints(self.routes)
        previous_conflicts = self.routes.conflicts
        reserved = set(self.local_tools) | {f"prompt:{name}" for name in self.local_prompts}
        self.routes = RoutingTable.build(self.downstreams, reserved=reserved, strict=False)
        ready = {d.name for d in self.downstreams if d.state is ServerState.READY}
        _log_conflict_changes(previous_conflicts, self.routes.conflicts, ready)

        after = _fingerprints(self.routes)
        return ListingChange(*(old != new for old, new in zip(before, after, strict=True)))

    async def on_downstream_change(self, downstream: Downstream) -> None:
        """Update the routes after ``downstream`` started, stopped or changed its listings."""
        await self.notifier.send(self.rebuild_routes())

    async def call(
        self, name: str, arguments: dict[str, Any], progress: ProgressFn | None = None
    ) -> types.CallToolResult:
        """Call a tool by its public name, as a client of the hub would.

        A tool that fails, times out, or whose server is unavailable or exits
        during the call gives a result with ``is_error`` set.

        Raises:
            MCPError: The downstream server returned a protocol error,
                passed on unchanged.
        """
        local = self.local_tools.get(name)
        route = self.routes.tools.get(name)
        server_name = route[0].name if route and not local else HUB_SERVER_NAME

        with self.audit.track("tools/call", name, server_name, arguments) as record:
            if local is not None:
                result = await self._call_local(local, arguments, progress)
            elif route is None:
                result = error_result(self._unknown_tool_message(name))
            else:
                server, tool = route
                result = await self._call_downstream(server, tool.name, arguments, progress, record)

            record.set_result(result)
            return result

    async def _call_local(
        self, local: LocalTool, arguments: dict[str, Any], progress: ProgressFn | None
    ) -> types.CallToolResult:
        # Calls a hub tool makes through Hub.call are audited with its name in "via".
        caller = current_caller.get() or Caller()
        token = current_caller.set(replace(caller, via=local.tool.name))
        try:
            return await local.handler(self, arguments, progress or _ignore_progress)
        except MCPError:
            # A protocol error is meant for the client as a JSON-RPC error.
            raise
        except ToolError as exc:
            return error_result(str(exc))
        except Exception as exc:
            # The low-level server would turn this into a JSON-RPC error with code 0.
            logger.exception("hub tool %s failed", local.tool.name)
            detail = scrub_text(f"{type(exc).__name__}: {exc}")
            return error_result(f"tool {local.tool.name!r} failed on an internal error: {detail}")
        finally:
            current_caller.reset(token)

    async def _call_downstream(
        self,
        server: Downstream,
        tool: str,
        arguments: dict[str, Any],
        progress: ProgressFn | None,
        record: CallRecord,
    ) -> types.CallToolResult:
        try:
            client = await server.wait_ready()
        except DownstreamUnavailable as exc:
            return error_result(str(exc))

        timeout = server.server.timeout_seconds
        # Leaving this scope on timeout cancels the request, and the SDK then
        # sends notifications/cancelled to the server.
        with anyio.move_on_after(timeout):
            try:
                return await client.call_tool(tool, arguments, progress_callback=progress)
            except MCPError as exc:
                if _is_connection_closed(exc):
                    server.connection_lost(client)
                    return error_result(_closed_message(server, "tool", tool))
                # A downstream MCPError propagates unchanged, so the caller sees the same code.
                raise

        message = _timeout_message(server, "tool", tool)
        record.set_outcome("timeout", REQUEST_TIMEOUT, message)
        return error_result(message)

    async def read_resource(self, uri: str) -> types.ReadResourceResult:
        """Read a resource of the hub or of the server whose URI or template matches ``uri``.

        Raises:
            MCPError: The URI is unknown (-32602), the server is unavailable or
                exited (-32603), timed out (-32001), or returned an error.
        """
        local = self.local_resources.get(uri)
        server = None if local else self.routes.server_for_uri(uri)
        server_name = server.name if server else HUB_SERVER_NAME

        with self.audit.track("resources/read", uri, server_name, {"uri": uri}):
            if local is not None:
                return await local.reader(self)
            if server is None:
                raise MCPError(INVALID_PARAMS, f"Unknown resource: {uri}", {"uri": uri})

            async def read(client: Any) -> types.ReadResourceResult:
                return await client.read_resource(uri)

            return await _request(server, "resource", uri, read)

    async def get_prompt(self, name: str, arguments: dict[str, str]) -> types.GetPromptResult:
        """Render a prompt of the hub or of a downstream server by its public name.

        Raises:
            MCPError: The prompt is unknown (-32602), the server is unavailable
                or exited (-32603), timed out (-32001), or returned an error.
        """
        local = self.local_prompts.get(name)
        route = None if local else self.routes.prompts.get(name)
        server_name = route[0].name if route else HUB_SERVER_NAME

        with self.audit.track("prompts/get", name, server_name, arguments):
            if local is not None:
                return await local.handler(self, arguments)
            if route is None:
                known = sorted([*self.local_prompts, *self.routes.prompts])
                raise MCPError(
                    INVALID_PARAMS,
                    f"unknown prompt {name!r}; known prompts: {known}",
                    {"name": name},
                )

            server, prompt = route

            async def render(client: Any) -> types.GetPromptResult:
                return await client.get_prompt(prompt.name, arguments)

            return await _request(server, "prompt", prompt.name, render)

    def _unknown_tool_message(self, name: str) -> str:
        # A server that is restarting has left the routes, but its last
        # listing still shows which tools it serves.
        for server in self.downstreams:
            if server.state is ServerState.READY:
                continue
            if any(f"{server.prefix}{tool.name}" == name for tool in server.tools):
                reason = server.error or "it is restarting"
                return (
                    f"tool {name!r} belongs to server {server.name!r}, which is "
                    f"{server.state} ({reason}); retry in a moment or check hub_status"
                )

        down = [s.name for s in self.downstreams if s.state is not ServerState.READY]
        if down:
            return f"Unknown tool: {name} (servers not ready: {down}; see hub_status)"
        return f"Unknown tool: {name}"

    def status(self) -> dict[str, Any]:
        """Describe the downstream servers and the audit trail for hub_status."""
        servers = []
        for downstream in self.downstreams:
            entry = downstream.status()
            conflict = self.routes.conflicts.get(downstream.name)
            if conflict:
                entry["error"] = conflict
            servers.append(entry)

        ready = all(s["state"] == ServerState.READY for s in servers) and not self.routes.conflicts
        return {"ready": ready, "servers": servers, "audit": self.audit.status()}

    def health(self) -> dict[str, Any]:
        """Report the overall state and each server's state, and nothing else.

        A ready server left out because of a name conflict has the state
        ``conflict``, and makes the hub ``degraded`` like a server that is down.
        """
        servers = []
        for downstream in self.downstreams:
            state = str(downstream.state)
            if downstream.name in self.routes.conflicts:
                state = CONFLICT_STATE
            servers.append({"name": downstream.name, "state": state})

        ok = all(server["state"] == ServerState.READY for server in servers)
        return {"status": "ok" if ok else "degraded", "servers": servers}


async def _request(server: Downstream, kind: str, name: str, send: Callable[[Any], Any]) -> Any:
    try:
        client = await server.wait_ready()
    except DownstreamUnavailable as exc:
        raise MCPError(INTERNAL_ERROR, str(exc)) from exc

    with anyio.move_on_after(server.server.timeout_seconds):
        try:
            return await send(client)
        except MCPError as exc:
            if _is_connection_closed(exc):
                server.connection_lost(client)
                raise MCPError(INTERNAL_ERROR, _closed_message(server, kind, name)) from exc
            raise

    raise MCPError(REQUEST_TIMEOUT, _timeout_message(server, kind, name))


def _log_conflict_changes(before: dict[str, str], after: dict[str, str], ready: set[str]) -> None:
    # The routes are rebuilt on every start, stop and listing change of any
    # server, so only a new or changed conflict is logged, not every rebuild.
    for name, reason in after.items():
        if before.get(name) != reason:
            logger.error("server %s left out of the hub: %s", name, reason)

    for name in (before.keys() - after.keys()) & ready:
        logger.info("server %s joined the hub: its names no longer conflict", name)


def _is_connection_closed(exc: MCPError) -> bool:
    # The SDK's client raises this when the session's stream ends while a
    # request waits for its response.
    return exc.code == CONNECTION_CLOSED and exc.message == "Connection closed"


def _closed_message(server: Downstream, kind: str, name: str) -> str:
    return (
        f"server {server.name!r} closed the connection during the call of {kind} {name!r}: "
        "it exited or crashed. The hub restarts it; retry the call."
    )


def _timeout_message(server: Downstream, kind: str, name: str) -> str:
    return (
        f"server {server.name!r} did not answer the call of {kind} {name!r} within "
        f"{server.server.timeout_seconds:g} s (timeout_seconds in [servers.{server.name}]); "
        "the hub cancelled the call."
    )


def error_result(text: str) -> types.CallToolResult:
    """Build a tool result with ``is_error`` set and ``text`` as its content."""
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


async def _ignore_progress(progress: float, total: float | None, message: str | None) -> None:
    return None


def _fingerprints(routes: RoutingTable) -> tuple[str, str, str]:
    def dump(items: Any) -> str:
        return json.dumps(items, sort_keys=True, default=str)

    tools = {name: tool.model_dump(mode="json") for name, (_, tool) in routes.tools.items()}
    prompts = {name: prompt.model_dump(mode="json") for name, (_, prompt) in routes.prompts.items()}
    resources = [sorted(routes.resources), [t.uri_template for _, _, t in routes.templates]]
    return dump(tools), dump(prompts), dump(resources)


@asynccontextmanager
async def start_hub(
    settings: Settings,
    local_tools: list[LocalTool] | None = None,
    local_prompts: list[LocalPrompt] | None = None,
    local_resources: list[LocalResource] | None = None,
) -> AsyncIterator[Hub]:
    """Start the downstream servers and the audit writer; stop them on exit."""
    install_log_scrubbing()
    hub = Hub(settings=settings)
    for tool in local_tools or []:
        hub.local_tools[tool.tool.name] = tool
    for prompt in local_prompts or []:
        hub.local_prompts[prompt.prompt.name] = prompt
    for resource in local_resources or []:
        hub.local_resources[str(resource.resource.uri)] = resource

    for config in settings.servers.values():
        if config.enabled:
            hub.downstreams.append(Downstream(config, settings, hub.on_downstream_change))

    async with anyio.create_task_group() as group:
        group.start_soon(hub.audit.run)
        for downstream in hub.downstreams:
            group.start_soon(downstream.supervise)

        with anyio.move_on_after(settings.hub.startup_wait_seconds):
            for downstream in hub.downstreams:
                await downstream.settled.wait()

        hub.rebuild_routes()
        waiting = [d.name for d in hub.downstreams if d.state is ServerState.STARTING]
        if waiting:
            logger.warning("serving before these servers are ready: %s", ", ".join(waiting))

        try:
            yield hub
        finally:
            hub.notifier.close()
            group.cancel_scope.cancel()
