"""Peak resident memory of the data and execution servers on a large CSV.

Usage: python benchmarks/bench_memory.py [--quick] [--size-mb N] [--batch-size N]

The script writes a CSV of about N MB (default 1024) in a temporary folder
under /tmp: ten float64 feature columns and an integer label. It starts the
data server and the execution server as stdio subprocesses (``python -m
mlhub_mcp serve data|execution``), sharing a temporary MLHUB_HOME, and through
an ``mcp.Client`` for each:

1. registers the CSV with ``register_dataset`` (the data server parses it
   and writes Parquet);
2. registers a LogisticRegression ONNX model in this process;
3. runs it over the dataset with ``create_deployment`` and ``run_execution``
   with the label column, so metrics and the confusion-matrix PNG are made.

For each server it reports the resident set size after start-up, the
highest value seen by polling /proc every 50 ms, and the kernel's peak
(VmHWM), read before the server exits.

Then it runs the two readers the servers use, each alone in a fresh
process, to show where the memory goes. The first is pyarrow's streaming
CSV reader on the CSV, with 4 MiB blocks (the data server's setting) and
with 1 MiB blocks. The second is ``ParquetFile.iter_batches`` on the stored
Parquet file, with ``pre_buffer`` on (pyarrow's default, which the
execution engine uses) and off. The folder, with the CSV, is deleted
at the end. The script prints figures only.
"""

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
from _common import (
    child_pids,
    mlhub_environment,
    print_header,
    print_table,
    process_memory_mib,
)
from mcp import Client, StdioServerParameters

from mlhub_mcp.config import Settings
from mlhub_mcp.models._registry import ModelRegistry
from mlhub_mcp.platform import open_platform

FEATURES = 10
CHUNK_ROWS = 100_000
TARGET_MIB = 300


def write_csv(path: Path, target_bytes: int) -> int:
    """Append random rows to ``path`` until it reaches ``target_bytes``, and return the rows."""
    rng = np.random.default_rng(0)
    weights = rng.normal(size=FEATURES)
    rows = 0
    with path.open("wb") as handle:
        while handle.tell() < target_bytes:
            features = rng.normal(size=(CHUNK_ROWS, FEATURES))
            columns: dict[str, Any] = {f"f{i}": features[:, i] for i in range(FEATURES)}
            columns["label"] = (features @ weights > 0).astype(np.int64)
            options = pa_csv.WriteOptions(include_header=rows == 0)
            pa_csv.write_csv(pa.table(columns), handle, write_options=options)
            rows += CHUNK_ROWS

    return rows


