"""PyTorch models on image datasets, end to end through the three servers.

A small CNN is trained once per module on scikit-learn's 8x8 digits, enlarged
to 32x32 RGB uint8 images (the CIFAR-10 shape), and exported as TorchScript
and as a torch.export program.
"""

import base64
import io
import json
import os
import pickle
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mcp import Client  # noqa: E402
from PIL import Image  # noqa: E402

from mlhub_mcp.config import Settings  # noqa: E402
from mlhub_mcp.datasets._image_tools import register_image_tools  # noqa: E402
from mlhub_mcp.datasets.server import create_data_server  # noqa: E402
from mlhub_mcp.execution.server import create_execution_server  # noqa: E402
from mlhub_mcp.models._torch import TorchPredictor  # noqa: E402
from mlhub_mcp.models.server import create_model_server  # noqa: E402
from tests.conftest import snapshot  # noqa: E402

pytestmark = pytest.mark.anyio


def _enlarge(digits: np.ndarray) -> np.ndarray:
    """Turn 8x8 digits with values 0..16 into 32x32x3 uint8 images."""
    pixels = np.rint(digits / 16 * 255).astype(np.uint8)
    large = pixels.repeat(4, axis=1).repeat(4, axis=2)
    return np.repeat(large[..., np.newaxis], 3, axis=3)


def _cnn() -> Any:
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 10),
    )


def _train(images: np.ndarray, labels: np.ndarray, mean: float, std: float) -> Any:
    torch.manual_seed(0)
    model = _cnn()
    inputs = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    targets = torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        order = torch.randperm(len(inputs))
        for start in range(0, len(inputs), 32):
            batch = order[start : start + 32]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(inputs[batch]), targets[batch])
            loss.backward()
            optimizer.step()

    return model.eval()


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_zip(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            archive.writestr(f"digits/{label}/{index:04d}.png", _png(image))


def _write_tar(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            data = _png(image)
            member = tarfile.TarInfo(f"{label}/{index:04d}.png")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))


@pytest.fixture(scope="module")
def digits_cnn(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The trained CNN, its files, and the held-out images as zip, tar.gz and .npz."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = _enlarge(digits.images)
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.3, random_state=0, stratify=digits.target
    )
    mean = float(x_train.mean() / 255)
    std = float(x_train.std() / 255)
    model = _train(x_train, y_train, mean, std)

    folder = tmp_path_factory.mktemp("cnn")
    files = {name: folder / name for name in ("cnn.pt", "cnn.pt2", "weights.pt")}
    torch.jit.script(model).save(str(files["cnn.pt"]))
    example = torch.zeros(2, 3, 32, 32)
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, files["cnn.pt2"])
    torch.save(model.state_dict(), files["weights.pt"])

    files["test.zip"] = folder / "test.zip"
    _write_zip(files["test.zip"], x_test, y_test)
    files["test.tar.gz"] = folder / "test.tar.gz"
    _write_tar(files["test.tar.gz"], x_test, y_test)
    files["test.npz"] = folder / "test.npz"
    classes = np.array([str(i) for i in range(10)])
    np.savez(files["test.npz"], x=x_test, y=y_test, classes=classes)

    return {
        "model": model,
        "files": files,
        "x_test": x_test,
        "y_test": y_test,
        "preprocessing": {"scale": True, "mean": [mean] * 3, "std": [std] * 3},
    }


@pytest.fixture
def staged(imports: Path, digits_cnn: dict[str, Any]) -> dict[str, Path]:
    """Copies of the CNN files and test sets inside the import directory."""
    copies = {}
    for name, source in digits_cnn["files"].items():
        copies[name] = imports / name
        copies[name].write_bytes(source.read_bytes())
    return copies


