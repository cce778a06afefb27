"""Cleanup of what a stopped process left, and scrubbing of tool errors."""

import os
from pathlib import Path

import anyio
import numpy as np
import pytest
from mcp import Client, MCPError

from mlhub_mcp.artifacts.local import LocalArtifactStore
from mlhub_mcp.config import Settings
from mlhub_mcp.datasets.server import create_data_server
from mlhub_mcp.models.server import create_model_server
from mlhub_mcp.platform import open_platform, remove_stale_scratch

pytestmark = pytest.mark.anyio


async def _dead_pid() -> int:
    process = await anyio.open_process(["true"])
    await process.wait()
    return process.pid


async def test_scratch_of_dead_process_is_removed(settings: Settings) -> None:
    dead = settings.home / "tmp" / str(await _dead_pid())
    alive = settings.home / "tmp" / str(os.getpid())
    for folder in (dead, alive):
        folder.mkdir(parents=True)
        (folder / "half.parquet").write_bytes(b"x" * 100)

    removed = remove_stale_scratch(settings.home)

    assert removed == [dead]
    assert not dead.exists()
    assert (alive / "half.parquet").exists()


async def test_open_platform_removes_stale_scratch(settings: Settings) -> None:
    dead = settings.home / "tmp" / str(await _dead_pid())
    dead.mkdir(parents=True)
    (dead / "left.csv").write_text("a\n1\n")

    async with open_platform(settings) as platform:
        scratch = platform.scratch_dir

    assert not dead.exists()
    assert scratch.name == str(os.getpid())


async def test_partial_object_of_dead_process_is_removed(tmp_path: Path) -> None:
    parts = tmp_path / "store" / "tmp"
    parts.mkdir(parents=True)
    stale = parts / f"{await _dead_pid()}-abc.part"
    mine = parts / f"{os.getpid()}-abc.part"
    stale.write_bytes(b"x")
    mine.write_bytes(b"x")

    LocalArtifactStore(tmp_path / "store")

    assert not stale.exists()
    assert mine.exists()


async def test_stray_file_is_not_listed(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    stray = tmp_path / "store" / "sha256" / "zz" / "zzjunk"
    stray.parent.mkdir(parents=True)
    stray.write_text("not an object")

    assert await store.list_keys() == []


async def test_password_in_a_path_is_masked(settings: Settings) -> None:
    async with Client(create_model_server(settings)) as client:
        result = await client.call_tool(
            "register_model", {"name": "m", "path": "http://admin:Sup3rPassw0rd@127.0.0.1:9/x.onnx"}
        )

    text = result.content[0].text
    assert result.is_error
    assert "Sup3rPassw0rd" not in text
    assert "admin:***@127.0.0.1" in text


async def test_image_preview_resource_is_invalid_params(settings: Settings, imports: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(
        imports / "images.npz",
        x=rng.integers(0, 255, size=(6, 8, 8, 3), dtype=np.uint8),
        y=np.array([0, 1, 0, 1, 0, 1]),
    )
    async with Client(create_data_server(settings)) as client:
        registered = await client.call_tool(
            "register_dataset", {"name": "imgs", "path": "images.npz"}
        )
        with pytest.raises(MCPError) as error:
            await client.read_resource("datasets://imgs/preview")

    assert not registered.is_error, registered.content[0].text
    assert error.value.code == -32602
    assert "preview_images" in error.value.message
