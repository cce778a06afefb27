"""Dataset registry: files converted to Parquet, with schema and statistics."""

import logging
import tempfile
from pathlib import Path
from typing import Any

import anyio.to_thread

from mlhub_mcp.catalog import Page
from mlhub_mcp.datasets._readers import (
    detect_table_format,
    ingest_table,
    read_rows,
)
from mlhub_mcp.errors import Conflict, InvalidInput, NotFound
from mlhub_mcp.ids import new_id, utc_now
from mlhub_mcp.paths import check_entry_name
from mlhub_mcp.platform import Platform

logger = logging.getLogger(__name__)


class DatasetRegistry:
    """Registers, describes and deletes datasets."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.catalog = platform.catalog

    async def register(
        self,
        *,
        name: str,
        path: str | None = None,
        content_base64: str | None = None,
        file_name: str | None = None,
        description: str = "",
        dataset_format: str | None = None,
    ) -> dict[str, Any]:
        """Parse a dataset file, store it as Parquet and add it to the catalog.

        Raises:
            Conflict: A dataset with this name exists.
            InvalidDatasetFile: The file is malformed; nothing is stored.
        """
        check_entry_name(name, "dataset")
        if await self.catalog.find_one("datasets", {"name": name}) is not None:
            raise Conflict(
                f"dataset {name!r} already exists; choose another name or delete it first"
            )

        async with self.platform.staged_input(path, content_base64, file_name) as (local, fname):
            fmt = detect_table_format(fname, dataset_format)
            source_size = local.stat().st_size
            stored, details = await self._store(local, fmt)

        doc = {
            "id": new_id(),
            "name": name,
            "description": description,
            "format": fmt,
            "file_name": fname,
            "source_size_bytes": source_size,
            "size_bytes": stored.size,
            "sha256": stored.sha256,
            "artifact_key": stored.key,
            "created_at": utc_now(),
            **details,
        }
        try:
            await self.catalog.insert("datasets", doc)
        except BaseException:
            await self.platform.release_artifact(stored.key)
            raise

        logger.info("registered dataset %s (%s, %s rows)", name, fmt, doc["row_count"])
        return doc

    async def _store(self, local: Path, fmt: str) -> tuple[Any, dict[str, Any]]:
        if fmt in ("npz", "image_archive"):
            from mlhub_mcp.datasets._images import ingest_images

            return await ingest_images(self.platform, local, fmt)

        handle = tempfile.NamedTemporaryFile(
            dir=self.platform.scratch_dir, suffix=".parquet", delete=False
        )
        handle.close()
        target = Path(handle.name)
        try:
            result = await anyio.to_thread.run_sync(ingest_table, local, fmt, target)
            stored = await self.platform.artifacts.put_file(target)
        finally:
            target.unlink(missing_ok=True)

        details = {
            "kind": "table",
            "row_count": result.row_count,
            "columns": result.columns,
            "statistics": result.statistics,
        }
        return stored, details

    async def get(self, name: str) -> dict[str, Any]:
        """Return a dataset's catalog entry.

        Raises:
            NotFound: No dataset has this name.
        """
        doc = await self.catalog.find_one("datasets", {"name": name})
        if doc is None:
            raise NotFound("dataset", name, "list_datasets shows the registered datasets")
        return doc

    async def list_page(self, *, limit: int = 50, cursor: str | None = None) -> Page:
        return await self.catalog.find("datasets", None, limit=limit, cursor=cursor)

    async def preview(
        self, name: str, rows: int, columns: list[str] | None
    ) -> list[dict[str, Any]]:
        doc = await self.get(name)
        if doc.get("kind", "table") != "table":
            raise InvalidInput(f"dataset {name!r} contains images; use preview_images")
        known = [c["name"] for c in doc["columns"]]
        missing = [c for c in columns or [] if c not in known]
        if missing:
            raise InvalidInput(f"dataset {name!r} has no columns {missing}; its columns: {known}")

        path = await self.platform.artifacts.fetch(doc["artifact_key"])
        return await anyio.to_thread.run_sync(read_rows, path, rows, columns or None)

    async def delete(self, name: str) -> dict[str, Any]:
        """Delete a dataset and its stored file unless an unfinished execution reads it.

        Raises:
            NotFound: No dataset has this name.
            Conflict: An execution of the dataset is queued or running.
        """
        doc = await self.get(name)
        # NOTE: the check and the delete are two steps. An execution queued
        # between them fails with "dataset ... was deleted or replaced".
        active = await self.catalog.find_one(
            "executions", {"dataset_id": doc["id"], "status": ["queued", "running"]}
        )
        if active is not None:
            raise Conflict(
                f"dataset {name!r} is used by execution {active['id']}, which is "
                f"{active['status']}; cancel it or wait for it to finish"
            )

        await self.catalog.delete("datasets", doc["id"])
        await self.platform.release_artifact(doc["artifact_key"])
        logger.info("deleted dataset %s", name)
        return doc
