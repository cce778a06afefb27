"""Artifact store on the local disk.

Objects live under ``<root>/sha256/<first two hex digits>/<digest>``. A write
goes to a temporary file in ``<root>/tmp`` and is renamed into place only once
complete, so a reader never sees half a file.
"""

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import anyio.to_thread

from mlhub_mcp.artifacts._base import (
    CHUNK_SIZE,
    ArtifactStore,
    StoredObject,
    check_key,
    iter_chunks,
    key_for,
)
from mlhub_mcp.errors import BackendUnavailable, NotFound

_DIGEST = re.compile(r"[0-9a-f]{64}")


class LocalArtifactStore(ArtifactStore):
    """Content-addressed files in a local directory."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._tmp = self.root / "tmp"
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
            self._remove_stale_parts()
        except OSError as exc:
            message = f"cannot create the artifact directory {str(root)!r}: {exc}"
            raise BackendUnavailable(message) from exc

    def _remove_stale_parts(self) -> None:
        from mlhub_mcp.platform import process_alive

        for part in self._tmp.glob("*-*.part"):
            pid = part.name.split("-", 1)[0]
            if pid.isdigit() and not process_alive(int(pid)):
                part.unlink(missing_ok=True)

    def _path(self, key: str) -> Path:
        digest = check_key(key).split("/", 1)[1]
        return self.root / "sha256" / digest[:2] / digest

    def _copy_in(self, source: Path) -> StoredObject:
        digest = hashlib.sha256()
        size = 0
        # The pid in the name lets a later process remove the file if this one dies.
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix=f"{os.getpid()}-", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with source.open("rb") as reader, os.fdopen(fd, "wb") as writer:
                for chunk in iter_chunks(reader, CHUNK_SIZE):
                    digest.update(chunk)
                    writer.write(chunk)
                    size += len(chunk)
                writer.flush()
                os.fsync(writer.fileno())

            sha = digest.hexdigest()
            target = self._path(key_for(sha))
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
            return StoredObject(key=key_for(sha), sha256=sha, size=size)
        finally:
            tmp.unlink(missing_ok=True)

    async def put_file(self, path: Path) -> StoredObject:
        return await anyio.to_thread.run_sync(self._copy_in, path)

    async def fetch(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise NotFound("artifact", key)
        return path

    async def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    async def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    async def list_keys(self) -> list[str]:
        def walk() -> list[str]:
            base = self.root / "sha256"
            if not base.is_dir():
                return []
            # Files whose names are not digests were not written by the store.
            return sorted(
                key_for(p.name)
                for p in base.glob("??/*")
                if p.is_file() and _DIGEST.fullmatch(p.name) and p.name[:2] == p.parent.name
            )

        return await anyio.to_thread.run_sync(walk)

    async def url(self, key: str) -> str:
        return self._path(key).as_uri()

    async def ping(self) -> str:
        usage = shutil.disk_usage(self.root)
        return f"local directory {self.root} ({usage.free // 2**30} GiB free)"

    def spark_path(self, key: str) -> str:
        return str(self._path(key))