def _text(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


async def _call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, _text(result)
    return result.structured_content


async def _data_server(settings: Settings) -> Any:
    server = create_data_server(settings)
    if not any(tool.name == "preview_images" for tool in await server.list_tools()):
        register_image_tools(server)
    return server


def _artifact_files(settings: Settings) -> list[str]:
    root = settings.artifacts_dir
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def _evaluate(
    settings: Settings, model_file: str, dataset_file: str, preprocessing: dict[str, Any]
) -> dict[str, Any]:
    """Register, deploy and run a model on a dataset; return the model, dataset and run."""
    async with Client(create_model_server(settings)) as models:
        model = await _call(
            models,
            "register_model",
            {
                "name": "digits-cnn",
                "path": model_file,
                "preprocessing": preprocessing,
                "trusted": True,
            },
        )
    async with Client(await _data_server(settings)) as data:
        dataset = await _call(
            data, "register_dataset", {"name": "digits-test", "path": dataset_file}
        )
    async with Client(create_execution_server(settings)) as execution:
        await _call(
            execution, "create_deployment", {"name": "cnn-staging", "model_name": "digits-cnn"}
        )
        run = await _call(
            execution,
            "run_execution",
            {"deployment": "cnn-staging", "dataset": "digits-test", "label_column": "label"},
        )
        rows = await _call(execution, "get_predictions", {"execution_id": run["id"], "rows": 5})

    return {"model": model, "dataset": dataset, "run": run, "rows": rows["rows"]}


async def test_torchscript_cnn_on_zip_archive(
    settings: Settings, staged: dict[str, Path], digits_cnn: dict[str, Any]
) -> None:
    outcome = await _evaluate(settings, "cnn.pt", "test.zip", digits_cnn["preprocessing"])

    model, dataset, run = outcome["model"], outcome["dataset"], outcome["run"]
    assert model["format"] == "torchscript"
    assert model["framework"] == "pytorch"
    assert model["task_type"] == "classification"
    assert model["preprocessing"] == digits_cnn["preprocessing"]
    assert dataset["kind"] == "images"
    assert dataset["row_count"] == len(digits_cnn["y_test"])
    assert run["status"] == "succeeded", run["error"]
    assert run["rows_processed"] == len(digits_cnn["y_test"])
    assert run["metrics"]["accuracy"] > 0.9
    assert set(outcome["rows"][0]) == {"row", "prediction", "score", "label"}
    assert 0 < outcome["rows"][0]["score"] <= 1


async def test_export_program_on_npz(
    settings: Settings, staged: dict[str, Path], digits_cnn: dict[str, Any]
) -> None:
    outcome = await _evaluate(settings, "cnn.pt2", "test.npz", digits_cnn["preprocessing"])

    model, dataset, run = outcome["model"], outcome["dataset"], outcome["run"]
    assert model["format"] == "torch_export"
    assert model["signature"]["inputs"][0]["shape"] == [None, 3, 32, 32]
    assert model["signature"]["input_shape"] == [3, 32, 32]
    assert model["signature"]["n_classes"] == 10
    assert dataset["format"] == "npz"
    assert dataset["image_info"]["classes"] == [str(i) for i in range(10)]
    assert run["status"] == "succeeded", run["error"]
    assert run["metrics"]["accuracy"] > 0.9


async def test_untrusted_torchscript_is_not_loaded(
    settings: Settings, staged: dict[str, Path]
) -> None:
    before = await snapshot(settings)
    async with Client(create_model_server(settings)) as client:
        result = await client.call_tool("register_model", {"name": "script", "path": "cnn.pt"})

    message = _text(result)
    assert result.is_error
    assert "trusted=true" in message
    assert "torch.export" in message
    assert await snapshot(settings) == before


async def test_state_dict_rejected_with_export_hint(
    settings: Settings, staged: dict[str, Path]
) -> None:
    before = await snapshot(settings)
    files_before = _artifact_files(settings)
    async with Client(create_model_server(settings)) as client:
        result = await client.call_tool("register_model", {"name": "weights", "path": "weights.pt"})
        listed = await _call(client, "list_models", {})

    message = _text(result)
    assert result.is_error
    assert "state_dict" in message
    assert "class" in message
    assert "torch.jit.script(model).save" in message
    assert "torch.export.save(torch.export.export(model, (example,))" in message
    assert listed["models"] == []
    assert await snapshot(settings) == before
    assert _artifact_files(settings) == files_before


async def test_image_schema_has_classes_and_counts(
    settings: Settings, staged: dict[str, Path], digits_cnn: dict[str, Any]
) -> None:
    async with Client(await _data_server(settings)) as client:
        dataset = await _call(client, "register_dataset", {"name": "tar", "path": "test.tar.gz"})
        schema = await _call(client, "get_dataset_schema", {"name": "tar"})
        statistics = await _call(client, "get_dataset_statistics", {"name": "tar"})

    expected = np.bincount(digits_cnn["y_test"], minlength=10)
    info = dataset["image_info"]
    assert dataset["format"] == "image_archive"
    assert [c["name"] for c in schema["columns"]] == ["image", "label"]
    assert schema["columns"][0]["type"] == "uint8[32,32,3]"
    assert info["width"] == 32
    assert info["height"] == 32
    assert info["channels"] == 3
    assert info["classes"] == [str(i) for i in range(10)]
    assert info["counts_per_class"] == {str(i): int(n) for i, n in enumerate(expected)}
    assert sum(info["counts_per_class"].values()) == schema["row_count"]
    assert statistics["columns"]["label"]["distinct_count"] == 10
    assert len(statistics["columns"]["image"]["channel_mean"]) == 3


async def test_preview_images_returns_png_content(
    settings: Settings, staged: dict[str, Path]
) -> None:
    async with Client(await _data_server(settings)) as client:
        await _call(client, "register_dataset", {"name": "zip", "path": "test.zip"})
        result = await client.call_tool("preview_images", {"name": "zip", "count": 3})

    assert not result.is_error, _text(result)
    texts = [c for c in result.content if c.type == "text"]
    pictures = [c for c in result.content if c.type == "image"]
    assert json.loads(texts[0].text)["row_count"] > 0
    assert [t.text for t in texts[1:]] == [f"image {i}: class '{i - 1}'" for i in (1, 2, 3)]
    assert len(pictures) == 3
    for picture in pictures:
        assert picture.mime_type == "image/png"
        decoded = Image.open(io.BytesIO(base64.b64decode(picture.data)))
        assert decoded.size == (64, 64)


async def test_preview_images_rejects_table(settings: Settings, imports: Path) -> None:
    (imports / "table.csv").write_text("a,b\n1,2\n")
    async with Client(await _data_server(settings)) as client:
        await _call(client, "register_dataset", {"name": "table", "path": "table.csv"})
        result = await client.call_tool("preview_images", {"name": "table"})

    assert result.is_error
    assert "preview_dataset" in _text(result)


def _symlink_zip(path: Path, image: bytes) -> None:
    link = zipfile.ZipInfo("cat/link.png")
    link.external_attr = 0o120777 << 16
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("cat/1.png", image)
        archive.writestr(link, "/etc/passwd")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        pytest.param("../evil.png", "'../evil.png'", id="parent"),
        pytest.param("/tmp/evil.png", "'/tmp/evil.png'", id="absolute"),
        pytest.param("cat/../../evil.png", "'cat/../../evil.png'", id="nested-parent"),
        pytest.param(None, "'cat/link.png' is a symbolic link", id="symlink"),
    ],
)
async def test_unsafe_archive_entry_rejected(
    settings: Settings, imports: Path, digits_cnn: dict[str, Any], entry: str | None, expected: str
) -> None:
    image = _png(digits_cnn["x_test"][0])
    if entry is None:
        _symlink_zip(imports / "bad.zip", image)
    else:
        with zipfile.ZipFile(imports / "bad.zip", "w") as archive:
            archive.writestr("cat/1.png", image)
            archive.writestr(entry, image)

    before = await snapshot(settings)
    async with Client(await _data_server(settings)) as client:
        result = await client.call_tool("register_dataset", {"name": "bad", "path": "bad.zip"})

    assert result.is_error
    assert expected in _text(result)
    assert await snapshot(settings) == before


