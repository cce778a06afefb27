"""The artifact store interface: content-addressed files.

An object's key is ``sha256/<hex digest>``, computed while the file streams in,
so a caller never chooses a key and a hostile file name never reaches a path.
"""

import abc
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mlhub_mcp.errors import InvalidInput

CHUNK_SIZE = 1024 * 1024
_KEY = re.compile(r"^sha256/[0-9a-f]{64}$")


@dataclass(frozen=True)
class StoredObject:
    """An object written to the store."""

    key: str
    sha256: str
    size: int


def key_for(sha256: str) -> str:
    return f"sha256/{sha256}"


def check_key(key: str) -> str:
    """Return ``key`` if it has the form ``sha256/<64 hex digits>``.

    Raises:
        InvalidInput: The key has any other form.
    """
    if not isinstance(key, str) or not _KEY.match(key):
        raise InvalidInput(f"invalid artifact key {key!r}: expected 'sha256/<64 hex digits>'")

    return key


def iter_chunks(handle: BinaryIO, size: int = CHUNK_SIZE) -> Iterator[bytes]:
    while chunk := handle.read(size):
        yield chunk


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter_chunks(handle):
            digest.update(chunk)

    return digest.hexdigest()


class ArtifactStore(abc.ABC):
    """Storage of model files, datasets and results."""

    @abc.abstractmethod
    async def put_file(self, path: Path) -> StoredObject:
        """Copy a local file into the store, streaming it, and return its object."""

    @abc.abstractmethod
    async def fetch(self, key: str) -> Path:
        """Return a local path from which the object can be read.

        Raises:
            NotFound: No object has this key.
        """

    @abc.abstractmethod
    async def exists(self, key: str) -> bool:
        """Return whether an object has this key."""

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Delete an object; return whether it existed."""

    @abc.abstractmethod
    async def list_keys(self) -> list[str]:
        """Return the keys of every object."""

    @abc.abstractmethod
    async def url(self, key: str) -> str:
        """Return an address from which the object can be downloaded."""

    @abc.abstractmethod
    async def ping(self) -> str:
        """Check the backend and return a short description of it.

        Raises:
            BackendUnavailable: The backend cannot be reached or rejects the credentials.
        """

    @abc.abstractmethod
    def spark_path(self, key: str) -> str:
        """Return the path under which Spark reads the object."""

    async def put_bytes(self, data: bytes, scratch_dir: Path) -> StoredObject:
        """Store ``data`` through a temporary file in ``scratch_dir``."""
        import tempfile

        import anyio.to_thread

        scratch_dir.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(dir=scratch_dir, delete=False, suffix=".part")
        path = Path(handle.name)
        try:
            await anyio.to_thread.run_sync(handle.write, data)
            handle.close()
            return await self.put_file(path)
        finally:
            handle.close()
            path.unlink(missing_ok=True)

    async def aclose(self) -> None:
        """Release connections."""
