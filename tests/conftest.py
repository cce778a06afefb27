"""Fixtures shared by the test suite: isolated settings and the digits files."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlhub_mcp.config import Settings, load_settings


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings on a fresh data directory, with ``tmp_path/imports`` as import directory."""
    imports = tmp_path / "imports"
    imports.mkdir()
    monkeypatch.setenv("MLHUB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLHUB_IMPORT_DIRS", str(imports))
    monkeypatch.delenv("MLHUB_CONFIG", raising=False)
    monkeypatch.delenv("MLHUB_CATALOG", raising=False)
    monkeypatch.delenv("MLHUB_ARTIFACTS", raising=False)
    monkeypatch.chdir(tmp_path)
    return load_settings()


@pytest.fixture(scope="session")
def digits_split() -> dict[str, Any]:
    """The digits set split 70/30, as float32 features and int64 labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    features, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        features.astype(np.float32), labels, test_size=0.3, random_state=0, stratify=labels
    )
    return {"x_train": x_train, "x_test": x_test, "y_train": y_train, "y_test": y_test}


@pytest.fixture(scope="session")
def digits_files(
    tmp_path_factory: pytest.TempPathFactory, digits_split: dict[str, Any]
) -> dict[str, Any]:
    """An ONNX logistic regression trained on digits, the test split as CSV, and the model."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    folder = tmp_path_factory.mktemp("digits")
    model = LogisticRegression(max_iter=3000).fit(digits_split["x_train"], digits_split["y_train"])
    onnx_path = folder / "digits.onnx"
    onnx_model = to_onnx(model, digits_split["x_train"][:1], options={"zipmap": False})
    onnx_path.write_bytes(onnx_model.SerializeToString())

    x_test = digits_split["x_test"]
    columns: dict[str, Any] = {f"pixel_{i}": x_test[:, i] for i in range(x_test.shape[1])}
    columns["label"] = digits_split["y_test"].astype(np.int64)
    csv_path = folder / "digits_test.csv"
    pa_csv.write_csv(pa.table(columns), csv_path)
    return {"onnx": onnx_path, "csv": csv_path, "model": model}


@pytest.fixture
def imports(settings: Settings) -> Path:
    return settings.import_dirs[0]


@pytest.fixture
def staged_digits(imports: Path, digits_files: dict[str, Any]) -> dict[str, Path]:
    """Copies of the digits model and dataset inside the import directory."""
    onnx = imports / "digits.onnx"
    csv = imports / "digits_test.csv"
    onnx.write_bytes(digits_files["onnx"].read_bytes())
    csv.write_bytes(digits_files["csv"].read_bytes())
    return {"onnx": onnx, "csv": csv}


async def snapshot(settings: Settings) -> dict[str, Any]:
    """Count catalog entries per collection and list stored objects and temporary files."""
    from mlhub_mcp.catalog import COLLECTIONS
    from mlhub_mcp.platform import open_platform

    async with open_platform(settings) as platform:
        counts = {c: await platform.catalog.count(c) for c in COLLECTIONS}
        keys = await platform.artifacts.list_keys()

    scratch = settings.home / "tmp"
    leftovers = (
        sorted(p.name for p in scratch.rglob("*") if p.is_file()) if scratch.is_dir() else []
    )
    staging = settings.artifacts_dir / "tmp"
    partial = sorted(p.name for p in staging.iterdir()) if staging.is_dir() else []
    return {"counts": counts, "keys": keys, "scratch": leftovers, "partial": partial}
