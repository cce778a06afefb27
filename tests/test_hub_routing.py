"""Routing of names and URIs in the hub, with in-process downstream servers."""

import mcp.types as types
import pytest

from mlhub_mcp.config import ServerSettings, Settings
from mlhub_mcp.errors import ConfigurationError
from mlhub_mcp.hub._downstream import Downstream, ServerState
from mlhub_mcp.hub._routing import RoutingTable, template_pattern


def _ready(settings: Settings, name: str, prefix: str, tools: list[str]) -> Downstream:
    server = Downstream(ServerSettings(name=name, prefix=prefix), settings)
    server.state = ServerState.READY
    server.tools = [types.Tool(name=t, input_schema={"type": "object"}) for t in tools]
    return server


def test_collision_names_both_servers(settings: Settings) -> None:
    first = _ready(settings, "model", "", ["list_items"])
    second = _ready(settings, "data", "", ["list_items"])

    with pytest.raises(ConfigurationError) as error:
        RoutingTable.build([first, second], reserved=set())

    assert "'model' and 'data'" in str(error.value)
    assert "prefix" in str(error.value)


def test_prefix_resolves_a_collision(settings: Settings) -> None:
    first = _ready(settings, "model", "m_", ["list_items"])
    second = _ready(settings, "data", "d_", ["list_items"])

    table = RoutingTable.build([first, second], reserved=set())

    assert set(table.tools) == {"m_list_items", "d_list_items"}
    assert table.tools["d_list_items"][1].name == "list_items"


def test_reserved_hub_names_cannot_be_shadowed(settings: Settings) -> None:
    server = _ready(settings, "model", "", ["hub_status"])

    with pytest.raises(ConfigurationError):
        RoutingTable.build([server], reserved={"hub_status"})


def test_failed_servers_are_left_out(settings: Settings) -> None:
    server = _ready(settings, "model", "", ["a"])
    server.state = ServerState.FAILED

    assert RoutingTable.build([server], reserved=set()).tools == {}


@pytest.mark.parametrize(
    ("template", "uri", "matches"),
    [
        ("models://{name}", "models://digits", True),
        ("models://{name}", "models://digits/card", False),
        ("models://{name}/card", "models://digits/card", True),
        ("models://{name}/versions/{version}", "models://a/versions/2", True),
        ("models://{name}/card", "datasets://digits/card", False),
    ],
)
def test_template_pattern(template: str, uri: str, matches: bool) -> None:
    assert bool(template_pattern(template).match(uri)) is matches


@pytest.mark.anyio
async def test_tool_of_restarting_server_is_named(settings: Settings) -> None:
    from mlhub_mcp.hub._hub import Hub

    server = _ready(settings, "execution", "", ["get_execution"])
    server.state = ServerState.STARTING
    hub = Hub(settings=settings, downstreams=[server])
    hub.rebuild_routes()

    result = await hub.call("get_execution", {"execution_id": "x"})
    other = await hub.call("no_such_tool", {})

    text = result.content[0].text
    assert result.is_error
    assert "belongs to server 'execution', which is starting" in text
    assert "servers not ready: ['execution']" in other.content[0].text
