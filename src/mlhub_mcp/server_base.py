"""Pieces shared by the three MCP servers: logging, prompt errors and start-up."""

import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from mcp import MCPError
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import INVALID_PARAMS, ToolAnnotations
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mlhub_mcp.config import Settings, load_settings
from mlhub_mcp.parent_watch import exit_with_parent
from mlhub_mcp.platform import Platform, open_platform
from mlhub_mcp.scrub import install_log_scrubbing, scrub_text

logger = logging.getLogger(__name__)

# Tool annotations shared by the servers' tools.
READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
DESTRUCTIVE = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
)


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
    """An MCPServer that reports unknown prompts and bad prompt arguments as -32602.

    Its tool errors are also scrubbed of secrets, since a message may quote a
    caller's value, such as a URL with a password in it.
    """

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except MCPError:
            # A protocol error goes to the client as it is.
            raise
        except ToolError as exc:
            masked = scrub_text(str(exc))
            if masked == str(exc):
                raise
            raise ToolError(masked) from exc

    async def get_prompt(
        self, name: str, arguments: dict[str, Any] | None = None, context: Any = None
    ) -> Any:
        prompt = self._prompt_manager.get_prompt(name)
        if prompt is None:
            known = sorted(p.name for p in self._prompt_manager.list_prompts())
            raise MCPError(
                INVALID_PARAMS, f"unknown prompt {name!r}; known prompts: {known}", {"name": name}
            )

        # The SDK (mcp 2.3.0) reports a missing or unknown argument as an internal
        # error (-32603) and logs a traceback, so the arguments are checked here.
        declared = prompt.arguments or []
        passed = set(arguments or {})
        missing = sorted(a.name for a in declared if a.required and a.name not in passed)
        unknown = sorted(passed - {a.name for a in declared})
        if missing or unknown:
            problems = []
            if missing:
                problems.append(f"missing required arguments {missing}")
            if unknown:
                problems.append(f"unknown arguments {unknown}")
            expected = [f"{a.name} ({'required' if a.required else 'optional'})" for a in declared]
            raise MCPError(
                INVALID_PARAMS,
                f"invalid arguments for prompt {name!r}: {', '.join(problems)}. "
                f"Expected arguments: {', '.join(expected) or 'none'}",
                {"name": name, "missing": missing, "unknown": unknown},
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


def run_server(
    server: MCPServer,
    transport: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    settings: Settings | None = None,
) -> None:
    """Serve ``server`` over stdio, streamable HTTP (``/mcp``) or SSE (``/sse``).

    Over HTTP the server gets the hub's protections: Host/Origin checks, a
    request body limit, an optional bearer token (``token`` or
    ``$MLHUB_SERVER_TOKEN``, required on a non-loopback address) and an
    unauthenticated ``/health``.

    Raises:
        ConfigurationError: A non-loopback ``host`` was given without a token.
    """
    exit_with_parent()
    install_log_scrubbing()
    if transport == "stdio":
        server.run("stdio")
        return

    import uvicorn

    app = build_server_app(server, transport, host, token, settings or load_settings())
    uvicorn.run(app, host=host, port=port, log_config=None, lifespan="on")


def build_server_app(
    server: MCPServer, transport: str, host: str, token: str | None, settings: Settings
) -> Any:
    """Build the guarded ASGI app that serves ``server`` over ``transport`` (http or sse).

    Raises:
        ConfigurationError: A non-loopback ``host`` was given without a token.
        ValueError: ``transport`` is neither http nor sse.
    """
    from mlhub_mcp.http_security import (
        SERVER_TOKEN_ENV,
        HttpGuard,
        JsonRpcBodyLimit,
        check_bind,
        resolve_token,
        transport_security,
    )

    token = resolve_token(token, SERVER_TOKEN_ENV)
    check_bind(host, token, SERVER_TOKEN_ENV)
    security = transport_security(host, settings.http)
    limit = settings.http.max_request_body_bytes
    server.custom_route("/health", methods=["GET"])(_health)

    if transport == "http":
        app = server.streamable_http_app(
            streamable_http_path="/mcp",
            max_request_body_size=limit,
            transport_security=security,
            host=host,
        )
    elif transport == "sse":
        app = server.sse_app(
            sse_path="/sse",
            message_path="/messages/",
            max_request_body_size=limit,
            transport_security=security,
            host=host,
        )
    else:
        raise ValueError(f"unknown transport {transport!r}; use stdio, http or sse")

    # A JSON-RPC error in place of the SDK's plain-text 413, so that MCP
    # clients can show why the request was rejected.
    hint = "For a large file, pass a path inside an import directory instead of inline content."
    return HttpGuard(JsonRpcBodyLimit(app, limit, hint), security, token)


async def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})
