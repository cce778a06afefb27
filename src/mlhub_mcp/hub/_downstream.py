"""Connections from the hub to its downstream servers."""

import enum
import logging
from typing import Any

import anyio
import mcp.types as types
from mcp import Client, StdioServerParameters

from mlhub_mcp.config import ServerSettings, Settings

logger = logging.getLogger(__name__)


class ServerState(enum.StrEnum):
    """Where a downstream connection stands."""

    # The hub is starting the server or opening the session.
    STARTING = "starting"
    # The session is open and the listings are cached.
    READY = "ready"
    # The server could not be started or its session broke.
    FAILED = "failed"
    # The hub has closed the session.
    STOPPED = "stopped"


def _transport(server: ServerSettings, settings: Settings) -> Any:
    if server.transport == "stdio":
        command, args = server.launch_command()
        env = {**settings.child_environment(), **server.env}
        return StdioServerParameters(command=command, args=args, env=env)

    headers = dict(server.headers)
    if server.bearer_token:
        headers["Authorization"] = f"Bearer {server.bearer_token}"

    if server.transport == "sse":
        from mcp.client.sse import sse_client

        return sse_client(server.url, headers=headers or None)

    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    return streamable_http_client(server.url, http_client=create_mcp_http_client(headers=headers))


def describe_target(server: ServerSettings) -> str:
    """Return where a server runs, for messages; never includes tokens or headers."""
    if server.transport == "stdio":
        command, args = server.launch_command()
        return " ".join([command, *args])
    return server.url


class Downstream:
    """One downstream server: its session and its cached listings."""

    def __init__(self, server: ServerSettings, settings: Settings) -> None:
        self.server = server
        self.settings = settings
        self.name = server.name
        self.prefix = server.prefix
        self.state = ServerState.STARTING
        self.error: str | None = None
        self.client: Client | None = None
        self.tools: list[types.Tool] = []
        self.prompts: list[types.Prompt] = []
        self.resources: list[types.Resource] = []
        self.templates: list[types.ResourceTemplate] = []

    async def run(self, settled: anyio.Event) -> None:
        """Hold the session open until cancelled; set ``settled`` once ready or failed.

        A failure only marks this server FAILED with the reason, so one broken
        server does not keep the others from being served. Contexts are entered
        and left in this one task, as anyio's cancel scopes require.
        """
        try:
            client = Client(
                _transport(self.server, self.settings),
                mode="legacy",
                read_timeout_seconds=self.server.timeout_seconds,
                cache=None,
            )
            async with client:
                self.client = client
                await self.refresh()
                self.state = ServerState.READY
                logger.info("server %s ready with %d tools", self.name, len(self.tools))
                settled.set()
                await anyio.sleep_forever()
        except Exception as exc:
            self.state = ServerState.FAILED
            self.error = f"{type(exc).__name__}: {_first_message(exc)}"
            logger.error(
                "server %s (%s) failed: %s", self.name, describe_target(self.server), self.error
            )
        finally:
            self.client = None
            if self.state is ServerState.READY:
                self.state = ServerState.STOPPED
            settled.set()

    async def refresh(self) -> None:
        """Read every page of the server's tools, prompts, resources and templates."""
        assert self.client is not None
        caps = self.client.server_capabilities

        self.tools = await _all_pages(self.client.list_tools, "tools")
        self.prompts = await _all_pages(self.client.list_prompts, "prompts") if caps.prompts else []
        if caps.resources:
            self.resources = await _all_pages(self.client.list_resources, "resources")
            self.templates = await _all_pages(
                self.client.list_resource_templates, "resource_templates"
            )
        else:
            self.resources, self.templates = [], []

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": str(self.state),
            "transport": self.server.transport,
            "prefix": self.prefix,
            "tools": len(self.tools),
            "prompts": len(self.prompts),
            "resource_templates": len(self.templates),
            "error": self.error,
        }


async def _all_pages(fetch: Any, field_name: str) -> list[Any]:
    items: list[Any] = []
    cursor = None
    while True:
        page = await fetch(cursor=cursor)
        items.extend(getattr(page, field_name))
        cursor = page.next_cursor
        if not cursor:
            return items


def _first_message(exc: BaseException) -> str:
    # Transport failures arrive wrapped in exception groups; the first leaf
    # carries the useful text.
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__
