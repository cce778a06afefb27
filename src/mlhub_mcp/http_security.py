"""Security of the HTTP transports, shared by the hub and the servers.

Every request passes `HttpGuard` before it reaches a route:

1. DNS-rebinding protection: the Host header must name an allowed host
   (421 otherwise) and a browser's Origin header an allowed origin (403).
2. Bearer token: when a token is configured, every path except the public
   ones (``/health``) requires ``Authorization: Bearer <token>`` (401).

The MCP transports of the SDK check Host and Origin again and cap request
bodies themselves. The guard extends the same rules to the other routes.
`JsonRpcBodyLimit` caps MCP request bodies before the SDK does, so that a
client gets a JSON-RPC error it can show instead of the SDK's plain-text 413.
"""

import hmac
import ipaddress
import json
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

import anyio
import mcp.types as types
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlhub_mcp.config import HttpSettings
from mlhub_mcp.errors import ConfigurationError
from mlhub_mcp.scrub import register_secret

logger = logging.getLogger(__name__)

HUB_TOKEN_ENV = "MLHUB_HUB_TOKEN"
SERVER_TOKEN_ENV = "MLHUB_SERVER_TOKEN"
PUBLIC_PATHS = frozenset({"/health"})

_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")

# How much of an oversized body is read to find the request id, and how long
# to wait for it. Clients put "id" near the start: the SDK sends
# {"jsonrpc":"2.0","id":...,"method":...,"params":...}.
_ID_PREFIX_BYTES = 1024
_ID_PREFIX_WAIT_SECONDS = 1.0


def is_loopback(host: str) -> bool:
    """Return whether binding ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(token: str | None, env_name: str) -> str | None:
    """Return the token given on the command line, else the one in ``env_name``, else None."""
    value = token or os.environ.get(env_name) or None
    register_secret(value)
    return value


def check_bind(host: str, token: str | None, env_name: str) -> None:
    """Reject serving HTTP on a non-loopback address without a bearer token.

    Raises:
        ConfigurationError: ``host`` is reachable from other machines and ``token`` is empty.
    """
    if token or is_loopback(host):
        return

    raise ConfigurationError(
        f"cannot serve on {host!r} without a bearer token: any machine that can reach "
        f"this address could use the tools. Pass --token or set ${env_name}, or bind 127.0.0.1."
    )


def transport_security(host: str, http: HttpSettings) -> TransportSecuritySettings:
    """Build the allowed Host and Origin values for serving on ``host``.

    The loopback names on any port are always allowed, and so is a specific
    bound address. On a wildcard address (0.0.0.0, ::) without
    ``allowed_hosts``, the Host check is turned off with a warning because
    the names clients will use are unknown. The bearer token, required on
    such addresses, still protects the endpoints then.
    """
    hosts = [*_LOOPBACK_NAMES, *(f"{name}:*" for name in _LOOPBACK_NAMES), *http.allowed_hosts]
    origins = [
        *(f"http://{name}" for name in _LOOPBACK_NAMES),
        *(f"http://{name}:*" for name in _LOOPBACK_NAMES),
        *http.allowed_origins,
    ]
    if host not in _WILDCARD_HOSTS and not is_loopback(host):
        url_host = f"[{host}]" if ":" in host else host
        hosts += [url_host, f"{url_host}:*"]
        origins += [f"http://{url_host}:*", f"https://{url_host}:*"]

    if host in _WILDCARD_HOSTS and not http.allowed_hosts:
        logger.warning(
            "serving on %r with no [http] allowed_hosts: Host headers are not checked; "
            "list the names clients use to turn DNS-rebinding protection on",
            host,
        )
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=False, allowed_hosts=hosts, allowed_origins=origins
        )

    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def _matches(value: str, allowed: Iterable[str]) -> bool:
    for pattern in allowed:
        if value == pattern:
            return True
        if pattern.endswith(":*") and value.startswith(pattern[:-1]):
            port = value[len(pattern) - 1 :]
            if port.isdigit():
                return True

    return False


class HttpGuard:
    """ASGI middleware that checks Host, Origin and the bearer token of every request."""

    def __init__(
        self,
        app: ASGIApp,
        security: TransportSecuritySettings,
        token: str | None,
        public_paths: frozenset[str] = PUBLIC_PATHS,
    ) -> None:
        self.app = app
        self.security = security
        self.token = token.encode() if token else None
        self.public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        headers = Headers(scope=scope)
        rejection = self._reject(scope, headers)
        if rejection is None:
            await self.app(scope, receive, send)
            return

        status, error, description = rejection
        extra: list[tuple[bytes, bytes]] = []
        if status == 401:
            value = f'Bearer realm="mlhub", error="{error}", error_description="{description}"'
            extra.append((b"www-authenticate", value.encode()))

        body = json.dumps({"error": error, "error_description": description}).encode()
        await _send_json(send, status, body, extra)

    def _reject(self, scope: Scope, headers: Headers) -> tuple[int, str, str] | None:
        path = scope.get("path", "")
        client = client_address(scope)
        if self.security.enable_dns_rebinding_protection:
            host = headers.get("host", "")
            if not _matches(host, self.security.allowed_hosts):
                logger.warning(
                    "rejected a request for %s from %s: Host %r is not allowed", path, client, host
                )
                return (
                    421,
                    "invalid_host",
                    "the Host header names a host this server does not serve",
                )

            origin = headers.get("origin")
            if origin and not _matches(origin, self.security.allowed_origins):
                logger.warning(
                    "rejected a request for %s from %s: Origin %r is not allowed",
                    path,
                    client,
                    origin,
                )
                return 403, "invalid_origin", "requests from this Origin are not allowed"

        if self.token is None or path in self.public_paths:
            return None

        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials:
            logger.warning("rejected a request for %s from %s: missing bearer token", path, client)
            return 401, "invalid_token", "missing bearer token"
        if not hmac.compare_digest(credentials.strip().encode(), self.token):
            logger.warning("rejected a request for %s from %s: wrong bearer token", path, client)
            return 401, "invalid_token", "wrong bearer token"

        return None


RejectionHook = Callable[[Scope, types.RequestId, types.ErrorData], Awaitable[None]]


class JsonRpcBodyLimit:
    """ASGI middleware that rejects a POST body over ``limit`` bytes with 413 and a JSON-RPC error.

    The error has code -32600 (invalid request), the request's id when the
    start of the body shows it (else null), and a message naming the limit and
    its setting. ``on_reject`` runs after the 413 for a request whose id was
    read, so that a transport can also deliver the error elsewhere (the SSE
    stream). Bodies within the limit are read whole and passed on unchanged.
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        hint: str = "",
        on_reject: RejectionHook | None = None,
    ) -> None:
        self.app = app
        self.limit = limit
        self.hint = hint
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return

        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            prefix = await _read_prefix(receive)
            await self._reject(scope, send, prefix)
            return

        messages: deque[Message] = deque()
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break

            size += len(message.get("body", b""))
            if size > self.limit:
                await self._reject(scope, send, _body_prefix(messages))
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            if messages:
                return messages.popleft()
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, send: Send, prefix: bytes) -> None:
        path = scope.get("path", "")
        logger.warning(
            "rejected a request for %s from %s: the body is larger than "
            "max_request_body_bytes = %d",
            path,
            client_address(scope),
            self.limit,
        )
        message = (
            f"The request body is larger than the limit of {self.limit} bytes "
            "(max_request_body_bytes in [http] of hub_config.toml). Raise that limit "
            "or send less data."
        )
        if self.hint:
            message = f"{message} {self.hint}"

        error = types.ErrorData(
            code=types.INVALID_REQUEST,
            message=message,
            data={"max_request_body_bytes": self.limit},
        )
        request_id = read_request_id(prefix)
        reply = {
            "jsonrpc": "2.0",
            "id": request_id,
            "error": error.model_dump(mode="json", exclude_none=True),
        }
        await _send_json(send, 413, json.dumps(reply).encode())

        if self.on_reject is not None and request_id is not None:
            await self.on_reject(scope, request_id, error)


