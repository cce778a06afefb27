"""The model server through an in-process MCP client."""

import base64
import pickle
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError

from mlhub_mcp.config import Settings
from mlhub_mcp.models.server import create_model_server
from tests.conftest import snapshot

pytestmark = pytest.mark.anyio


def _text(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


async def test_register_reads_onnx_signature(
    settings: Settings, staged_digits: dict[str, Path]
) -> None:
    async with Client(create_model_server(settings)) as client:
        result = await client.call_tool("register_model", {"name": "digits", "path": "digits.onnx"})

    assert not result.is_error, _text(result)
    model = result.structured_content
    assert model["version"] == 1
    assert model["format"] == "onnx"
    assert model["task_type"] == "classification"
    assert model["signature"]["n_features"] == 64
    assert model["signature"]["inputs"][0]["shape"] == [None, 64]
    assert model["size_bytes"] == staged_digits["onnx"].stat().st_size


async def test_same_name_creates_next_version(
    settings: Settings, staged_digits: dict[str, Path]
) -> None:
    async with Client(create_model_server(settings)) as client:
        for _ in range(3):
            await client.call_tool("register_model", {"name": "digits", "path": "digits.onnx"})
        versions = await client.call_tool("list_model_versions", {"name": "digits"})
        latest = await client.call_tool("get_model", {"name": "digits"})
        second = await client.call_tool("get_model", {"name": "digits", "version": 2})

    assert [m["version"] for m in versions.structured_content["models"]] == [1, 2, 3]
    assert latest.structured_content["version"] == 3
    assert second.structured_content["version"] == 2


async def test_concurrent_registrations_get_unique_versions(
    settings: Settings, staged_digits: dict[str, Path]
) -> None:
    """Registrations of one name race for version numbers; every one must succeed."""
    count = 16
    results: list[Any] = []

    async def register() -> None:
        result = await client.call_tool("register_model", {"name": "race", "path": "digits.onnx"})
        results.append(result)

    async with Client(create_model_server(settings)) as client:
        with anyio.fail_after(120):
            async with anyio.create_task_group() as group:
                for _ in range(count):
                    group.start_soon(register)

    errors = [_text(r) for r in results if r.is_error]
    versions = sorted(r.structured_content["version"] for r in results if not r.is_error)
    assert errors == []
    assert versions == list(range(1, count + 1))


async def test_inline_base64_registration(
    settings: Settings, staged_digits: dict[str, Path]
) -> None:
    content = base64.b64encode(staged_digits["onnx"].read_bytes()).decode()
    async with Client(create_model_server(settings)) as client:
        result = await client.call_tool(
            "register_model",
            {"name": "inline", "content_base64": content, "file_name": "m.onnx"},
        )

    assert not result.is_error, _text(result)
    assert result.structured_content["file_name"] == "m.onnx"


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
async def test_inline_base64_with_line_breaks(
    settings: Settings, staged_digits: dict[str, Path], line_end: str
) -> None:
    """The base64 command wraps its output at 76 columns."""
    content = base64.encodebytes(staged_digits["onnx"].read_bytes()).decode()
    content = content.replace("\n", line_end)
    async with Client(create_model_server(settings)) as client:
        result = await client.call_tool(
            "register_model",
            {"name": "wrapped", "content_base64": content, "file_name": "m.onnx"},
        )

    assert not result.is_error, _text(result)
    assert result.structured_content["size_bytes"] == staged_digits["onnx"].stat().st_size


async def test_list_filters_and_paginates(
    settings: Settings, staged_digits: dict[str, Path]
) -> None:
    async with Client(create_model_server(settings)) as client:
        for name in ("a", "b", "c"):
            await client.call_tool("register_model", {"name": name, "path": "digits.onnx"})
        first = await client.call_tool("list_models", {"limit": 2})
        rest = await client.call_tool(
            "list_models", {"limit": 2, "cursor": first.structured_content["next_cursor"]}
        )
        only_b = await client.call_tool("list_models", {"name": "b"})

    names = [m["name"] for m in first.structured_content["models"]]
    names += [m["name"] for m in rest.structured_content["models"]]
    assert names == ["a", "b", "c"]
    assert rest.structured_content["next_cursor"] is None
    assert [m["name"] for m in only_b.structured_content["models"]] == ["b"]


async def test_list_rejects_invalid_cursor(
    settings: Settings, staged_digits: dict[str, Path]
) -> None:
    async with Client(create_model_server(settings)) as client:
        await client.call_tool("register_model", {"name": "a", "path": "digits.onnx"})
        result = await client.call_tool("list_models", {"cursor": "garbage"})

    assert result.is_error
    assert "invalid cursor 'garbage': pass the next_cursor of the previous page" in _text(result)


async def test_delete_removes_versions_and_file(
    settings: Settings, staged_digits: dict[str, Path]
) -> None:
    before = await snapshot(settings)
    async with Client(create_model_server(settings)) as client:
        await client.call_tool("register_model", {"name": "digits", "path": "digits.onnx"})
        await client.call_tool("register_model", {"name": "digits", "path": "digits.onnx"})
        deleted = await client.call_tool("delete_model", {"name": "digits"})
        missing = await client.call_tool("get_model", {"name": "digits"})

    assert deleted.structured_content["deleted_versions"] == [1, 2]
    assert missing.is_error
    assert await snapshot(settings) == before


async def test_tools_carry_descriptions_and_annotations(settings: Settings) -> None:
    async with Client(create_model_server(settings)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}

    assert all(t.description for t in tools.values())
    assert tools["list_models"].annotations.read_only_hint is True
    assert tools["delete_model"].annotations.destructive_hint is True
    assert tools["register_model"].output_schema is not None


async def test_model_card_resource(settings: Settings, staged_digits: dict[str, Path]) -> None:
    async with Client(create_model_server(settings)) as client:
        await client.call_tool("register_model", {"name": "digits", "path": "digits.onnx"})
        card = await client.read_resource("models://digits/card")
        meta = await client.read_resource("models://digits/versions/1")

    assert "# digits (version 1)" in card.contents[0].text
    assert '"n_features": 64' in meta.contents[0].text


async def test_unknown_resource_and_prompt_are_invalid_params(settings: Settings) -> None:
    async with Client(create_model_server(settings)) as client:
        with pytest.raises(MCPError) as resource_error:
            await client.read_resource("models://nope/card")
        with pytest.raises(MCPError) as prompt_error:
            await client.get_prompt("nope", {})

    assert resource_error.value.code == -32602
    assert "nope" in resource_error.value.message
    assert prompt_error.value.code == -32602


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({}, "missing required arguments ['name']"),
        ({"name": "digits", "colour": "red"}, "unknown arguments ['colour']"),
    ],
)
async def test_bad_prompt_arguments_are_invalid_params(
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    arguments: dict[str, str],
    problem: str,
) -> None:
    async with Client(create_model_server(settings)) as client:
        with pytest.raises(MCPError) as error:
            await client.get_prompt("describe_model", arguments)

    assert error.value.code == -32602
    assert f"invalid arguments for prompt 'describe_model': {problem}" in error.value.message
    assert "Expected arguments: name (required)" in error.value.message
    assert [r for r in caplog.records if r.exc_info] == []


