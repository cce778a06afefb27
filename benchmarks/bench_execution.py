"""Rows per second of an execution against the raw pipeline it wraps.

Usage: python benchmarks/bench_execution.py [--quick] [--rows N] [--repeats N]
       [--batch-sizes 256,50000] [--models logreg10,digits64]

For each model the script writes a dataset of N rows (default 1,000,000),
registers it and the model in a temporary MLHUB_HOME, and then times, with
the runs interleaved:

- raw: pyarrow reads the stored Parquet file batch by batch, onnxruntime
  predicts each batch, and pyarrow writes the predictions and the top-class
  probability to Parquet. This is the floor every variant is compared with;
- service: ExecutionService.run in this process, without a label column, so
  no metrics are computed;
- service+metrics: the same with the label column, so the run also computes
  the metrics and draws the confusion-matrix PNG;
- mcp: the run_execution tool of the execution server through an in-process
  ``mcp.Client`` (wait=true, with the label column);
- mlflow pyfunc: the same model saved as an MLflow model and run batch by
  batch with ``mlflow.pyfunc`` (see _mlflow_batch.py). It needs a Python
  with mlflow-skinny and onnx, named by ``--mlflow-python`` (default
  /tmp/mlflow-venv/bin/python), and is skipped when there is none. Its time
  is measured inside that process, without interpreter start and imports.

All variants read the same stored (zstd) Parquet file and use one
onnxruntime thread, the deployment default. Models: ``logreg10`` is a
LogisticRegression on 10 random float features; ``digits64`` is a
LogisticRegression on scikit-learn's 8x8 digits, run over digits rows
resampled with noise. Both are exported with skl2onnx.

A breakdown of where a service run spends its time is measured by wrapping
the engine's methods with timers in this process. The script prints figures
only.
"""

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _common import print_header, print_table
from mcp import Client

from mlhub_mcp.artifacts.local import LocalArtifactStore
from mlhub_mcp.config import Settings
from mlhub_mcp.datasets._registry import DatasetRegistry
from mlhub_mcp.execution import _local, _service
from mlhub_mcp.execution._metrics import classification_metrics
from mlhub_mcp.execution._service import ExecutionService
from mlhub_mcp.execution.server import create_execution_server
from mlhub_mcp.models._registry import ModelRegistry
from mlhub_mcp.platform import Platform, open_platform

TRAIN_ROWS = 10_000
MLFLOW_PYTHON = "/tmp/mlflow-venv/bin/python"
THREADS = 1


@dataclass
class Workload:
    """A model file, a dataset file and the columns the model reads."""

    name: str
    model_path: Path
    data_path: Path
    features: list[str]
    label: str = "label"


def write_logreg10(folder: Path, rows: int) -> Workload:
    """Write 10 random float32 features, a linear label and a LogisticRegression."""
    from sklearn.linear_model import LogisticRegression

    width = 10
    rng = np.random.default_rng(0)
    features = rng.normal(size=(rows, width)).astype(np.float32)
    weights = rng.normal(size=width).astype(np.float32)
    labels = (features @ weights > 0).astype(np.int64)
    train = min(rows, TRAIN_ROWS)
    model = LogisticRegression().fit(features[:train], labels[:train])
    return _write_workload(folder, "logreg10", model, features, labels)