def read_request_id(prefix: bytes) -> types.RequestId | None:
    """Read the top-level ``id`` of a JSON-RPC request from the start of its body.

    Members are read in order until ``id``. Return None when the body is not a
    JSON object, when a member before ``id`` is cut off by the end of
    ``prefix``, or when the id is not a string or an integer.
    """
    text = prefix.decode("utf-8", errors="ignore")
    decoder = json.JSONDecoder()
    position = _skip_whitespace(text, 0)
    if not text.startswith("{", position):
        return None

    position += 1
    try:
        while True:
            key, position = decoder.raw_decode(text, _skip_whitespace(text, position))
            position = _skip_whitespace(text, position)
            if not text.startswith(":", position):
                return None

            value, position = decoder.raw_decode(text, _skip_whitespace(text, position + 1))
            position = _skip_whitespace(text, position)
            # The value must end inside the prefix: "id":12 could be the start of 123.
            if not text.startswith((",", "}"), position):
                return None
            if key == "id":
                return _as_request_id(value)
            if text.startswith("}", position):
                return None

            position += 1
    except ValueError:
        return None


def _skip_whitespace(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _as_request_id(value: object) -> types.RequestId | None:
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    return None


def client_address(scope: Scope) -> str:
    """Return ``host:port`` of the client of an HTTP request, or ``unknown``."""
    client = scope.get("client")
    if not client:
        return "unknown"

    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _read_prefix(receive: Receive) -> bytes:
    prefix = b""
    with anyio.move_on_after(_ID_PREFIX_WAIT_SECONDS):
        while len(prefix) < _ID_PREFIX_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                break

            prefix += message.get("body", b"")
            if not message.get("more_body", False):
                break

    return prefix[:_ID_PREFIX_BYTES]


def _body_prefix(messages: Iterable[Message]) -> bytes:
    prefix = b""
    for message in messages:
        if len(prefix) >= _ID_PREFIX_BYTES:
            break
        prefix += message.get("body", b"")

    return prefix[:_ID_PREFIX_BYTES]


async def _send_json(
    send: Send, status: int, body: bytes, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(extra_headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
