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
    # About 12 MB, many times the reader's block size, so many batches.
    lines = ["a,b,c"] + [f"{i},{i * 0.5},name{i % 7}" for i in range(600_000)]
    (imports / "big.csv").write_text("\n".join(lines) + "\n")
    async with Client(create_data_server(settings)) as client:
        result = await client.call_tool("register_dataset", {"name": "big", "path": "big.csv"})
        stats = await client.call_tool("get_dataset_statistics", {"name": "big", "columns": ["a"]})

    assert result.structured_content["row_count"] == 600_000
    assert stats.structured_content["columns"]["a"]["max"] == 599_999


async def test_type_change_widens_to_string(settings: Settings, imports: Path) -> None:
    # Past the first block, whose rows set the column types.
    rows = ["a,b"] + [f"{i},{i}" for i in range(700_000)] + ["oops,1"]
    (imports / "types.csv").write_text("\n".join(rows) + "\n")
    async with Client(create_data_server(settings)) as client:
        result = await client.call_tool("register_dataset", {"name": "types", "path": "types.csv"})
        preview = await client.call_tool("preview_dataset", {"name": "types", "rows": 2})

    assert not result.is_error, _text(result)
    assert result.structured_content["row_count"] == 700_001
    assert result.structured_content["columns"][0]["type"] == "string"
    assert result.structured_content["columns"][1]["type"] == "int64"
    assert preview.structured_content["rows"] == [{"a": "0", "b": 0}, {"a": "1", "b": 1}]


async def test_ints_then_floats_widen_to_float64(settings: Settings, imports: Path) -> None:
    rows = ["a,b"] + [f"{i},{i}" for i in range(400_000)] + ["1.5,2"]
    (imports / "floats.csv").write_text("\n".join(rows) + "\n")
    async with Client(create_data_server(settings)) as client:
        result = await client.call_tool(
            "register_dataset", {"name": "floats", "path": "floats.csv"}
        )
        stats = await client.call_tool("get_dataset_statistics", {"name": "floats"})

    assert not result.is_error, _text(result)
    assert result.structured_content["row_count"] == 400_001
    assert result.structured_content["columns"][0]["type"] == "double"
    assert result.structured_content["columns"][1]["type"] == "int64"
    column = stats.structured_content["columns"]["a"]
    assert column["count"] == 400_001
    assert column["mean"] == pytest.approx((sum(range(400_000)) + 1.5) / 400_001)


async def test_nested_columns_are_registered(settings: Settings, imports: Path) -> None:
    (imports / "nested.jsonl").write_text(
        '{"a": 1, "point": {"x": 1, "y": 2.5}, "tags": ["p", "q"]}\n'
        '{"a": 2, "point": {"x": 3, "y": null}, "tags": []}\n'
    )
    mapping = pa.array([[("k", 1)], None], type=pa.map_(pa.string(), pa.int64()))
    pq.write_table(pa.table({"a": [1, 2], "m": mapping}), imports / "map.parquet")
    async with Client(create_data_server(settings)) as client:
        jsonl = await client.call_tool("register_dataset", {"name": "j", "path": "nested.jsonl"})
        parquet = await client.call_tool("register_dataset", {"name": "p", "path": "map.parquet"})
        stats = await client.call_tool("get_dataset_statistics", {"name": "j"})
        preview = await client.call_tool("preview_dataset", {"name": "p"})

    assert not jsonl.is_error, _text(jsonl)
    assert not parquet.is_error, _text(parquet)
    columns = stats.structured_content["columns"]
    assert columns["point"] == {"type": "struct<x: int64, y: double>", "count": 2, "null_count": 0}
    assert columns["tags"] == {"type": "list<item: string>", "count": 2, "null_count": 0}
    assert columns["a"]["distinct_count"] == 2
    assert preview.structured_content["rows"] == [{"a": 1, "m": [["k", 1]]}, {"a": 2, "m": None}]


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
        rejected = await client.call_tool("delete_dataset", {"name": "digits"})
    after_rejection = await snapshot(settings)
    async with open_platform(settings) as platform:
        await platform.catalog.update("executions", execution_id, {"status": "succeeded"})
    async with Client(create_data_server(settings)) as client:
        deleted = await client.call_tool("delete_dataset", {"name": "digits"})

    assert rejected.is_error
    assert f"used by execution {execution_id}, which is {status}" in _text(rejected)
    assert after_rejection == before
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


