"""Security of the HTTP transports, shared by the hub and the servers.

Every request passes `HttpGuard` before it reaches a route:

1. DNS-rebinding protection: the Host header must name an allowed host
   (421 otherwise) and a browser's Origin header an allowed origin (403).
2. Bearer token: when a token is configured, every path except the public
   ones (``/health``) requires ``Authorization: Bearer <token>`` (401).

The MCP transports of the SDK check Host and Origin again and cap request
bodies themselves. The guard extends the same rules to the other routes.
"""

import hmac
import ipaddress
import json
import logging
import os
from collections.abc import Iterable

from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from mlhub_mcp.config import HttpSettings
from mlhub_mcp.errors import ConfigurationError
from mlhub_mcp.scrub import register_secret

logger = logging.getLogger(__name__)

HUB_TOKEN_ENV = "MLHUB_HUB_TOKEN"
SERVER_TOKEN_ENV = "MLHUB_SERVER_TOKEN"
PUBLIC_PATHS = frozenset({"/health"})

_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


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
        rejection = self._reject(headers, scope.get("path", ""))
        if rejection is None:
            await self.app(scope, receive, send)
            return

        status, error, description = rejection
        extra: list[tuple[bytes, bytes]] = []
        if status == 401:
            value = f'Bearer realm="mlhub", error="{error}", error_description="{description}"'
            extra.append((b"www-authenticate", value.encode()))

        body = json.dumps({"error": error, "error_description": description}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _reject(self, headers: Headers, path: str) -> tuple[int, str, str] | None:
        if self.security.enable_dns_rebinding_protection:
            host = headers.get("host", "")
            if not _matches(host, self.security.allowed_hosts):
                logger.warning("rejected a request for %s: Host %r is not allowed", path, host)
                return (
                    421,
                    "invalid_host",
                    "the Host header names a host this server does not serve",
                )

            origin = headers.get("origin")
            if origin and not _matches(origin, self.security.allowed_origins):
                logger.warning("rejected a request for %s: Origin %r is not allowed", path, origin)
                return 403, "invalid_origin", "requests from this Origin are not allowed"

        if self.token is None or path in self.public_paths:
            return None

        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials:
            return 401, "invalid_token", "missing bearer token"
        if not hmac.compare_digest(credentials.strip().encode(), self.token):
            logger.warning("rejected a request for %s: wrong bearer token", path)
            return 401, "invalid_token", "wrong bearer token"

        return None
