"""The hub over HTTP: streamable HTTP at ``/mcp`` or SSE at ``/sse``, plus uploads and health.

Routes:

- ``/mcp`` (streamable HTTP) or ``/sse`` with ``/messages/`` (SSE): the MCP endpoint.
- ``PUT`` or ``POST /uploads/{file_name}``: streams the request body to a
  file under the data directory's ``imports/uploads/`` and returns its path,
  which register_model and register_dataset accept as ``path``.
- ``GET /health``: the overall state and each server's state, without auth.

Every route passes `HttpGuard` (Host, Origin, bearer token), and the MCP
endpoints `JsonRpcBodyLimit`. The hub starts once in the app's lifespan; the
SDK's per-connection lifespan reuses it.
"""

import hashlib
import logging
import re
import shutil
import socket
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from uuid import UUID

import anyio
import mcp.types as types
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import (
    StreamableHTTPASGIApp,
    StreamableHTTPSessionManager,
)
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.message import SessionMessage
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Message, Scope

from mlhub_mcp.config import Settings
from mlhub_mcp.errors import InvalidInput
from mlhub_mcp.http_security import (
    HUB_TOKEN_ENV,
    HttpGuard,
    JsonRpcBodyLimit,
    check_bind,
    client_address,
    resolve_token,
    transport_security,
)
from mlhub_mcp.hub._audit import AuditLog, Caller, CallRecord
from mlhub_mcp.hub._hub import HUB_SERVER_NAME
from mlhub_mcp.hub.server import HubServer
from mlhub_mcp.ids import new_id
from mlhub_mcp.paths import check_file_name

logger = logging.getLogger(__name__)

UPLOADS_DIR = "uploads"

# Added to the 413 message of an oversized MCP request.
_BODY_LIMIT_HINT = (
    "To send a large file, upload it with PUT /uploads/{file_name} and pass the returned path."
)

# The session id in the SSE endpoint event, e.g. "data: /messages/?session_id=<hex>".
_ENDPOINT_EVENT = re.compile(rb"event: endpoint\r?\ndata: [^\r\n]*[?&]session_id=([0-9A-Fa-f-]+)")

# Maximum wait to put an error on a client's SSE stream, because a client that
# does not read its stream must not hold up the response to its rejected POST.
_SSE_ERROR_SEND_SECONDS = 5.0


def uploads_dir(settings: Settings) -> Path:
    """Return the folder receiving uploads; it lies inside the always-allowed import dir."""
    return settings.home / "imports" / UPLOADS_DIR


def build_hub_app(
    server: HubServer,
    settings: Settings,
    transport: str,
    host: str = "127.0.0.1",
    token: str | None = None,
) -> HttpGuard:
    """Build the guarded ASGI app serving ``server`` over ``transport`` (http or sse).

    Raises:
        ConfigurationError: A non-loopback ``host`` was given without a token.
        ValueError: ``transport`` is neither http nor sse.
    """
    token = resolve_token(token, HUB_TOKEN_ENV)
    check_bind(host, token, HUB_TOKEN_ENV)
    security = transport_security(host, settings.http)

    if transport == "http":
        routes, run_transport = _streamable_http(server, settings, security)
    elif transport == "sse":
        routes, run_transport = _sse(server, settings, security)
    else:
        raise ValueError(f"unknown transport {transport!r}; use stdio, http or sse")

    async def health(request: Request) -> Response:
        if server.hub is None:
            return JSONResponse({"status": "starting", "servers": []}, status_code=503)
        return JSONResponse(server.hub.health())

    async def upload(request: Request) -> Response:
        audit = server.hub.audit if server.hub is not None else None
        return await receive_upload(request, settings, audit)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        _remove_stale_uploads(settings)
        async with server.running(), run_transport():
            yield

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/uploads/{file_name}", upload, methods=["PUT", "POST"]),
            *routes,
        ],
        lifespan=lifespan,
    )
    return HttpGuard(app, security, token)


