"""Nothing is left half-written when the catalog fails during a registration."""

from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from mlhub_mcp.catalog.embedded import EmbeddedCatalog
from mlhub_mcp.config import Settings
from mlhub_mcp.datasets._registry import DatasetRegistry
from mlhub_mcp.errors import BackendUnavailable
from mlhub_mcp.models._registry import ModelRegistry
from mlhub_mcp.models.server import create_model_server
from mlhub_mcp.platform import open_platform

pytestmark = pytest.mark.anyio


class FailingInserts(EmbeddedCatalog):
    """An embedded catalog whose inserts fail, as when the database goes away."""

    async def insert(self, collection: str, doc: dict[str, Any]) -> dict[str, Any]:
        raise BackendUnavailable("catalog at 127.0.0.1:1 is unreachable")


@pytest.mark.parametrize("kind", ["model", "dataset"])
async def test_failed_catalog_write_removes_the_file(
    settings: Settings, staged_digits: dict[str, Path], kind: str
) -> None:
    async with open_platform(settings) as platform:
        platform.catalog = FailingInserts(settings.catalog_path)
        with pytest.raises(BackendUnavailable):
            if kind == "model":
                await ModelRegistry(platform).register_file(name="m", path="digits.onnx")
            else:
                await DatasetRegistry(platform).register(name="d", path="digits_test.csv")

        keys = await platform.artifacts.list_keys()

    assert keys == []


async def test_sweep_tool_lists_and_removes_orphans(
    settings: Settings, staged_digits: dict[str, Path]
) -> None:
    async with open_platform(settings) as platform:
        orphan = await platform.artifacts.put_file(staged_digits["csv"])

    async with Client(create_model_server(settings)) as client:
        await client.call_tool("register_model", {"name": "kept", "path": "digits.onnx"})
        listed = await client.call_tool("sweep_artifacts", {})
        removed = await client.call_tool("sweep_artifacts", {"remove": True})
        after = await client.call_tool("sweep_artifacts", {})
        model = await client.call_tool("get_model", {"name": "kept"})

    assert listed.structured_content["keys"] == [orphan.key]
    assert removed.structured_content == {"removed": True, "keys": [orphan.key]}
    assert after.structured_content["keys"] == []
    assert not model.is_error
