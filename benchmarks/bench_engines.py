"""Measure rows per second of the local and the Spark engine.

Usage: python benchmarks/bench_engines.py [--rows N] [--batch-size N]

The script writes N rows (default 1,000,000) of 10 random float32 features and
a binary label. It trains a LogisticRegression on the first 10,000 rows and
exports it to ONNX. Then it runs the model through ExecutionService in a
temporary MLHUB_HOME, once on the local engine and twice on the Spark engine.
The first Spark run includes starting the Spark session. Set MLHUB_SPARK_MASTER to choose the
master (default ``local[*]``). The runs pass no label column, so the times
cover reading, inference and storing the predictions, but no metrics or
confusion-matrix plot. The script prints figures only.
"""

import argparse
import os
import platform as host
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlhub_mcp.config import Settings
from mlhub_mcp.datasets._registry import DatasetRegistry
from mlhub_mcp.execution import _spark
from mlhub_mcp.execution._service import ExecutionService
from mlhub_mcp.models._registry import ModelRegistry
from mlhub_mcp.platform import open_platform

FEATURES = 10
TRAIN_ROWS = 10_000


def write_inputs(folder: Path, rows: int) -> None:
    """Write the dataset and the ONNX model into ``folder``."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    weights = rng.normal(size=FEATURES).astype(np.float32)
    labels = (features @ weights > 0).astype(np.int64)

    train = min(rows, TRAIN_ROWS)
    model = LogisticRegression().fit(features[:train], labels[:train])
    onnx_model = to_onnx(model, features[:1], options={"zipmap": False})
    (folder / "model.onnx").write_bytes(onnx_model.SerializeToString())

    columns = {f"x{i}": features[:, i] for i in range(FEATURES)}
    pq.write_table(pa.table({**columns, "label": labels}), folder / "data.parquet")


async def _ignore_progress(progress: float, total: float | None, message: str | None) -> None:
    return None


async def run_engine(service: ExecutionService, engine: str, batch_size: int) -> dict[str, Any]:
    doc = await service.prepare(
        deployment_name="bench",
        dataset_name="bench",
        batch_size=batch_size,
        feature_columns=[f"x{i}" for i in range(FEATURES)],
        label_column=None,
        engine=engine,
    )
    started = time.perf_counter()
    doc = await service.run(doc["id"], _ignore_progress)
    return {**doc, "wall_seconds": time.perf_counter() - started}


async def main(rows: int, batch_size: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mlhub-bench-") as scratch:
        folder = Path(scratch)
        started = time.perf_counter()
        write_inputs(folder, rows)
        print(f"wrote {rows:,} rows x {FEATURES} features in {time.perf_counter() - started:.1f} s")

        settings = Settings(home=folder / "home", import_dirs=[folder])
        async with open_platform(settings) as platform, anyio.create_task_group() as group:
            await ModelRegistry(platform).register_file(
                name="bench", path=str(folder / "model.onnx")
            )
            await DatasetRegistry(platform).register(
                name="bench", path=str(folder / "data.parquet")
            )
            service = ExecutionService(platform, group)
            await service.create_deployment(
                name="bench",
                model_name="bench",
                model_version=None,
                environment="development",
                batch_size=batch_size,
                threads=1,
                engine="local",
            )

            runs = [("local", await run_engine(service, "local", batch_size))]
            runs.append(("spark, cold start", await run_engine(service, "spark", batch_size)))
            runs.append(("spark, warm", await run_engine(service, "spark", batch_size)))
            _spark.stop_spark_session()

    print(
        f"host: {host.python_implementation()} {host.python_version()}, "
        f"{os.cpu_count()} CPUs; spark master {_spark.spark_master()}; batch size {batch_size:,}"
    )
    print(f"{'engine':<18} {'status':<10} {'seconds':>8} {'rows/s':>12}")
    for label, doc in runs:
        seconds = doc["wall_seconds"]
        rate = doc["rows_processed"] / seconds if seconds > 0 else float("nan")
        print(f"{label:<18} {doc['status']:<10} {seconds:>8.2f} {rate:>12,.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="number of dataset rows (default 1,000,000)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=50_000, help="rows per model call (default 50,000)"
    )
    arguments = parser.parse_args()
    anyio.run(main, arguments.rows, arguments.batch_size)
