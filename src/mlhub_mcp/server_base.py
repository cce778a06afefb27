"""Pieces shared by the three MCP servers: logging, prompt errors and start-up."""

import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from mcp import MCPError
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import INVALID_PARAMS

from mlhub_mcp.config import Settings, load_settings
from mlhub_mcp.platform import Platform, open_platform

logger = logging.getLogger(__name__)


def configure_logging(level: str = "INFO") -> None:
    """Send log records to stderr, because a stdio server's stdout carries the protocol."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "httpx2", "httpcore", "mcp", "sse_starlette", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class PlatformServer(MCPServer):
    """An MCPServer that reports unknown prompts as invalid parameters (-32602)."""

    async def get_prompt(
        self, name: str, arguments: dict[str, Any] | None = None, context: Any = None
    ) -> Any:
        if self._prompt_manager.get_prompt(name) is None:
            known = sorted(p.name for p in self._prompt_manager.list_prompts())
            raise MCPError(
                INVALID_PARAMS, f"unknown prompt {name!r}; known prompts: {known}", {"name": name}
            )

        return await super().get_prompt(name, arguments, context)


def platform_lifespan(
    settings: Settings | None,
    setup: Callable[[Platform], Any] | None = None,
) -> Callable[[MCPServer], Any]:
    """Build a lifespan that opens the storage once and yields the server's state."""

    @asynccontextmanager
    async def lifespan(server: MCPServer) -> AsyncIterator[Any]:
        async with open_platform(settings or load_settings()) as platform:
            if setup is None:
                yield platform
                return
            async with setup(platform) as state:
                yield state

    return lifespan


def state_of(ctx: Context) -> Any:
    """Return the lifespan state of the server handling ``ctx``."""
    return ctx.request_context.lifespan_context


def run_server(server: MCPServer, transport: str, host: str, port: int) -> None:
    """Serve ``server`` over stdio, streamable HTTP or SSE."""
    if transport == "stdio":
        server.run("stdio")
    elif transport == "http":
        server.run("streamable-http", host=host, port=port)
    elif transport == "sse":
        server.run("sse", host=host, port=port)
    else:
        raise ValueError(f"unknown transport {transport!r}; use stdio, http or sse")
