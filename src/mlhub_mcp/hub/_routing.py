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

    @classmethod
    def build(cls, downstreams: list[Downstream], reserved: set[str]) -> "RoutingTable":
        """Index the ready servers' listings.

        Raises:
            ConfigurationError: Two servers expose the same public name or URI template.
        """
        table = cls()
        owners: dict[str, str] = dict.fromkeys(reserved, "hub")
        template_owners: dict[str, str] = {}

        for server in downstreams:
            if server.state is not ServerState.READY:
                continue

            for tool in server.tools:
                public = f"{server.prefix}{tool.name}"
                _claim(owners, public, server.name, "tool")
                table.tools[public] = (server, tool)

            for prompt in server.prompts:
                public = f"{server.prefix}{prompt.name}"
                _claim(owners, f"prompt:{public}", server.name, "prompt")
                table.prompts[public] = (server, prompt)

            for resource in server.resources:
                uri = str(resource.uri)
                _claim(template_owners, uri, server.name, "resource")
                table.resources[uri] = server

            for template in server.templates:
                _claim(template_owners, template.uri_template, server.name, "resource template")
                table.templates.append((template_pattern(template.uri_template), server, template))

        return table

    def server_for_uri(self, uri: str) -> Downstream | None:
        if uri in self.resources:
            return self.resources[uri]
        for pattern, server, _ in self.templates:
            if pattern.match(uri):
                return server
        return None


def _claim(owners: dict[str, str], name: str, server: str, kind: str) -> None:
    if name in owners:
        shown = name.removeprefix("prompt:")
        raise ConfigurationError(
            f"{kind} name {shown!r} is exposed by both {owners[name]!r} and {server!r}; "
            f"set a distinct 'prefix' for one of them in [servers.{server}] of hub_config.toml"
        )
    owners[name] = server