def write_model(path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    features = rng.normal(size=(5_000, FEATURES)).astype(np.float32)
    labels = (features.sum(axis=1) > 0).astype(np.int64)
    model = LogisticRegression().fit(features, labels)
    onnx_model = to_onnx(model, features[:1], options={"zipmap": False})
    path.write_bytes(onnx_model.SerializeToString())


class MemoryWatch:
    """A thread that polls the resident set size of one process and keeps the highest."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.polled_peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                rss, _ = process_memory_mib(self.pid)
            except (OSError, KeyError):
                return
            self.polled_peak = max(self.polled_peak, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "MemoryWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def server_params(name: str, env: dict[str, str], cwd: Path) -> StdioServerParameters:
    args = ["-m", "mlhub_mcp", "serve", name]
    return StdioServerParameters(command=sys.executable, args=args, env=env, cwd=str(cwd))


def server_pid(name: str) -> int:
    """Return the id of this process's child that runs ``serve NAME``."""
    for pid in child_pids():
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"serve" in command and name.encode() in command:
            return pid

    raise RuntimeError(f"no child process runs 'serve {name}'")


def check(result: Any, tool: str) -> dict[str, Any]:
    if result.is_error or result.structured_content is None:
        text = " ".join(getattr(c, "text", "") for c in result.content)
        raise RuntimeError(f"{tool} failed: {text}")
    return result.structured_content


async def main(size_mb: int, batch_size: int) -> None:
    print_header(f"memory: a {size_mb:,} MB CSV through the data and execution servers")
    scratch = Path(tempfile.mkdtemp(prefix="mlhub-bench-memory-", dir="/tmp"))
    try:
        await run(scratch, size_mb, batch_size)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        print(f"deleted {scratch}")


async def run(scratch: Path, size_mb: int, batch_size: int) -> None:
    imports = scratch / "imports"
    imports.mkdir()
    home = scratch / "home"
    csv_path = imports / "big.csv"

    started = time.perf_counter()
    rows = await anyio.to_thread.run_sync(write_csv, csv_path, size_mb * 1024 * 1024)
    csv_bytes = csv_path.stat().st_size
    elapsed = time.perf_counter() - started
    print(f"wrote {csv_path.name}: {csv_bytes / 2**20:,.0f} MiB, {rows:,} rows in {elapsed:.0f} s")
    write_model(imports / "model.onnx")

    env = mlhub_environment(home, imports)
    settings = Settings(home=home, import_dirs=[imports])
    results: list[list[object]] = []
    timings: list[list[object]] = []

    async with Client(server_params("data", env, scratch), mode="legacy") as data:
        pid = server_pid("data")
        idle, _ = process_memory_mib(pid)
        with MemoryWatch(pid) as watch:
            started = time.perf_counter()
            dataset = check(
                await data.call_tool("register_dataset", {"name": "big", "path": "big.csv"}),
                "register_dataset",
            )
            seconds = time.perf_counter() - started
        _, peak = process_memory_mib(pid)
        results.append(["data server: register_dataset", idle, watch.polled_peak, peak])
        mib_per_second = csv_bytes / 2**20 / seconds
        timings.append(["register_dataset", seconds, f"{mib_per_second:,.0f} MiB/s of CSV"])
        parquet_mib = dataset["size_bytes"] / 2**20
        print(f"dataset: {dataset['row_count']:,} rows, Parquet {parquet_mib:,.0f} MiB")

    async with open_platform(settings) as platform:
        await ModelRegistry(platform).register_file(name="model", path="model.onnx")

    async with Client(server_params("execution", env, scratch), mode="legacy") as execution:
        pid = server_pid("execution")
        check(
            await execution.call_tool(
                "create_deployment",
                {"name": "dep", "model_name": "model", "batch_size": batch_size},
            ),
            "create_deployment",
        )
        idle, _ = process_memory_mib(pid)
        with MemoryWatch(pid) as watch:
            started = time.perf_counter()
            run_doc = check(
                await execution.call_tool(
                    "run_execution",
                    {"deployment": "dep", "dataset": "big", "label_column": "label"},
                ),
                "run_execution",
            )
            seconds = time.perf_counter() - started
        _, peak = process_memory_mib(pid)
        label = f"execution server: run_execution (batch {batch_size:,})"
        results.append([label, idle, watch.polled_peak, peak])
        rate = run_doc["rows_processed"] / seconds
        timings.append(["run_execution", seconds, f"{rate:,.0f} rows/s"])

    headers = ["phase", "RSS after start MiB", "polled peak MiB", "VmHWM MiB"]
    print_table(headers, results)
    print_table(["call", "seconds", "rate"], timings)
    worst = max(row[3] for row in results if isinstance(row[3], float))
    print(f"highest peak: {worst:,.0f} MiB (target: at most {TARGET_MIB} MiB)")
    print()

    async with open_platform(settings) as platform:
        entry = await platform.catalog.find_one("datasets", {"name": "big"})
        assert entry is not None
        stored = await platform.artifacts.fetch(entry["artifact_key"])
    await diagnose(csv_path, stored, batch_size)


# Reads a file the way a server does and prints the growth of the resident
# set and the Arrow memory pool's peak, both in MiB, as one JSON line.
READER_PROBE = """
import json, sys
import pyarrow as pa, pyarrow.csv as pa_csv, pyarrow.parquet as pq
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
kind, path, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
before = rss("VmRSS")
if kind == "csv":
    options = pa_csv.ReadOptions(block_size=size)
    for batch in pa_csv.open_csv(path, read_options=options):
        pass
else:
    prebuffer = kind == "parquet-prebuffer"
    for batch in pq.ParquetFile(path, pre_buffer=prebuffer).iter_batches(batch_size=size):
        pass
pool = pa.default_memory_pool().max_memory() / 2**20
print(json.dumps({"rss": rss("VmHWM") - before, "pool": pool}))
"""


async def diagnose(csv_path: Path, parquet_path: Path, batch_size: int) -> None:
    """Measure the readers the servers use, each alone in a fresh process."""
    cases = [
        ("CSV, streaming reader, 4 MiB blocks", "csv", csv_path, 4 * 2**20),
        ("CSV, streaming reader, 1 MiB blocks", "csv", csv_path, 2**20),
        (
            "stored Parquet, iter_batches, pre_buffer=True",
            "parquet-prebuffer",
            parquet_path,
            batch_size,
        ),
        ("stored Parquet, iter_batches, pre_buffer=False", "parquet", parquet_path, batch_size),
    ]
    rows = []
    for label, kind, path, size in cases:
        command = [sys.executable, "-c", READER_PROBE, kind, str(path), str(size)]
        completed = await anyio.run_process(command, check=True)
        probe = json.loads(completed.stdout.decode().strip().splitlines()[-1])
        rows.append([label, probe["rss"], probe["pool"]])

    print("the readers alone, each in a fresh process:")
    print_table(["reader", "peak RSS growth MiB", "Arrow pool peak MiB"], rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 100 MB CSV")
    parser.add_argument("--size-mb", type=int, help="CSV size in MiB (default 1024)")
    parser.add_argument(
        "--batch-size", type=int, default=256, help="deployment batch size (default 256)"
    )
    arguments = parser.parse_args()
    size = arguments.size_mb or (100 if arguments.quick else 1024)
    anyio.run(main, size, arguments.batch_size)