async def test_prompt_with_its_arguments_renders(settings: Settings) -> None:
    async with Client(create_model_server(settings)) as client:
        prompt = await client.get_prompt("describe_model", {"name": "digits"})

    assert "models://digits/card" in prompt.messages[0].content.text


# Bad input: each case must leave the catalog and the artifact store unchanged.


async def _rejected(settings: Settings, arguments: dict[str, Any]) -> str:
    before = await snapshot(settings)
    async with Client(create_model_server(settings)) as client:
        result = await client.call_tool("register_model", arguments)

    assert result.is_error
    assert await snapshot(settings) == before
    return _text(result)


async def test_corrupt_onnx_is_rejected(settings: Settings, imports: Path) -> None:
    (imports / "broken.onnx").write_bytes(b"\x08\x07garbage that is not a protobuf" * 20)

    message = await _rejected(settings, {"name": "broken", "path": "broken.onnx"})

    assert "not a valid ONNX model" in message


def _save_with_external_data(folder: Path) -> None:
    """Save a one-layer ONNX model whose weights are in ext_weights.bin."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((4, 2), dtype=np.float32), name="weights")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "weights"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        initializer=[weights],
    )
    model = helper.make_model(graph)
    onnx.save_model(
        model,
        str(folder / "ext.onnx"),
        save_as_external_data=True,
        location="ext_weights.bin",
        size_threshold=0,
    )


@pytest.mark.parametrize("weights_present", [True, False])
async def test_onnx_external_data_is_rejected(
    settings: Settings, imports: Path, weights_present: bool
) -> None:
    """The check runs before any external file is opened, so a missing one changes nothing."""
    _save_with_external_data(imports)
    if not weights_present:
        (imports / "ext_weights.bin").unlink()

    message = await _rejected(settings, {"name": "ext", "path": "ext.onnx"})

    assert "models with external data files are not supported" in message
    assert "'ext_weights.bin'" in message
    assert "save_as_external_data=False" in message


async def test_untrusted_pickle_is_not_loaded(
    settings: Settings, imports: Path, digits_files: dict[str, Any]
) -> None:
    (imports / "model.pkl").write_bytes(pickle.dumps(digits_files["model"]))

    message = await _rejected(settings, {"name": "pickled", "path": "model.pkl"})

    assert "trusted=true" in message
    assert "arbitrary code" in message


async def test_trusted_pickle_is_registered(
    settings: Settings, imports: Path, digits_files: dict[str, Any]
) -> None:
    (imports / "model.pkl").write_bytes(pickle.dumps(digits_files["model"]))
    async with Client(create_model_server(settings)) as client:
        result = await client.call_tool(
            "register_model", {"name": "pickled", "path": "model.pkl", "trusted": True}
        )

    assert not result.is_error, _text(result)
    assert result.structured_content["framework"] == "scikit-learn"
    assert result.structured_content["signature"]["n_features"] == 64


async def test_path_with_dotdot_outside_imports_is_rejected(
    settings: Settings, staged_digits: dict[str, Path]
) -> None:
    outside = settings.home.parent / "outside.onnx"
    outside.write_bytes(staged_digits["onnx"].read_bytes())

    message = await _rejected(settings, {"name": "escape", "path": "../outside.onnx"})

    assert "outside the import directories" in message


async def test_symlink_out_of_imports_is_rejected(settings: Settings, imports: Path) -> None:
    (imports / "passwd.onnx").symlink_to("/etc/passwd")

    message = await _rejected(settings, {"name": "link", "path": "passwd.onnx"})

    assert "outside the import directories" in message


async def test_inline_file_name_with_dotdot_is_rejected(
    settings: Settings, staged_digits: dict[str, Path]
) -> None:
    content = base64.b64encode(staged_digits["onnx"].read_bytes()).decode()

    message = await _rejected(
        settings, {"name": "x", "content_base64": content, "file_name": "../../evil.onnx"}
    )

    assert "invalid file name" in message


@pytest.mark.parametrize("content", ["not base64!!", "AAAA\nAA-_\n", "AAAA\x00AAAA"])
async def test_invalid_base64_is_rejected(settings: Settings, content: str) -> None:
    message = await _rejected(
        settings, {"name": "x", "content_base64": content, "file_name": "m.onnx"}
    )

    assert "not valid base64" in message


async def test_unknown_model_name_is_a_clear_error(settings: Settings) -> None:
    before = await snapshot(settings)
    async with Client(create_model_server(settings)) as client:
        result = await client.call_tool("get_model", {"name": "ghost"})
        deleted = await client.call_tool("delete_model", {"name": "ghost"})

    assert result.is_error
    assert "model 'ghost' not found" in _text(result)
    assert deleted.is_error
    assert await snapshot(settings) == before


async def test_register_hosted_llm_needs_no_file(settings: Settings) -> None:
    async with Client(create_model_server(settings)) as client:
        result = await client.call_tool(
            "register_llm", {"name": "chat", "provider_model": "llama-3.3-70b-versatile"}
        )

    assert not result.is_error, _text(result)
    assert result.structured_content["kind"] == "llm"
    assert result.structured_content["sha256"] is None
