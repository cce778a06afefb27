"""The data server through an in-process MCP client."""

import base64
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mcp import Client, MCPError

from mlhub_mcp.config import Settings
from mlhub_mcp.datasets.server import create_data_server
from mlhub_mcp.ids import new_id
from mlhub_mcp.platform import open_platform
from tests.conftest import snapshot

pytestmark = pytest.mark.anyio


def _text(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


async def test_register_csv_gathers_schema_and_statistics(
    settings: Settings, staged_digits: dict[str, Path]
) -> None:
    async with Client(create_data_server(settings)) as client:
        registered = await client.call_tool(
            "register_dataset", {"name": "digits", "path": "digits_test.csv"}
        )
        schema = await client.call_tool("get_dataset_schema", {"name": "digits"})
        stats = await client.call_tool(
            "get_dataset_statistics", {"name": "digits", "columns": ["label", "pixel_0"]}
        )

    assert not registered.is_error, _text(registered)
    assert registered.structured_content["row_count"] == 540
    columns = schema.structured_content["columns"]
    assert len(columns) == 65
    assert columns[-1] == {"name": "label", "type": "int64", "null_count": 0}
    label = stats.structured_content["columns"]["label"]
    assert label["min"] == 0
    assert label["max"] == 9
    assert label["distinct_count"] == 10


async def test_statistics_count_nulls_and_mean(settings: Settings, imports: Path) -> None:
    (imports / "small.csv").write_text("x,y,name\n1,,a\n2,4,b\n3,6,a\n")
    async with Client(create_data_server(settings)) as client:
        await client.call_tool("register_dataset", {"name": "small", "path": "small.csv"})
        stats = await client.call_tool("get_dataset_statistics", {"name": "small"})

    columns = stats.structured_content["columns"]
    assert columns["x"]["mean"] == pytest.approx(2.0)
    assert columns["x"]["std"] == pytest.approx((2 / 3) ** 0.5)
    assert columns["y"]["null_count"] == 1
    assert columns["name"]["top_values"][0] == {"value": "a", "count": 2}


async def test_preview_returns_first_rows(
    settings: Settings, staged_digits: dict[str, Path]
) -> None:
    async with Client(create_data_server(settings)) as client:
        await client.call_tool("register_dataset", {"name": "digits", "path": "digits_test.csv"})
        preview = await client.call_tool(
            "preview_dataset", {"name": "digits", "rows": 3, "columns": ["pixel_5", "label"]}
        )
        resource = await client.read_resource("datasets://digits/preview")

    rows = preview.structured_content["rows"]
    assert len(rows) == 3
    assert set(rows[0]) == {"pixel_5", "label"}
    assert len(json.loads(resource.contents[0].text)) == 20


async def test_jsonl_and_parquet_are_accepted(settings: Settings, imports: Path) -> None:
    (imports / "rows.jsonl").write_text('{"a": 1, "b": "x"}\n{"a": 2, "b": "y"}\n')
    pq.write_table(pa.table({"a": [1.5, 2.5, None]}), imports / "t.parquet")
    async with Client(create_data_server(settings)) as client:
        jsonl = await client.call_tool("register_dataset", {"name": "j", "path": "rows.jsonl"})
        parquet = await client.call_tool("register_dataset", {"name": "p", "path": "t.parquet"})

    assert jsonl.structured_content["row_count"] == 2
    assert parquet.structured_content["columns"][0]["null_count"] == 1


async def test_inline_csv_content(settings: Settings) -> None:
    content = base64.b64encode(b"a,b\n1,2\n3,4\n").decode()
    async with Client(create_data_server(settings)) as client:
        result = await client.call_tool(
            "register_dataset", {"name": "inline", "content_base64": content, "file_name": "x.csv"}
        )

    assert result.structured_content["row_count"] == 2


async def test_large_csv_is_read_in_batches(settings: Settings, imports: Path) -> None:
    # About 12 MB, three times the reader's block size, so several batches.
    lines = ["a,b,c"] + [f"{i},{i * 0.5},name{i % 7}" for i in range(600_000)]
    (imports / "big.csv").write_text("\n".join(lines) + "\n")
    async with Client(create_data_server(settings)) as client:
        result = await client.call_tool("register_dataset", {"name": "big", "path": "big.csv"})
        stats = await client.call_tool("get_dataset_statistics", {"name": "big", "columns": ["a"]})

    assert result.structured_content["row_count"] == 600_000
    assert stats.structured_content["columns"]["a"]["max"] == 599_999


async def test_delete_dataset_removes_file(
    settings: Settings, staged_digits: dict[str, Path]
) -> None:
    before = await snapshot(settings)
    async with Client(create_data_server(settings)) as client:
        await client.call_tool("register_dataset", {"name": "digits", "path": "digits_test.csv"})
        await client.call_tool("delete_dataset", {"name": "digits"})

    assert await snapshot(settings) == before


@pytest.mark.parametrize("status", ["queued", "running"])
async def test_dataset_in_use_cannot_be_deleted(
    settings: Settings, staged_digits: dict[str, Path], status: str
) -> None:
    async with Client(create_data_server(settings)) as client:
        registered = await client.call_tool(
            "register_dataset", {"name": "digits", "path": "digits_test.csv"}
        )
    execution_id = new_id()
    execution = {
        "id": execution_id,
        "dataset_id": registered.structured_content["id"],
        "status": status,
    }
    async with open_platform(settings) as platform:
        await platform.catalog.insert("executions", execution)
    before = await snapshot(settings)

    async with Client(create_data_server(settings)) as client:
        refused = await client.call_tool("delete_dataset", {"name": "digits"})
    after_refusal = await snapshot(settings)
    async with open_platform(settings) as platform:
        await platform.catalog.update("executions", execution_id, {"status": "succeeded"})
    async with Client(create_data_server(settings)) as client:
        deleted = await client.call_tool("delete_dataset", {"name": "digits"})

    assert refused.is_error
    assert f"used by execution {execution_id}, which is {status}" in _text(refused)
    assert after_refusal == before
    assert not deleted.is_error, _text(deleted)
    assert (await snapshot(settings))["counts"]["datasets"] == 0


async def test_unknown_dataset_resource_is_invalid_params(settings: Settings) -> None:
    async with Client(create_data_server(settings)) as client:
        with pytest.raises(MCPError) as error:
            await client.read_resource("datasets://ghost")
        result = await client.call_tool("preview_dataset", {"name": "ghost"})

    assert error.value.code == -32602
    assert "dataset 'ghost' not found" in _text(result)


# Bad input: each case must leave the catalog and the artifact store unchanged.


async def _rejected(settings: Settings, arguments: dict[str, Any]) -> str:
    before = await snapshot(settings)
    async with Client(create_data_server(settings)) as client:
        result = await client.call_tool("register_dataset", arguments)

    assert result.is_error
    assert await snapshot(settings) == before
    return _text(result)


async def test_ragged_csv_names_the_line(settings: Settings, imports: Path) -> None:
    (imports / "ragged.csv").write_text("a,b,c\n1,2,3\n4,5,6\n7,8\n9,10,11\n")

    message = await _rejected(settings, {"name": "ragged", "path": "ragged.csv"})

    assert "line 4" in message
    assert "expected 3 columns, got 2" in message


async def test_type_change_names_the_column(settings: Settings, imports: Path) -> None:
    # Past the 4 MB first block, whose rows set the column types.
    rows = ["a,b"] + [f"{i},{i}" for i in range(700_000)] + ["oops,1"]
    (imports / "types.csv").write_text("\n".join(rows) + "\n")

    message = await _rejected(settings, {"name": "types", "path": "types.csv"})

    assert "column 'a'" in message


async def test_malformed_jsonl_is_rejected(settings: Settings, imports: Path) -> None:
    (imports / "bad.jsonl").write_text('{"a": 1}\n{"a": \n')

    message = await _rejected(settings, {"name": "bad", "path": "bad.jsonl"})

    assert "JSON Lines parse error" in message


async def test_duplicate_header_is_rejected(settings: Settings, imports: Path) -> None:
    (imports / "dup.csv").write_text("a,a\n1,2\n")

    message = await _rejected(settings, {"name": "dup", "path": "dup.csv"})

    assert "column 'a' appears twice" in message


async def test_empty_file_is_rejected(settings: Settings, imports: Path) -> None:
    (imports / "empty.csv").write_text("a,b\n")

    message = await _rejected(settings, {"name": "empty", "path": "empty.csv"})

    assert "no rows" in message


async def test_duplicate_name_is_rejected(
    settings: Settings, staged_digits: dict[str, Path]
) -> None:
    async with Client(create_data_server(settings)) as client:
        await client.call_tool("register_dataset", {"name": "digits", "path": "digits_test.csv"})

    message = await _rejected(settings, {"name": "digits", "path": "digits_test.csv"})

    assert "already exists" in message


async def test_unknown_suffix_is_rejected(settings: Settings, imports: Path) -> None:
    (imports / "data.xlsx").write_bytes(b"PK")

    message = await _rejected(settings, {"name": "xl", "path": "data.xlsx"})

    assert "cannot tell the dataset format" in message
