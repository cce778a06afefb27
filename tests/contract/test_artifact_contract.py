"""The artifact store contract, run against every artifact backend."""

import hashlib
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path

import anyio.to_thread
import pytest

from mlhub_mcp.artifacts import ArtifactStore, sha256_file
from mlhub_mcp.config import Settings
from mlhub_mcp.errors import BackendUnavailable, InvalidInput, NotFound

pytestmark = pytest.mark.anyio

LARGE_SIZE = 12 * 1024 * 1024
MISSING_KEY = "sha256/" + "0" * 64


def write_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


async def test_put_then_fetch_round_trip(artifact_store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    source = write_file(tmp_path / "model.onnx", data)

    stored = await artifact_store.put_file(source)
    fetched = await artifact_store.fetch(stored.key)

    digest = hashlib.sha256(data).hexdigest()
    assert stored.key == f"sha256/{digest}"
    assert stored.sha256 == digest
    assert stored.size == len(data)
    assert fetched.read_bytes() == data
    assert sha256_file(fetched) == digest


async def test_large_file_round_trip(artifact_store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(LARGE_SIZE)
    source = write_file(tmp_path / "large.bin", data)

    stored = await artifact_store.put_file(source)
    fetched = await artifact_store.fetch(stored.key)

    assert stored.size == LARGE_SIZE
    assert fetched.stat().st_size == LARGE_SIZE
    assert sha256_file(fetched) == stored.sha256


async def test_same_content_gives_same_key(artifact_store: ArtifactStore, tmp_path: Path) -> None:
    first = write_file(tmp_path / "a.csv", b"x,y\n1,2\n")
    second = write_file(tmp_path / "b.csv", b"x,y\n1,2\n")
    other = write_file(tmp_path / "c.csv", b"x,y\n3,4\n")

    stored_first = await artifact_store.put_file(first)
    stored_second = await artifact_store.put_file(second)
    stored_other = await artifact_store.put_file(other)

    assert stored_first == stored_second
    assert stored_other.key != stored_first.key
    assert await artifact_store.list_keys() == sorted([stored_first.key, stored_other.key])


async def test_put_bytes_stores_content(artifact_store: ArtifactStore, tmp_path: Path) -> None:
    stored = await artifact_store.put_bytes(b"predictions", tmp_path / "scratch")

    fetched = await artifact_store.fetch(stored.key)

    assert fetched.read_bytes() == b"predictions"
    assert list((tmp_path / "scratch").iterdir()) == []


async def test_exists_and_delete(artifact_store: ArtifactStore, tmp_path: Path) -> None:
    stored = await artifact_store.put_file(write_file(tmp_path / "f.bin", b"payload"))

    assert await artifact_store.exists(stored.key) is True
    assert await artifact_store.delete(stored.key) is True
    assert await artifact_store.exists(stored.key) is False
    assert await artifact_store.delete(stored.key) is False
    assert await artifact_store.list_keys() == []


async def test_fetch_after_delete_is_not_found(
    artifact_store: ArtifactStore, tmp_path: Path
) -> None:
    stored = await artifact_store.put_file(write_file(tmp_path / "f.bin", b"payload"))
    await artifact_store.fetch(stored.key)
    await artifact_store.delete(stored.key)

    with pytest.raises(NotFound):
        await artifact_store.fetch(stored.key)


async def test_fetch_missing_key_is_not_found(artifact_store: ArtifactStore) -> None:
    with pytest.raises(NotFound):
        await artifact_store.fetch(MISSING_KEY)


async def test_list_keys_of_empty_store(artifact_store: ArtifactStore) -> None:
    assert await artifact_store.list_keys() == []


async def test_url_serves_the_content(artifact_store: ArtifactStore, tmp_path: Path) -> None:
    data = b"plot bytes"
    stored = await artifact_store.put_file(write_file(tmp_path / "plot.png", data))

    url = await artifact_store.url(stored.key)

    def download() -> bytes:
        # The URL is file:// for the local store and a presigned http:// URL
        # to 127.0.0.1 for S3.
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read()

    assert await anyio.to_thread.run_sync(download) == data


@pytest.mark.parametrize(
    "key",
    ["sha256/../../etc/passwd", "sha256/ABC", "md5/" + "0" * 64, "sha256/" + "0" * 63, ""],
)
async def test_invalid_key_rejected(artifact_store: ArtifactStore, key: str) -> None:
    with pytest.raises(InvalidInput):
        await artifact_store.fetch(key)

    with pytest.raises(InvalidInput):
        await artifact_store.exists(key)

    with pytest.raises(InvalidInput):
        await artifact_store.delete(key)

    with pytest.raises(InvalidInput):
        await artifact_store.url(key)

    with pytest.raises(InvalidInput):
        artifact_store.spark_path(key)


async def test_spark_path_names_the_object(artifact_store: ArtifactStore, tmp_path: Path) -> None:
    stored = await artifact_store.put_file(write_file(tmp_path / "d.csv", b"a\n1\n"))

    path = artifact_store.spark_path(stored.key)

    assert path.endswith(stored.sha256)


async def test_ping_describes_backend(artifact_store: ArtifactStore) -> None:
    description = await artifact_store.ping()

    assert "local directory" in description or "S3 at" in description


async def test_s3_large_file_is_multipart(s3_store: ArtifactStore, tmp_path: Path) -> None:
    from mlhub_mcp.artifacts.s3 import S3ArtifactStore

    assert isinstance(s3_store, S3ArtifactStore)
    source = write_file(tmp_path / "large.bin", os.urandom(LARGE_SIZE))
    stored = await s3_store.put_file(source)

    stat = await s3_store._call(s3_store._client.stat_object, s3_store.bucket, stored.key)

    # A multipart upload's ETag ends in '-<number of parts>': 12 MB in 8 MiB parts.
    assert stat.etag is not None
    assert stat.etag.endswith("-2")
    assert stat.metadata["x-amz-meta-sha256"] == stored.sha256
    assert s3_store.spark_path(stored.key) == f"s3a://{s3_store.bucket}/{stored.key}"


async def test_s3_wrong_secret_key_rejected(
    make_s3_settings: Callable[[Path], Settings], tmp_path: Path
) -> None:
    from mlhub_mcp.artifacts.s3 import S3ArtifactStore

    settings = make_s3_settings(tmp_path)
    right_secret = settings.s3_secret_key
    wrong_secret = "wrong-" + right_secret[::-1]
    settings.s3_secret_key = wrong_secret

    with pytest.raises(BackendUnavailable) as caught:
        await S3ArtifactStore.connect(settings)

    message = str(caught.value)
    assert "rejected the credentials" in message
    assert "MINIO_ROOT_USER/MINIO_ROOT_PASSWORD" in message
    assert settings.s3_endpoint in message
    assert wrong_secret not in message
    assert right_secret not in message


async def test_s3_fetch_uses_the_cache(s3_store: ArtifactStore, tmp_path: Path) -> None:
    stored = await s3_store.put_file(write_file(tmp_path / "f.bin", b"cached"))

    first = await s3_store.fetch(stored.key)
    second = await s3_store.fetch(stored.key)

    assert first == second
    assert first.is_relative_to(tmp_path / "home" / "cache")
    assert [p.name for p in first.parent.iterdir()] == [stored.sha256]
