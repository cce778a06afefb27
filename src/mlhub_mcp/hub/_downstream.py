"""Connections from the hub to its downstream servers, restarted when they break.

Each `Downstream` runs `supervise` in its own task. It opens one long-lived
`mcp.Client` session, caches the server's listings, and waits until the
session ends. When the server fails to start or its connection closes, the
server is marked and started again after a delay that doubles on each quick
failure (from `RESTART_DELAY_MIN` up to `RESTART_DELAY_MAX`).
"""

import enum
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp.types as types
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.message import SessionMessage

from mlhub_mcp.config import ServerSettings, Settings
from mlhub_mcp.errors import MLHubError
from mlhub_mcp.parent_watch import parent_environment
from mlhub_mcp.scrub import register_named_secrets, register_secret, scrub_text

logger = logging.getLogger(__name__)

# Restart delays, in seconds. A server that stayed ready for STABLE_SECONDS
# is restarted at once after a crash; quicker failures wait and double the delay.
RESTART_DELAY_MIN = 0.5
RESTART_DELAY_MAX = 30.0
STABLE_SECONDS = 30.0

_LIST_CHANGED = (
    types.ToolListChangedNotification,
    types.PromptListChangedNotification,
    types.ResourceListChangedNotification,
)


class ServerState(enum.StrEnum):
    """State of a downstream connection."""

    # The hub is starting the server or opening the session, for the first
    # time or after the connection closed.
    STARTING = "starting"
    # The session is open and the listings are cached.
    READY = "ready"
    # The last start failed; the hub tries again after a delay.
    FAILED = "failed"
    # The hub has closed the session and will not restart it.
    STOPPED = "stopped"


class DownstreamUnavailable(MLHubError):
    """A call was routed to a server that is not ready."""

    def __init__(self, name: str, state: ServerState, error: str | None) -> None:
        self.name = name
        self.state = state
        self.error = error
        reason = f": {error}" if error else ""
        super().__init__(f"server {name!r} is unavailable ({state}){reason}")


def _transport(server: ServerSettings, settings: Settings) -> Any:
    if server.transport == "stdio":
        command, args = server.launch_command()
        env = {**settings.child_environment(), **server.env, **parent_environment()}
        return stdio_client(StdioServerParameters(command=command, args=args, env=env))

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
    """Return where a server runs, for messages; passwords and tokens are masked."""
    if server.transport == "stdio":
        command, args = server.launch_command()
        return scrub_text(" ".join([command, *args]))
    return scrub_text(server.url)


@asynccontextmanager
async def _watch_closing(transport: Any, closed: anyio.Event) -> AsyncIterator[Any]:
    """Enter ``transport`` and set ``closed`` when its read stream ends.

    The SDK session wakes pending requests when the stream ends but gives
    its owner no signal, so the hub relays the stream to notice a server
    that exited and restart it.
    """
    async with transport as (read_stream, write_stream):
        sender, receiver = anyio.create_memory_object_stream[SessionMessage | Exception](0)

        async def relay() -> None:
            try:
                async with sender, read_stream:
                    async for item in read_stream:
                        await sender.send(item)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass
            finally:
                closed.set()

        async with anyio.create_task_group() as group:
            group.start_soon(relay)
            try:
                yield receiver, write_stream
            finally:
                group.cancel_scope.cancel()


