"""The data server: register datasets, preview them, read schema and statistics."""

import json
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from pydantic import BaseModel, Field

from mlhub_mcp.config import Settings
from mlhub_mcp.datasets._image_tools import register_image_tools
from mlhub_mcp.datasets._registry import DatasetRegistry
from mlhub_mcp.errors import NotFound
from mlhub_mcp.server_base import (
    DESTRUCTIVE,
    READ_ONLY,
    WRITE,
    PlatformServer,
    platform_lifespan,
    state_of,
)

DatasetFormat = Literal["csv", "tsv", "jsonl", "parquet", "npz", "image_archive"]


class ColumnInfo(BaseModel):
    """A column of a table dataset."""

    name: str
    type: str
    null_count: int


class DatasetInfo(BaseModel):
    """A registered dataset."""

    id: str
    name: str
    description: str
    kind: str = Field(description="'table' or 'images'")
    format: str = Field(description="format of the file given at registration")
    file_name: str
    source_size_bytes: int
    size_bytes: int = Field(description="size of the stored copy")
    sha256: str
    row_count: int
    columns: list[ColumnInfo]
    image_info: dict[str, Any] | None = None
    created_at: str


class DatasetSummary(BaseModel):
    """A registered dataset as listed; get_dataset adds its columns."""

    id: str
    name: str
    description: str
    kind: str
    format: str
    file_name: str
    size_bytes: int
    row_count: int
    column_count: int
    created_at: str


class DatasetList(BaseModel):
    """A page of datasets."""

    datasets: list[DatasetSummary]
    next_cursor: str | None = Field(description="pass as 'cursor' to get the next page")


class Preview(BaseModel):
    """The first rows of a dataset."""

    name: str
    row_count: int
    rows: list[dict[str, Any]]


class Schema(BaseModel):
    """Columns of a dataset with their types and null counts."""

    name: str
    row_count: int
    columns: list[ColumnInfo]


class Statistics(BaseModel):
    """Per-column statistics gathered at registration."""

    name: str
    row_count: int
    columns: dict[str, dict[str, Any]] = Field(
        description="per column: count, null_count, and min/max/mean/std or top values"
    )


class DeletedDataset(BaseModel):
    """A dataset removed by a delete."""

    name: str
    deleted: bool


def _info(doc: dict[str, Any]) -> DatasetInfo:
    return DatasetInfo.model_validate(doc)


def _registry(ctx: Context) -> DatasetRegistry:
    return state_of(ctx)


async def register_dataset(
    ctx: Context,
    name: Annotated[str, Field(description="Unique dataset name")],
    path: Annotated[
        str | None,
        Field(description="Path of the file on the server host, inside an import directory"),
    ] = None,
    content_base64: Annotated[
        str | None, Field(description="The file's bytes in base64, for small files instead of path")
    ] = None,
    file_name: Annotated[
        str | None, Field(description="File name for content_base64, e.g. 'data.csv'")
    ] = None,
    description: Annotated[str, Field(description="Free text shown in listings")] = "",
    format: Annotated[
        DatasetFormat | None, Field(description="File format; taken from the suffix when omitted")
    ] = None,
) -> DatasetInfo:
    """Register a dataset from a CSV, TSV, JSON Lines or Parquet file.

    The whole file is parsed in batches before anything is stored. A malformed
    file is rejected with the line or column at fault, and nothing changes.
    """
    doc = await _registry(ctx).register(
        name=name,
        path=path,
        content_base64=content_base64,
        file_name=file_name,
        description=description,
        dataset_format=format,
    )
    return _info(doc)


async def list_datasets(
    ctx: Context,
    limit: Annotated[int, Field(ge=1, le=500, description="Page size")] = 50,
    cursor: Annotated[str | None, Field(description="next_cursor of the previous page")] = None,
) -> DatasetList:
    """List registered datasets, oldest first, one page at a time."""
    page = await _registry(ctx).list_page(limit=limit, cursor=cursor)
    summaries = [
        DatasetSummary.model_validate({**d, "column_count": len(d.get("columns", []))})
        for d in page.items
    ]
    return DatasetList(datasets=summaries, next_cursor=page.next_cursor)


async def get_dataset(
    ctx: Context, name: Annotated[str, Field(description="Dataset name")]
) -> DatasetInfo:
    """Describe a dataset: format, size, row count and columns."""
    return _info(await _registry(ctx).get(name))


