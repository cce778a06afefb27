"""Uploads of large files to the hub over HTTP, then registered through the model server."""

import hashlib
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import numpy as np
import pytest

from mlhub_mcp.config import ServerSettings, Settings
from tests.hub.conftest import TOKEN, connect, http_hub, text_of

pytestmark = pytest.mark.anyio

_CHUNK = 256 * 1024
_AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _write_large_onnx(path: Path, side: int = 3600) -> int:
    """Write an ONNX model Y = X @ W whose weights take side * side * 4 bytes (about 52 MB)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).random((side, side), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "large",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, side])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, side])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path.stat().st_size


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


async def test_large_upload_streams_and_registers(settings: Settings, tmp_path: Path) -> None:
    settings.servers = {"model": ServerSettings(name="model", start_timeout_seconds=60)}
    source = tmp_path / "large.onnx"
    size = _write_large_onnx(source)
    assert size > 50_000_000

    async with http_hub(settings) as (url, _), httpx2.AsyncClient(timeout=60) as http:
        tracemalloc.start()
        try:
            response = await http.put(
                f"{url}/uploads/large.onnx", content=_chunks(source), headers=_AUTH
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

        async with connect(url) as client:
            registered = await client.call_tool(
                "register_model",
                {"name": "large", "path": response.json()["path"], "task_type": "regression"},
            )

    body = response.json()
    stored = Path(body["path"])
    assert response.status_code == 201
    assert body["size_bytes"] == size
    assert stored.read_bytes() == source.read_bytes()
    assert stored.is_relative_to(settings.home / "imports" / "uploads")
    # The client and the hub run in this process, and neither keeps the body in memory.
    assert peak < 16 * 1024 * 1024, f"peak Python memory {peak} bytes during the upload"
    assert not registered.is_error, text_of(registered)
    assert registered.structured_content["size_bytes"] == size


async def test_upload_rejects_bad_names_and_oversize(hub_settings: Settings) -> None:
    hub_settings.http.max_upload_bytes = 1000

    async with http_hub(hub_settings) as (url, _), httpx2.AsyncClient() as http:
        bad_name = await http.put(f"{url}/uploads/.hidden", content=b"x", headers=_AUTH)
        declared = await http.put(f"{url}/uploads/big.csv", content=b"x" * 5000, headers=_AUTH)

        async def streamed() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"y" * 500

        chunked = await http.post(f"{url}/uploads/big.csv", content=streamed(), headers=_AUTH)
        small = await http.post(f"{url}/uploads/small.csv", content=b"a\n1\n", headers=_AUTH)

    uploads = hub_settings.home / "imports" / "uploads"
    assert bad_name.status_code == 400
    assert declared.status_code == 413
    assert chunked.status_code == 413
    assert small.status_code == 201
    assert [p.name for p in uploads.rglob("*") if p.is_file()] == ["small.csv"]


async def test_uploads_are_audited(hub_settings: Settings) -> None:
    hub_settings.http.max_upload_bytes = 1000
    content = b"a,b\n1,2\n"

    async with http_hub(hub_settings) as (url, _), httpx2.AsyncClient() as http:
        stored = await http.put(f"{url}/uploads/small.csv", content=content, headers=_AUTH)
        too_large = await http.put(f"{url}/uploads/big.csv", content=b"x" * 5000, headers=_AUTH)
        bad_name = await http.put(f"{url}/uploads/.hidden", content=b"x", headers=_AUTH)
        async with connect(url) as client:
            page = await client.call_tool("get_audit_log", {"operation": "upload"})

    entries = {e["file_name"]: e for e in page.structured_content["entries"]}
    assert stored.status_code == 201
    assert too_large.status_code == 413
    assert bad_name.status_code == 400
    assert set(entries) == {"small.csv", "big.csv", ".hidden"}

    ok = entries["small.csv"]
    assert ok["operation"] == "upload"
    assert ok["message_type"] == "PUT /uploads"
    assert ok["server"] == "hub"
    assert ok["outcome"] == "ok"
    assert ok["payload_bytes"] == len(content)
    assert ok["payload_sha256"] == hashlib.sha256(content).hexdigest()
    assert ok["client_address"].startswith("127.0.0.1:")

    assert entries["big.csv"]["outcome"] == "rejected"
    assert entries["big.csv"]["error_code"] == 413
    assert "max_upload_bytes" in entries["big.csv"]["error"]
    assert entries["big.csv"]["payload_sha256"] is None
    assert entries[".hidden"]["outcome"] == "rejected"
    assert entries[".hidden"]["error_code"] == 400
