"""Image datasets: archives of one folder per class, and NumPy .npz files."""

from pathlib import Path
from typing import Any

from mlhub_mcp.errors import InvalidDatasetFile
from mlhub_mcp.platform import Platform


async def ingest_images(platform: Platform, local: Path, fmt: str) -> tuple[Any, dict[str, Any]]:
    raise InvalidDatasetFile(f"dataset format {fmt!r} is not supported yet")