def write_digits64(folder: Path, rows: int) -> Workload:
    """Write digits rows resampled to ``rows`` with noise, and a digits classifier."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    images, targets = load_digits(return_X_y=True)
    model = LogisticRegression(max_iter=3000).fit(images.astype(np.float32), targets)
    rng = np.random.default_rng(1)
    picks = rng.integers(0, len(images), size=rows)
    noise = rng.normal(scale=0.5, size=(rows, images.shape[1]))
    features = (images[picks] + noise).astype(np.float32)
    return _write_workload(folder, "digits64", model, features, targets[picks].astype(np.int64))


def _write_workload(
    folder: Path, name: str, model: Any, features: np.ndarray, labels: np.ndarray
) -> Workload:
    from skl2onnx import to_onnx

    model_path = folder / f"{name}.onnx"
    onnx_model = to_onnx(model, features[:1], options={"zipmap": False})
    model_path.write_bytes(onnx_model.SerializeToString())

    names = [f"f{i}" for i in range(features.shape[1])]
    columns = {column: features[:, i] for i, column in enumerate(names)}
    data_path = folder / f"{name}.parquet"
    pq.write_table(pa.table({**columns, "label": labels}), data_path)
    return Workload(name, model_path, data_path, names)


WORKLOADS: dict[str, Callable[[Path, int], Workload]] = {
    "logreg10": write_logreg10,
    "digits64": write_digits64,
}


def run_raw(model_path: Path, data_path: Path, features: list[str], batch_size: int) -> int:
    """Read, predict and write with pyarrow and onnxruntime alone, and return the rows done."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    rows = 0
    with tempfile.NamedTemporaryFile(suffix=".parquet") as output:
        writer = None
        parquet = pq.ParquetFile(data_path)
        for batch in parquet.iter_batches(batch_size=batch_size, columns=features):
            matrix = np.column_stack([column.to_numpy() for column in batch.columns])
            labels, probabilities = session.run(None, {input_name: matrix})
            table = pa.table({"prediction": labels, "score": probabilities.max(axis=1)})
            if writer is None:
                writer = pq.ParquetWriter(output.name, table.schema)
            writer.write_table(table)
            rows += batch.num_rows
        if writer is not None:
            writer.close()

    return rows