async def preview_dataset(
    ctx: Context,
    name: Annotated[str, Field(description="Dataset name")],
    rows: Annotated[int, Field(ge=1, le=1000, description="Number of rows")] = 10,
    columns: Annotated[
        list[str] | None, Field(description="Only these columns; all when omitted")
    ] = None,
) -> Preview:
    """Return the first rows of a table dataset."""
    registry = _registry(ctx)
    doc = await registry.get(name)
    data = await registry.preview(name, rows, columns)
    return Preview(name=name, row_count=doc["row_count"], rows=data)


async def get_dataset_schema(
    ctx: Context, name: Annotated[str, Field(description="Dataset name")]
) -> Schema:
    """Return the column names, types and null counts of a dataset."""
    doc = await _registry(ctx).get(name)
    return Schema(name=name, row_count=doc["row_count"], columns=doc["columns"])


async def get_dataset_statistics(
    ctx: Context,
    name: Annotated[str, Field(description="Dataset name")],
    columns: Annotated[
        list[str] | None, Field(description="Only these columns; all when omitted")
    ] = None,
) -> Statistics:
    """Return per-column statistics: count, nulls, min, max, mean, std and top values."""
    doc = await _registry(ctx).get(name)
    stats = doc.get("statistics", {})
    if columns:
        missing = [c for c in columns if c not in stats]
        if missing:
            raise NotFound("column", ", ".join(missing), f"dataset {name!r} has {list(stats)}")
        stats = {c: stats[c] for c in columns}
    return Statistics(name=name, row_count=doc["row_count"], columns=stats)


async def delete_dataset(
    ctx: Context, name: Annotated[str, Field(description="Dataset name")]
) -> DeletedDataset:
    """Delete a dataset and its stored file. Past executions keep their results.

    Fails while an execution that reads the dataset is queued or running.
    """
    await _registry(ctx).delete(name)
    return DeletedDataset(name=name, deleted=True)


async def _resource_doc(ctx: Context, name: str) -> dict[str, Any]:
    try:
        return await _registry(ctx).get(name)
    except NotFound as exc:
        raise ResourceNotFoundError(str(exc)) from None


async def dataset_metadata(name: str, ctx: Context) -> str:
    """Metadata, schema and statistics of a dataset, as JSON."""
    return json.dumps(await _resource_doc(ctx, name), indent=2)


async def dataset_preview(name: str, ctx: Context) -> str:
    """Read the first 20 rows of a dataset as JSON."""
    doc = await _resource_doc(ctx, name)
    if doc.get("kind", "table") != "table":
        raise ResourceNotFoundError(
            f"dataset {name!r} contains images and has no table preview; "
            "use the preview_images tool for thumbnails"
        )
    rows = await _registry(ctx).preview(name, 20, None)
    return json.dumps(rows, indent=2)


def explore_dataset_prompt(name: str) -> str:
    """Ask the assistant to describe a dataset and spot problems before a run."""
    return (
        f"Look at dataset {name!r} with get_dataset_schema, get_dataset_statistics and "
        "preview_dataset. Describe its columns, point out missing values, constant columns "
        "and likely label columns, and say which models in list_models could run on it."
    )


def create_data_server(settings: Settings | None = None) -> MCPServer:
    """Build the data server; storage opens when it starts."""

    @asynccontextmanager
    async def setup(platform: Any) -> Any:
        yield DatasetRegistry(platform)

    server = PlatformServer(
        "mlhub-data",
        version="0.1.0",
        instructions="Datasets (CSV, JSON Lines, Parquet, images) with schema and statistics.",
        lifespan=platform_lifespan(settings, setup),
        log_level="WARNING",
    )
    server.tool(title="Register dataset", annotations=WRITE)(register_dataset)
    server.tool(title="List datasets", annotations=READ_ONLY)(list_datasets)
    server.tool(title="Get dataset", annotations=READ_ONLY)(get_dataset)
    server.tool(title="Preview dataset", annotations=READ_ONLY)(preview_dataset)
    server.tool(title="Get dataset schema", annotations=READ_ONLY)(get_dataset_schema)
    server.tool(title="Get dataset statistics", annotations=READ_ONLY)(get_dataset_statistics)
    server.tool(title="Delete dataset", annotations=DESTRUCTIVE)(delete_dataset)
    register_image_tools(server)

    server.resource("datasets://{name}", mime_type="application/json")(dataset_metadata)
    server.resource("datasets://{name}/preview", mime_type="application/json")(dataset_preview)
    server.prompt(name="explore_dataset")(explore_dataset_prompt)
    return server