class Downstream:
    """One downstream server: its session, its cached listings and its restarts."""

    def __init__(
        self,
        server: ServerSettings,
        settings: Settings,
        on_change: Callable[["Downstream"], Awaitable[None]] | None = None,
    ) -> None:
        self.server = server
        self.settings = settings
        self.name = server.name
        self.prefix = server.prefix
        self.on_change = on_change
        self.state = ServerState.STARTING
        self.error: str | None = None
        self.client: Client | None = None
        self.tools: list[types.Tool] = []
        self.prompts: list[types.Prompt] = []
        self.resources: list[types.Resource] = []
        self.templates: list[types.ResourceTemplate] = []
        self.restarts = 0
        self.ready_since: float | None = None
        self.next_attempt_at: float | None = None
        # Set once the first start has succeeded or failed.
        self.settled = anyio.Event()
        self._changed = anyio.Event()
        self._refresh_requested = anyio.Event()
        register_secret(server.bearer_token)
        register_named_secrets(server.headers)
        register_named_secrets(server.env)

    async def supervise(self) -> None:
        """Keep the server connected until cancelled, restarting it when it fails."""
        delay = RESTART_DELAY_MIN
        try:
            while True:
                await self._run_once()
                self.settled.set()
                await self._notify_change()

                stayed_up = self.ready_since is not None and (
                    time.monotonic() - self.ready_since >= STABLE_SECONDS
                )
                if stayed_up:
                    wait, delay = 0.0, RESTART_DELAY_MIN
                else:
                    wait, delay = delay, min(delay * 2, RESTART_DELAY_MAX)

                self.ready_since = None
                self.next_attempt_at = time.time() + wait
                logger.info("server %s: next start in %.1f s", self.name, wait)
                await anyio.sleep(wait)
                self.next_attempt_at = None
                self.restarts += 1
                self._set_state(ServerState.STARTING)
        finally:
            self.client = None
            self._set_state(ServerState.STOPPED)
            self.settled.set()

    async def _run_once(self) -> None:
        """Open a session, serve it until it closes, and record why it ended."""
        closed = anyio.Event()
        timeout = self.server.start_timeout_seconds
        try:
            client = Client(
                _watch_closing(_transport(self.server, self.settings), closed),
                mode="legacy",
                # The hub bounds each request itself: the start deadline, then
                # timeout_seconds per call.
                read_timeout_seconds=None,
                message_handler=self._on_message,
                cache=None,
            )
            # The deadline covers the handshake and the first listing only; it
            # is lifted once the server is ready.
            with anyio.CancelScope(deadline=anyio.current_time() + timeout) as starting:
                async with client, anyio.create_task_group() as group:
                    await self._refresh(client)
                    starting.deadline = math.inf
                    self.client = client
                    self.ready_since = time.monotonic()
                    self.error = None
                    self._set_state(ServerState.READY)
                    self.settled.set()
                    logger.info("server %s ready with %d tools", self.name, len(self.tools))
                    await self._notify_change()
                    group.start_soon(self._refresh_on_request, client)
                    await closed.wait()
                    # Marked before the session is closed, which can take
                    # seconds, so that new calls wait for the restart.
                    self.connection_lost(client)
                    group.cancel_scope.cancel()

            if starting.cancelled_caught:
                self._fail(f"start timed out after {timeout:g} s")
        except Exception as exc:
            if self.state is ServerState.READY:
                self._fail(f"session failed: {_describe(exc)}")
            elif self.ready_since is None:
                self._fail(f"start failed: {_describe(exc)}")
            else:
                # The connection was already marked lost; closing it failed too.
                logger.debug("closing the session of %s failed", self.name, exc_info=True)
        finally:
            self.client = None

    def connection_lost(self, client: Client) -> None:
        """Mark the server as restarting if ``client`` is still its current session."""
        if self.client is client and self.state is ServerState.READY:
            self._fail("the connection closed; the server exited or crashed")

    def _fail(self, reason: str) -> None:
        self.error = scrub_text(reason)
        self.client = None
        crashed = self.state is ServerState.READY
        self._set_state(ServerState.STARTING if crashed else ServerState.FAILED)
        logger.error("server %s (%s): %s", self.name, describe_target(self.server), self.error)

    async def _notify_change(self) -> None:
        if self.on_change is None:
            return
        try:
            await self.on_change(self)
        except Exception:
            logger.exception("updating the hub after a change of %s failed", self.name)

    async def _on_message(self, message: Any) -> None:
        # Runs inside the session's read loop, so it must not wait for the
        # server; the listing is read again by _refresh_on_request.
        if isinstance(message, _LIST_CHANGED):
            logger.info("server %s: %s", self.name, message.method)
            self._refresh_requested.set()
        elif isinstance(message, Exception):
            logger.warning("server %s: transport error: %s", self.name, _describe(message))

    async def _refresh_on_request(self, client: Client) -> None:
        while True:
            await self._refresh_requested.wait()
            self._refresh_requested = anyio.Event()
            try:
                with anyio.fail_after(self.server.start_timeout_seconds):
                    await self._refresh(client)
            except Exception as exc:
                logger.warning(
                    "server %s: reading the listings failed: %s", self.name, _describe(exc)
                )
                continue

            await self._notify_change()

    async def _refresh(self, client: Client) -> None:
        """Read every page of the server's tools, prompts, resources and templates."""
        caps = client.server_capabilities
        tools = await _all_pages(client.list_tools, "tools") if caps.tools else []
        prompts = await _all_pages(client.list_prompts, "prompts") if caps.prompts else []
        resources: list[types.Resource] = []
        templates: list[types.ResourceTemplate] = []
        if caps.resources:
            resources = await _all_pages(client.list_resources, "resources")
            templates = await _all_pages(client.list_resource_templates, "resource_templates")

        self.tools, self.prompts = tools, prompts
        self.resources, self.templates = resources, templates

    def _set_state(self, state: ServerState) -> None:
        self.state = state
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def wait_ready(self) -> Client:
        """Return the open session, waiting while the server is starting.

        Raises:
            DownstreamUnavailable: The server failed, stopped, or is still starting
                after ``start_timeout_seconds``.
        """
        with anyio.move_on_after(self.server.start_timeout_seconds):
            while self.state is ServerState.STARTING:
                await self._changed.wait()

        if self.state is ServerState.READY and self.client is not None:
            return self.client

        raise DownstreamUnavailable(self.name, self.state, self.error)

    def status(self) -> dict[str, Any]:
        """Describe the server for hub_status; never includes tokens or headers."""
        retry_in = None
        if self.next_attempt_at is not None:
            retry_in = round(max(0.0, self.next_attempt_at - time.time()), 1)

        return {
            "name": self.name,
            "state": str(self.state),
            "transport": self.server.transport,
            "prefix": self.prefix,
            "tools": len(self.tools),
            "prompts": len(self.prompts),
            "resource_templates": len(self.templates),
            "restarts": self.restarts,
            "next_attempt_in_seconds": retry_in,
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


def _describe(exc: BaseException) -> str:
    # Transport failures arrive wrapped in exception groups; the first leaf
    # carries the useful text.
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, TimeoutError):
        return "timed out"
    return scrub_text(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
