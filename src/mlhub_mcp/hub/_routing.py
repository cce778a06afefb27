"""Name and URI routing from the hub to its downstream servers."""

import re
from dataclasses import dataclass, field

import mcp.types as types

from mlhub_mcp.errors import ConfigurationError
from mlhub_mcp.hub._downstream import Downstream, ServerState


def template_pattern(uri_template: str) -> re.Pattern[str]:
    """Compile a URI template with simple ``{name}`` variables to a regex."""
    parts = re.split(r"(\{[^}]+\})", uri_template)
    regex = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{regex}$")


@dataclass
class RoutingTable:
    """Public names of tools and prompts, and URI patterns, mapped to servers."""

    tools: dict[str, tuple[Downstream, types.Tool]] = field(default_factory=dict)
    prompts: dict[str, tuple[Downstream, types.Prompt]] = field(default_factory=dict)
    resources: dict[str, Downstream] = field(default_factory=dict)
    templates: list[tuple[re.Pattern[str], Downstream, types.ResourceTemplate]] = field(
        default_factory=list
    )
    # Servers left out because of a name clash, with the reason.
    conflicts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls, downstreams: list[Downstream], reserved: set[str], *, strict: bool = True
    ) -> "RoutingTable":
        """Index the ready servers' listings.

        A server that exposes a public name or URI template already taken by
        the hub or an earlier server is a conflict. With ``strict`` it raises.
        Otherwise the server is left out whole and the reason kept in
        ``conflicts`` under its name, so one misconfigured prefix does not
        hide the other servers of a running hub.

        Raises:
            ConfigurationError: With ``strict``, two servers expose the same
                public name or URI template.
        """
        table = cls()
        owners: dict[str, str] = dict.fromkeys(reserved, "hub")
        template_owners: dict[str, str] = {}

        for server in downstreams:
            if server.state is not ServerState.READY:
                continue

            server_owners = dict(owners)
            server_template_owners = dict(template_owners)
            try:
                _claim_all(server, server_owners, server_template_owners)
            except ConfigurationError as exc:
                if strict:
                    raise
                table.conflicts[server.name] = str(exc)
                continue

            owners, template_owners = server_owners, server_template_owners
            _add_routes(table, server)

        return table

    def server_for_uri(self, uri: str) -> Downstream | None:
        if uri in self.resources:
            return self.resources[uri]
        for pattern, server, _ in self.templates:
            if pattern.match(uri):
                return server
        return None


def _claim_all(server: Downstream, owners: dict[str, str], template_owners: dict[str, str]) -> None:
    for tool in server.tools:
        _claim(owners, f"{server.prefix}{tool.name}", server.name, "tool")

    for prompt in server.prompts:
        _claim(owners, f"prompt:{server.prefix}{prompt.name}", server.name, "prompt")

    for resource in server.resources:
        _claim(template_owners, str(resource.uri), server.name, "resource")

    for template in server.templates:
        _claim(template_owners, template.uri_template, server.name, "resource template")


def _add_routes(table: RoutingTable, server: Downstream) -> None:
    for tool in server.tools:
        table.tools[f"{server.prefix}{tool.name}"] = (server, tool)

    for prompt in server.prompts:
        table.prompts[f"{server.prefix}{prompt.name}"] = (server, prompt)

    for resource in server.resources:
        table.resources[str(resource.uri)] = server

    for template in server.templates:
        table.templates.append((template_pattern(template.uri_template), server, template))


def _claim(owners: dict[str, str], name: str, server: str, kind: str) -> None:
    if name in owners:
        shown = name.removeprefix("prompt:")
        raise ConfigurationError(
            f"{kind} name {shown!r} is exposed by both {owners[name]!r} and {server!r}; "
            f"set a distinct 'prefix' for one of them in [servers.{server}] of hub_config.toml"
        )
    owners[name] = server
