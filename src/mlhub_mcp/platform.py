"""The storage shared by every server: settings, catalog and artifact store."""

import base64
import binascii
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from mlhub_mcp.artifacts import ArtifactStore, open_artifact_store
from mlhub_mcp.catalog import Catalog, open_catalog
from mlhub_mcp.config import Settings, load_settings
from mlhub_mcp.errors import InvalidInput
from mlhub_mcp.paths import check_file_name, resolve_import_path

logger = logging.getLogger(__name__)

# Translation table that deletes the ASCII whitespace base64 encoders put
# between lines (the GNU `base64` command wraps at 76 columns by default).
# Other invalid characters are still rejected by the decoder.
_STRIP_WHITESPACE = str.maketrans("", "", " \t\n\r\f\v")

# Catalog fields that hold artifact keys, per collection.
ARTIFACT_FIELDS = {
    "models": ("artifact_key",),
    "datasets": ("artifact_key",),
    "executions": ("predictions_key", "plot_key"),
}


@dataclass
class Platform:
    """Handles to the storage, opened once per server process."""

    settings: Settings
    catalog: Catalog
    artifacts: ArtifactStore

    @property
    def scratch_dir(self) -> Path:
        """Return this process's folder for temporary files.

        The folder is named after the process id, so a later process can
        remove what a process that died left behind (see `remove_stale_scratch`).
        """
        path = self.settings.home / "tmp" / str(os.getpid())
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def is_referenced(self, key: str) -> bool:
        """Return whether any catalog entry refers to the artifact ``key``."""
        for collection, fields in ARTIFACT_FIELDS.items():
            for field_name in fields:
                if await self.catalog.count(collection, {field_name: key}):
                    return True

        return False

    async def release_artifact(self, key: str | None) -> None:
        """Delete the artifact ``key`` unless another catalog entry still refers to it.

        Objects are content-addressed, so two entries with identical files share one.
        """
        if not key or await self.is_referenced(key):
            return

        await self.artifacts.delete(key)
        logger.info("deleted artifact %s", key)

    async def orphan_keys(self) -> list[str]:
        """Return the keys of stored objects that no catalog entry refers to."""
        orphans = []
        for key in await self.artifacts.list_keys():
            if not await self.is_referenced(key):
                orphans.append(key)

        return orphans

    def import_path(self, raw: str) -> Path:
        return resolve_import_path(raw, self.settings.import_dirs)

    @asynccontextmanager
    async def staged_input(
        self, path: str | None, content_base64: str | None, file_name: str | None
    ) -> AsyncIterator[tuple[Path, str]]:
        """Yield a readable local file and its name, from a path or from base64 content.

        Inline content is decoded to a temporary file that is removed afterwards.

        Raises:
            InvalidInput: Neither or both sources are given, or the content is invalid.
            PathNotAllowed: The path is outside the import directories.
        """
        if (path is None) == (content_base64 is None):
            raise InvalidInput("give exactly one of 'path' or 'content_base64'")

        if path is not None:
            resolved = self.import_path(path)
            yield resolved, resolved.name
            return

        assert content_base64 is not None
        if not file_name:
            raise InvalidInput("'file_name' is required with 'content_base64', e.g. 'model.onnx'")
        check_file_name(file_name)

        content = content_base64.translate(_STRIP_WHITESPACE)
        limit = self.settings.max_inline_bytes
        if len(content) > limit * 4 // 3 + 4:
            raise InvalidInput(
                f"inline content is larger than {limit} bytes; copy the file into an import "
                "directory and pass 'path' instead"
            )
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"'content_base64' is not valid base64: {exc}") from None

        suffix = "".join(Path(file_name).suffixes[-2:])
        handle = tempfile.NamedTemporaryFile(dir=self.scratch_dir, suffix=suffix, delete=False)
        staged = Path(handle.name)
        try:
            await anyio.to_thread.run_sync(handle.write, data)
            handle.close()
            yield staged, file_name
        finally:
            handle.close()
            staged.unlink(missing_ok=True)

    async def aclose(self) -> None:
        await self.catalog.aclose()
        await self.artifacts.aclose()


def process_alive(pid: int) -> bool:
    """Return whether a process with ``pid`` exists on this host."""
    # NOTE: a pid reused by an unrelated process reads as alive, which only
    # delays a cleanup; it never removes the files of a live process.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_scratch(home: Path) -> list[Path]:
    """Remove the temporary folders of processes that no longer run; return them."""
    removed = []
    base = home / "tmp"
    if not base.is_dir():
        return removed

    for folder in base.iterdir():
        if folder.is_dir() and folder.name.isdigit() and not process_alive(int(folder.name)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            logger.info("removed temporary files of stopped process %s", folder.name)

    return removed


@asynccontextmanager
async def open_platform(settings: Settings | None = None) -> AsyncIterator[Platform]:
    """Open the catalog and the artifact store, and close them on exit."""
    settings = settings or load_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "imports").mkdir(parents=True, exist_ok=True)
    await anyio.to_thread.run_sync(remove_stale_scratch, settings.home)

    catalog = await open_catalog(settings)
    try:
        artifacts = await open_artifact_store(settings)
    except BaseException:
        await catalog.aclose()
        raise

    platform = Platform(settings=settings, catalog=catalog, artifacts=artifacts)
    try:
        yield platform
    finally:
        await platform.aclose()
