"""Data-server tools for image datasets."""

import json
from typing import Annotated

import anyio.to_thread
from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.types import TextContent
from pydantic import Field

from mlhub_mcp.datasets import _images
from mlhub_mcp.datasets._registry import DatasetRegistry
from mlhub_mcp.errors import InvalidInput
from mlhub_mcp.server_base import READ_ONLY, state_of


async def preview_images(
    ctx: Context,
    name: Annotated[str, Field(description="Name of an image dataset")],
    count: Annotated[
        int, Field(ge=1, le=32, description="Number of images to return, one class after another")
    ] = 4,
) -> list[TextContent | Image]:
    """Show sample images of an image dataset, each after a text line with its class.

    Images are taken from every class in turn, so a few of them already show
    what the classes look like. They are PNG thumbnails. Images under 64
    pixels per side are enlarged by a whole factor, and larger ones are
    reduced to at most 256 pixels. The first text block contains the dataset's
    size, image shape and class counts as JSON. Table datasets are rejected,
    because preview_dataset shows their rows.
    """
    registry: DatasetRegistry = state_of(ctx)
    doc = await registry.get(name)
    if doc.get("kind", "table") != "images":
        raise InvalidInput(f"dataset {name!r} is a table; use preview_dataset to see its rows")

    path = await registry.platform.artifacts.fetch(doc["artifact_key"])
    previews = await anyio.to_thread.run_sync(_images.preview_images, path, count)

    summary = {"name": name, "row_count": doc["row_count"], **doc["image_info"]}
    content: list[TextContent | Image] = [TextContent(type="text", text=json.dumps(summary))]
    for index, (label, png) in enumerate(previews, start=1):
        content.append(TextContent(type="text", text=f"image {index}: class {label!r}"))
        content.append(Image(data=png, format="png"))

    return content


def register_image_tools(server: MCPServer) -> None:
    """Add the image dataset tools to the data server."""
    server.tool(title="Preview images", annotations=READ_ONLY)(preview_images)
