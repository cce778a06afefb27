"""The orphan sweep on the embedded catalog and the local artifact store."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mlhub_mcp.config import Settings
from mlhub_mcp.platform import Platform, open_platform
from mlhub_mcp.sweep import sweep_orphans

pytestmark = pytest.mark.anyio


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    settings = Settings(home=tmp_path / "home", import_dirs=[tmp_path])
    async with open_platform(settings) as opened:
        yield opened


async def store_bytes(platform: Platform, data: bytes) -> str:
    stored = await platform.artifacts.put_bytes(data, platform.scratch_dir)
    return stored.key


async def test_sweep_lists_orphans_without_removing(platform: Platform) -> None:
    referenced = await store_bytes(platform, b"model bytes")
    orphan = await store_bytes(platform, b"left behind")
    await platform.catalog.insert(
        "models", {"id": "m1", "name": "iris", "version": 1, "artifact_key": referenced}
    )

    found = await sweep_orphans(platform, remove=False)

    assert found == [orphan]
    assert await platform.artifacts.exists(orphan)
    assert await platform.artifacts.exists(referenced)


async def test_sweep_removes_orphans_and_keeps_referenced(platform: Platform) -> None:
    model_key = await store_bytes(platform, b"model bytes")
    plot_key = await store_bytes(platform, b"png bytes")
    orphan = await store_bytes(platform, b"left behind")
    await platform.catalog.insert(
        "models", {"id": "m1", "name": "iris", "version": 1, "artifact_key": model_key}
    )
    await platform.catalog.insert("executions", {"id": "e1", "plot_key": plot_key})

    removed = await sweep_orphans(platform, remove=True)

    assert removed == [orphan]
    assert not await platform.artifacts.exists(orphan)
    assert await platform.artifacts.exists(model_key)
    assert await platform.artifacts.exists(plot_key)
    assert await sweep_orphans(platform, remove=False) == []


async def test_sweep_of_empty_store(platform: Platform) -> None:
    assert await sweep_orphans(platform, remove=True) == []