async def test_malformed_jsonl_is_rejected(settings: Settings, imports: Path) -> None:
    (imports / "bad.jsonl").write_text('{"a": 1}\n{"a": \n')

    message = await _rejected(settings, {"name": "bad", "path": "bad.jsonl"})

    assert "JSON Lines parse error" in message


async def test_duplicate_header_is_rejected(settings: Settings, imports: Path) -> None:
    (imports / "dup.csv").write_text("a,a\n1,2\n")

    message = await _rejected(settings, {"name": "dup", "path": "dup.csv"})

    assert "column 'a' appears twice" in message


@pytest.mark.parametrize("text", ["a,b\n", "", "\n\n"], ids=["header", "empty", "blank"])
async def test_empty_file_is_rejected(settings: Settings, imports: Path, text: str) -> None:
    (imports / "empty.csv").write_text(text)

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


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_ragged_row_that_is_not_utf8(settings: Settings, imports: Path) -> None:
    """The row is taken from pyarrow's message, because pyarrow skips the handler.

    NOTE: pyarrow 26 then prints "Exception ignored ... UnicodeDecodeError" to
    stderr, which pytest reports as an unraisable-exception warning.
    """
    (imports / "latin1.csv").write_bytes(b"a,b,c\n1,2,3\ncaf\xe9,y\n")

    message = await _rejected(settings, {"name": "latin1", "path": "latin1.csv"})

    assert "line 3: expected 3 columns, got 2: 'caf\ufffd,y'" in message
    assert message.count("CSV parse error") == 1


async def test_long_ragged_row_is_shortened(settings: Settings, imports: Path) -> None:
    (imports / "wide.csv").write_text("a,b,c\n1,2,3\n" + "x" * 5000 + ",y\n")

    message = await _rejected(settings, {"name": "wide", "path": "wide.csv"})

    assert "line 3: expected 3 columns, got 2: 'xxx" in message
    assert "x" * 201 not in message
    assert message.endswith("'...")


@pytest.mark.parametrize(
    "text",
    [
        "a" * (5 * 1024 * 1024) + ",b\n1,2\n",
        "a,b\n1," + "x" * (9 * 1024 * 1024) + "\n",
    ],
    ids=["header", "row"],
)
async def test_line_longer_than_block_is_explained(
    settings: Settings, imports: Path, text: str
) -> None:
    (imports / "long.csv").write_text(text)

    message = await _rejected(settings, {"name": "long", "path": "long.csv"})

    assert "longer than the reader's block size of 1 MiB" in message
    assert "convert the file to Parquet" in message


async def test_json_array_is_rejected(settings: Settings, imports: Path) -> None:
    (imports / "rows.json").write_text(' \n[{"a": 1}, {"a": 2}]\n')

    message = await _rejected(settings, {"name": "array", "path": "rows.json"})

    assert "the file contains a JSON array" in message
    assert "one JSON object per line" in message


async def test_parquet_named_csv_is_rejected(
    settings: Settings, imports: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), imports / "data.csv")

    message = await _rejected(settings, {"name": "data", "path": "data.csv"})

    assert "the file is a Parquet file, not CSV" in message
    assert "format='parquet'" in message
    assert "Exception ignored" not in capfd.readouterr().err


async def test_binary_csv_is_rejected(settings: Settings, imports: Path) -> None:
    (imports / "blob.csv").write_bytes(b"a,b\n1,\x00\xcc\xff\n2,3,4\n")

    message = await _rejected(settings, {"name": "blob", "path": "blob.csv"})

    assert "not CSV text: it contains NUL bytes" in message
    assert "\x00" not in message


async def test_unexpected_arrow_error_is_reported(
    settings: Settings, imports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(self: Any, column: Any) -> None:
        raise pa.ArrowNotImplementedError("no kernel for this type")

    monkeypatch.setattr("mlhub_mcp.datasets._readers.ColumnStats.add", fail)
    (imports / "small.csv").write_text("a\n1\n")

    message = await _rejected(settings, {"name": "small", "path": "small.csv"})

    assert "cannot read the file: ArrowNotImplementedError: no kernel for this type" in message