@dataclass
class Timers:
    """Seconds spent in instrumented steps of one service run."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, elapsed: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + elapsed


@contextmanager
def instrumented(timers: Timers) -> Iterator[None]:
    """Time the engine's batch steps, metrics, plot and artifact copies while active."""
    patches = [
        (_local.BatchRunner, "step", "batches (worker thread)"),
        (_local.BatchRunner, "close", "close the Parquet writer"),
        (ExecutionService, "_metrics", "metrics (on the event loop)"),
        (_service, "confusion_matrix_png", "confusion-matrix PNG (worker thread)"),
        (LocalArtifactStore, "_copy_in", "copy into the store: sha256 + fsync"),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, label in patches:
        setattr(owner, name, _timed(getattr(owner, name), label, timers))

    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def _timed(function: Callable[..., Any], label: str, timers: Timers) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            timers.add(label, time.perf_counter() - started)

    return timed


async def _ignore_progress(progress: float, total: float | None, message: str | None) -> None:
    return None


class Bench:
    """One registered workload and the variants that run it."""

    def __init__(
        self,
        platform: Platform,
        service: ExecutionService,
        mcp: Client,
        mlflow_python: str | None,
    ) -> None:
        self.platform = platform
        self.service = service
        self.mcp = mcp
        self.mlflow_python = mlflow_python
        self.stored_data: Path | None = None

    async def register(self, workload: Workload) -> None:
        model = ModelRegistry(self.platform)
        await model.register_file(name=workload.name, path=str(workload.model_path))
        dataset = await DatasetRegistry(self.platform).register(
            name=workload.name, path=str(workload.data_path)
        )
        self.stored_data = await self.platform.artifacts.fetch(dataset["artifact_key"])

    async def deploy(self, workload: Workload, batch_size: int) -> str:
        name = f"{workload.name}-{batch_size}"
        await self.service.create_deployment(
            name=name,
            model_name=workload.name,
            model_version=None,
            environment="development",
            batch_size=batch_size,
            threads=THREADS,
            engine="local",
        )
        result = await self.mcp.call_tool(
            "create_deployment",
            {"name": f"{name}-mcp", "model_name": workload.name, "batch_size": batch_size},
        )
        if result.is_error:
            raise RuntimeError(f"create_deployment failed: {result.content}")
        return name

    async def raw(self, workload: Workload, batch_size: int) -> int:
        assert self.stored_data is not None
        return run_raw(workload.model_path, self.stored_data, workload.features, batch_size)

    async def mlflow(self, workload: Workload, batch_size: int) -> tuple[int, float]:
        """Run the MLflow peer in its own venv, and return its rows and its own timing."""
        assert self.mlflow_python is not None and self.stored_data is not None
        script = Path(__file__).with_name("_mlflow_batch.py")
        command = [
            self.mlflow_python,
            str(script),
            str(workload.model_path),
            str(self.stored_data),
            str(batch_size),
            *workload.features,
        ]
        completed = await anyio.run_process(command, check=True)
        report = json.loads(completed.stdout.decode().strip().splitlines()[-1])
        return int(report["rows"]), float(report["seconds"])

    async def service_run(
        self, workload: Workload, deployment: str, label: str | None, timers: Timers | None
    ) -> int:
        doc = await self.service.prepare(
            deployment_name=deployment,
            dataset_name=workload.name,
            batch_size=None,
            feature_columns=workload.features,
            label_column=label,
            engine=None,
        )
        if timers is None:
            doc = await self.service.run(doc["id"], _ignore_progress)
        else:
            with instrumented(timers):
                doc = await self.service.run(doc["id"], _ignore_progress)
        if doc["status"] != "succeeded":
            raise RuntimeError(f"execution {doc['id']} ended {doc['status']}: {doc['error']}")
        return int(doc["rows_processed"])

    async def mcp_run(self, workload: Workload, deployment: str) -> int:
        result = await self.mcp.call_tool(
            "run_execution",
            {
                "deployment": f"{deployment}-mcp",
                "dataset": workload.name,
                "feature_columns": workload.features,
                "label_column": workload.label,
            },
        )
        if result.is_error or result.structured_content is None:
            raise RuntimeError(f"run_execution failed: {result.content}")
        return int(result.structured_content["rows_processed"])


async def measure(
    bench: Bench, workload: Workload, batch_size: int, repeats: int
) -> tuple[list[list[object]], list[tuple[str, Timers, float]]]:
    deployment = await bench.deploy(workload, batch_size)
    variants: dict[str, Callable[[], Awaitable[int]]] = {
        "raw": lambda: bench.raw(workload, batch_size),
        "service": lambda: bench.service_run(workload, deployment, None, None),
        "service+metrics": lambda: bench.service_run(workload, deployment, "label", None),
        "mcp": lambda: bench.mcp_run(workload, deployment),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    if bench.mlflow_python:
        times["mlflow pyfunc"] = []
    rows = 0
    for _ in range(repeats):
        for name, run in variants.items():
            started = time.perf_counter()
            rows = await run()
            times[name].append(time.perf_counter() - started)
        if bench.mlflow_python:
            _, seconds = await bench.mlflow(workload, batch_size)
            times["mlflow pyfunc"].append(seconds)

    breakdowns = []
    for label in (None, workload.label):
        timers = Timers()
        started = time.perf_counter()
        await bench.service_run(workload, deployment, label, timers)
        variant = "service+metrics" if label else "service"
        breakdowns.append((variant, timers, time.perf_counter() - started))

    table = []
    for name, seconds in times.items():
        # Each round ran every variant back to back, so load from other
        # processes moves both sides of a round's ratio alike. The median
        # of the per-round ratios is reported.
        ratios = [raw / own for raw, own in zip(times["raw"], seconds, strict=True)]
        table.append(
            [
                workload.name,
                batch_size,
                name,
                statistics.median(seconds),
                min(seconds),
                rows / statistics.median(seconds),
                statistics.median(ratios),
            ]
        )

    return table, breakdowns


async def main(
    rows: int, repeats: int, batch_sizes: list[int], models: list[str], mlflow_python: str
) -> None:
    print_header(f"execution throughput: {rows:,} rows, {repeats} interleaved repeats")
    if not mlflow_python or not Path(mlflow_python).is_file():
        print(f"MLflow peer skipped: no Python with MLflow at {mlflow_python}")
        mlflow_python = ""
    with tempfile.TemporaryDirectory(prefix="mlhub-bench-exec-") as scratch:
        folder = Path(scratch)
        settings = Settings(home=folder / "home", import_dirs=[folder])
        table: list[list[object]] = []
        breakdowns: list[tuple[str, int, str, Timers, float]] = []
        metric_times: list[list[object]] = []
        async with (
            open_platform(settings) as platform,
            anyio.create_task_group() as group,
            Client(create_execution_server(settings)) as mcp,
        ):
            service = ExecutionService(platform, group)
            bench = Bench(platform, service, mcp, mlflow_python or None)
            for model in models:
                started = time.perf_counter()
                workload = WORKLOADS[model](folder, rows)
                await bench.register(workload)
                elapsed = time.perf_counter() - started
                print(f"{model}: wrote and registered {rows:,} rows in {elapsed:.1f} s", flush=True)
                for batch_size in batch_sizes:
                    rows_table, parts = await measure(bench, workload, batch_size, repeats)
                    table.extend(rows_table)
                    for variant, timers, seconds in parts:
                        breakdowns.append((model, batch_size, variant, timers, seconds))
                metric_times.append([model, *time_metrics(workload)])
            group.cancel_scope.cancel()

    headers = [
        "model",
        "batch",
        "variant",
        "median s",
        "best s",
        "rows/s",
        "of raw (median of rounds)",
    ]
    print_table(headers, table)
    print("where one service run spends its time (timers wrapped around methods):")
    rows_out = []
    for model, batch_size, variant, timers, seconds in breakdowns:
        accounted = sum(timers.seconds.values())
        parts = dict(timers.seconds, **{"rest (catalog writes, thread hops)": seconds - accounted})
        for label, value in parts.items():
            rows_out.append([model, batch_size, variant, label, value, value / seconds])
    print_table(["model", "batch", "variant", "step", "seconds", "share"], rows_out)
    print(f"classification metrics alone on {rows:,} labels and predictions:")
    headers = ["model", "classification_metrics s", "np.bincount confusion matrix s"]
    print_table(headers, metric_times)


def time_metrics(workload: Workload) -> list[float]:
    """Time the execution's metrics on the dataset's labels against a plain bincount.

    The bincount is the confusion matrix every reported metric can be derived
    from, so its time is a floor for any implementation of them.
    """
    labels = pq.read_table(workload.data_path, columns=[workload.label]).column(0).to_numpy()
    rng = np.random.default_rng(2)
    predictions = np.where(rng.random(len(labels)) < 0.9, labels, (labels + 1) % 2)

    started = time.perf_counter()
    classification_metrics(labels, predictions)
    library = time.perf_counter() - started

    started = time.perf_counter()
    classes, codes = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    width = len(classes)
    pairs = codes[: len(labels)] * width + codes[len(labels) :]
    np.bincount(pairs, minlength=width * width).reshape(width, width)
    floor = time.perf_counter() - started
    return [library, floor]


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 rows, 2 repeats")
    parser.add_argument("--rows", type=int, help="dataset rows (default 1,000,000)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default 3)")
    parser.add_argument(
        "--batch-sizes",
        type=_sizes,
        default=[256, 50_000],
        help="comma-separated rows per batch (default 256,50000; 256 is the deployment default)",
    )
    parser.add_argument(
        "--models",
        default="logreg10,digits64",
        help=f"comma-separated workloads among {', '.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--mlflow-python",
        default=MLFLOW_PYTHON,
        help=f"Python of a venv with mlflow-skinny and onnx (default {MLFLOW_PYTHON}); '' skips",
    )
    arguments = parser.parse_args()
    row_count = arguments.rows or (100_000 if arguments.quick else 1_000_000)
    repeat_count = arguments.repeats or (2 if arguments.quick else 3)
    chosen = [m for m in arguments.models.split(",") if m]
    anyio.run(main, row_count, repeat_count, arguments.batch_sizes, chosen, arguments.mlflow_python)