def _streamable_http(
    server: HubServer, settings: Settings, security: TransportSecuritySettings
) -> tuple[list[Any], Any]:
    limit = settings.http.max_request_body_bytes
    manager = StreamableHTTPSessionManager(
        app=server,
        security_settings=security,
        max_request_body_size=limit,
    )
    endpoint = JsonRpcBodyLimit(StreamableHTTPASGIApp(manager), limit, _BODY_LIMIT_HINT)

    return [Route("/mcp", endpoint=endpoint)], manager.run


class _SseSession:
    """An open SSE connection: its session id and the stream of messages to its client."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.writer: Any = None


def _sse(
    server: HubServer, settings: Settings, security: TransportSecuritySettings
) -> tuple[list[Any], Any]:
    limit = settings.http.max_request_body_bytes
    sse = SseServerTransport(
        "/messages/",
        security_settings=security,
        max_request_body_size=limit,
    )
    sessions: dict[str, _SseSession] = {}

    async def connect(request: Request) -> Response:
        session = _SseSession()

        # The SDK picks the session id and sends it only in the endpoint event,
        # so it is read there to map the id to this connection's stream.
        async def send(message: Message) -> None:
            if session.id is None and message["type"] == "http.response.body":
                found = _ENDPOINT_EVENT.search(message.get("body", b""))
                session.id = _session_key(found[1].decode()) if found else None
                if session.id is not None:
                    sessions[session.id] = session
            await request._send(message)

        try:
            async with sse.connect_sse(request.scope, request.receive, send) as streams:
                session.writer = streams[1]
                # Server.run enters the server lifespan for each connection;
                # HubServer.running hands it the hub this app already started.
                await server.run(streams[0], streams[1], server.create_initialization_options())
        finally:
            if session.id is not None:
                sessions.pop(session.id, None)
        return Response()

    async def send_error_on_stream(
        scope: Scope, request_id: types.RequestId, error: types.ErrorData
    ) -> None:
        # An SSE client reads responses only from its stream, not from the POST,
        # so the error goes there too, or the request would wait for its timeout.
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        key = _session_key(query.get("session_id", [""])[0])
        session = sessions.get(key) if key else None
        if session is None or session.writer is None:
            return

        reply = types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error)
        with anyio.move_on_after(_SSE_ERROR_SEND_SECONDS):
            try:
                await session.writer.send(SessionMessage(reply))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                logger.debug("SSE session %s closed before the 413 error was sent", key)

    @asynccontextmanager
    async def nothing_to_run() -> AsyncIterator[None]:
        yield

    post_message = JsonRpcBodyLimit(
        sse.handle_post_message, limit, _BODY_LIMIT_HINT, on_reject=send_error_on_stream
    )
    routes = [
        Route("/sse", connect, methods=["GET"]),
        Mount("/messages/", app=post_message),
    ]
    return routes, nothing_to_run


def _session_key(value: str) -> str | None:
    try:
        return UUID(hex=value).hex
    except ValueError:
        return None


async def receive_upload(
    request: Request, settings: Settings, audit: AuditLog | None = None
) -> Response:
    """Stream a request body to a new file under ``imports/uploads/`` and return its path.

    The body is written chunk by chunk as it arrives and never held whole in
    memory. A body over ``max_upload_bytes`` is rejected with 413 and the
    partial file removed. Each upload, stored or not, is recorded in ``audit``
    with operation ``upload``.
    """
    caller = Caller(client_address=client_address(request.scope))
    entry = (f"{request.method} /uploads", "upload", HUB_SERVER_NAME, None, caller)
    if audit is None:
        tracking: Any = nullcontext(CallRecord(*entry))
    else:
        tracking = audit.track(*entry)

    with tracking as record:
        record.set_upload(request.path_params["file_name"], 0, None)
        return await _store_upload(request, settings, record)


async def _store_upload(request: Request, settings: Settings, record: CallRecord) -> Response:
    try:
        file_name = check_file_name(request.path_params["file_name"])
    except InvalidInput as exc:
        record.set_outcome("rejected", 400, str(exc))
        return _error(400, "invalid_file_name", str(exc))

    limit = settings.http.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return _too_large(request, record, limit)

    folder = uploads_dir(settings) / new_id()
    await anyio.Path(folder).mkdir(parents=True)
    target = folder / file_name
    partial = folder / f".{file_name}.part"

    try:
        size, sha256 = await _write_body(request, partial, limit)
    except _TooLarge as exc:
        shutil.rmtree(folder, ignore_errors=True)
        record.set_upload(file_name, exc.size, None)
        return _too_large(request, record, limit)
    except ClientDisconnect:
        shutil.rmtree(folder, ignore_errors=True)
        logger.warning("upload of %s cancelled: the client disconnected", file_name)
        record.set_outcome("cancelled", error="the client disconnected during the upload")
        return Response(status_code=400)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise

    await anyio.Path(partial).rename(target)
    record.set_upload(file_name, size, sha256)
    logger.info("received upload %s: %d bytes", target, size)
    body = {"path": str(target), "file_name": file_name, "size_bytes": size, "sha256": sha256}
    return JSONResponse(body, status_code=201)


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"{size} bytes received")
        self.size = size


async def _write_body(request: Request, partial: Path, limit: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    async with await anyio.open_file(partial, "wb") as handle:
        async for chunk in request.stream():
            if not chunk:
                continue
            size += len(chunk)
            if size > limit:
                raise _TooLarge(size)
            digest.update(chunk)
            await handle.write(chunk)

    return size, digest.hexdigest()


def _too_large(request: Request, record: CallRecord, limit: int) -> Response:
    description = (
        f"the upload is larger than max_upload_bytes = {limit} in [http] of hub_config.toml"
    )
    logger.warning(
        "rejected a request for %s from %s: %s",
        request.url.path,
        client_address(request.scope),
        description,
    )
    record.set_outcome("rejected", 413, description)
    return _error(413, "upload_too_large", description)


def _error(status: int, error: str, description: str) -> Response:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


def _remove_stale_uploads(settings: Settings) -> None:
    folder = uploads_dir(settings)
    if not folder.is_dir():
        return

    cutoff = time.time() - settings.http.upload_retention_hours * 3600
    for entry in folder.iterdir():
        try:
            if entry.is_dir() and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry)
                logger.info("removed upload %s: older than upload_retention_hours", entry.name)
        except OSError:
            logger.warning("could not remove the old upload %s", entry, exc_info=True)


async def serve_http_async(
    server: HubServer,
    settings: Settings,
    transport: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    sockets: Sequence[socket.socket] | None = None,
) -> None:
    """Serve the hub over HTTP until cancelled; ``sockets`` replaces binding ``host:port``.

    Raises:
        ConfigurationError: A non-loopback ``host`` was given without a token.
    """
    import uvicorn

    app = build_hub_app(server, settings, transport, host, token)
    path = "/mcp" if transport == "http" else "/sse"
    url_host = f"[{host}]" if ":" in host else host
    logger.info("hub serving %s on http://%s:%d%s", transport, url_host, port, path)
    config = uvicorn.Config(app, host=host, port=port, log_config=None, lifespan="on")
    await uvicorn.Server(config).serve(sockets=list(sockets) if sockets else None)


def serve_http(
    server: HubServer,
    settings: Settings,
    transport: str,
    host: str,
    port: int,
    token: str | None,
) -> None:
    """Serve the hub over streamable HTTP or SSE until interrupted.

    Raises:
        ConfigurationError: A non-loopback ``host`` was given without a token.
    """
    anyio.run(serve_http_async, server, settings, transport, host, port, token)
