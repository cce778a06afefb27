"""The local-disk artifact store."""

import hashlib
from pathlib import Path

import pytest

from mlhub_mcp.artifacts.local import LocalArtifactStore
from mlhub_mcp.errors import InvalidInput, NotFound

pytestmark = pytest.mark.anyio


async def test_put_file_is_content_addressed(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    source = tmp_path / "data.bin"
    source.write_bytes(b"hello" * 1000)

    first = await store.put_file(source)
    second = await store.put_file(source)

    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert first == second
    assert first.key == f"sha256/{digest}"
    assert (await store.fetch(first.key)).read_bytes() == source.read_bytes()
    assert await store.list_keys() == [first.key]
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    "key", ["../../etc/passwd", "sha256/../../x", "sha256/" + "g" * 64, "sha256/abc", ""]
)
async def test_hostile_keys_are_rejected(tmp_path: Path, key: str) -> None:
    store = LocalArtifactStore(tmp_path / "store")

    with pytest.raises(InvalidInput):
        await store.fetch(key)
    with pytest.raises(InvalidInput):
        await store.delete(key)


async def test_failed_copy_leaves_no_partial_file(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")

    with pytest.raises(FileNotFoundError):
        await store.put_file(tmp_path / "missing.bin")

    assert list((tmp_path / "store" / "tmp").iterdir()) == []
    assert await store.list_keys() == []


async def test_missing_object_is_not_found(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")

    with pytest.raises(NotFound):
        await store.fetch("sha256/" + "0" * 64)
    assert await store.delete("sha256/" + "0" * 64) is False