async def test_mixed_image_sizes_rejected(
    settings: Settings, imports: Path, digits_cnn: dict[str, Any]
) -> None:
    with zipfile.ZipFile(imports / "sizes.zip", "w") as archive:
        archive.writestr("a/1.png", _png(digits_cnn["x_test"][0]))
        archive.writestr("b/2.png", _png(digits_cnn["x_test"][1][:16]))

    async with Client(await _data_server(settings)) as client:
        result = await client.call_tool("register_dataset", {"name": "sizes", "path": "sizes.zip"})

    assert result.is_error
    assert "'b/2.png' is 32x16 pixels" in _text(result)


def _rewrite_archive(source: Path, target: Path, change: Any) -> None:
    """Copy a zip archive, passing each (name, data) through ``change``."""
    with zipfile.ZipFile(source) as reader, zipfile.ZipFile(target, "w") as writer:
        for name in reader.namelist():
            for new_name, data in change(name, reader.read(name)):
                writer.writestr(new_name, data)


class _MakeDirectory:
    """A pickle that creates a directory when unpickled without restrictions."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (str(self.path),)


async def test_export_archive_with_code_rejected(
    settings: Settings, staged: dict[str, Path], tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"

    def pickled_weight(name: str, data: bytes) -> list[tuple[str, bytes]]:
        if name.endswith("_weights_config.json"):
            config = json.loads(data)
            config["config"]["0.weight"]["use_pickle"] = True
            return [(name, json.dumps(config).encode())]
        if name.endswith("/data/weights/weight_0"):
            return [(name, pickle.dumps(_MakeDirectory(marker), protocol=2))]
        return [(name, data)]

    def compiled_library(name: str, data: bytes) -> list[tuple[str, bytes]]:
        if not name.endswith("/archive_format"):
            return [(name, data)]
        root = name.split("/", 1)[0]
        return [(name, data), (f"{root}/data/aotinductor/model/model.so", b"\x7fELF")]

    imports = staged["cnn.pt2"].parent
    _rewrite_archive(staged["cnn.pt2"], imports / "pickled.pt2", pickled_weight)
    _rewrite_archive(staged["cnn.pt2"], imports / "compiled.pt2", compiled_library)
    async with Client(create_model_server(settings)) as client:
        pickled = await client.call_tool("register_model", {"name": "p", "path": "pickled.pt2"})
        compiled = await client.call_tool("register_model", {"name": "c", "path": "compiled.pt2"})

    assert pickled.is_error
    assert "weight_0" in _text(pickled)
    assert not marker.exists()
    assert compiled.is_error
    assert "data/aotinductor/model/model.so" in _text(compiled)


def test_static_batch_program_pads_last_slice(tmp_path: Path, digits_cnn: dict[str, Any]) -> None:
    """A program exported for batches of 4 still predicts 10 images."""
    model = digits_cnn["model"]
    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(4, 3, 32, 32),)), path)
    doc = {"format": "torch_export", "preprocessing": digits_cnn["preprocessing"]}
    images = digits_cnn["x_test"][:10]

    predictor = TorchPredictor(path, doc, threads=1)
    predictions, scores = predictor.predict(images)

    settings = digits_cnn["preprocessing"]
    inputs = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    inputs = (inputs - settings["mean"][0]) / settings["std"][0]
    with torch.inference_mode():
        probabilities = torch.softmax(model(inputs), dim=1)
    assert predictor.static_batch == 4
    assert predictions.tolist() == probabilities.argmax(dim=1).tolist()
    assert np.allclose(scores, probabilities.max(dim=1).values.numpy(), atol=1e-5)


@pytest.mark.parametrize(
    ("preprocessing", "expected"),
    [
        pytest.param({"std": [0, 1, 1]}, "'std' values must be positive", id="zero-std"),
        pytest.param({"scale_by": 255}, "unknown preprocessing keys ['scale_by']", id="unknown"),
        pytest.param({"resize": [32]}, "'resize' must be a list of 2", id="short-resize"),
        pytest.param({"resize": [16, 16]}, "expects 32x32", id="wrong-size"),
    ],
)
async def test_bad_preprocessing_fails_clearly(
    settings: Settings,
    staged: dict[str, Path],
    preprocessing: dict[str, Any],
    expected: str,
) -> None:
    # Invalid settings are rejected at registration; settings that are valid
    # but do not fit the model or the data fail when the model runs.
    async with Client(create_model_server(settings)) as models:
        registered = await models.call_tool(
            "register_model",
            {"name": "cnn", "path": "cnn.pt2", "preprocessing": preprocessing},
        )
    deployed = run = None
    if not registered.is_error:
        async with Client(await _data_server(settings)) as data:
            await _call(data, "register_dataset", {"name": "npz", "path": "test.npz"})
        async with Client(create_execution_server(settings)) as execution:
            deployed = await execution.call_tool(
                "create_deployment", {"name": "cnn", "model_name": "cnn"}
            )
            if not deployed.is_error:
                run = await execution.call_tool(
                    "run_execution", {"deployment": "cnn", "dataset": "npz"}
                )

    failure = next(r for r in (registered, deployed, run) if r is not None and r.is_error)
    assert failure.is_error
    assert expected in _text(failure)
