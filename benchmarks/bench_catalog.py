"""Latency of model listings and look-ups with a large catalog.

Usage: python benchmarks/bench_catalog.py [--quick] [--models N] [--calls N]
       [--backends embedded,mongodb]

The script fills a catalog with N model versions (default 100,000): one
model, ``many-versions``, has N/100 versions and every other name has one.
One entry in a hundred is a regression model and none is a PyTorch one, so
the filters on those fields select few or no entries. It then times the
registry methods behind the model server's tools, and three tool calls
through an in-process ``mcp.Client``. Each case gets warm-up calls and then
up to ``--calls`` timed calls, fewer when a case takes over 15 s, but at
least 5.

Backends: ``embedded`` is the SQLite catalog. ``mongodb`` is the MongoDB
catalog talking to nx-27017, a MongoDB wire-protocol server written in Python
on top of SQLite, started on a free port of 127.0.0.1 and stopped by its
process id afterwards. Figures for ``mongodb`` therefore describe nx-27017,
not a MongoDB server. The catalog is filled with bulk inserts that bypass the
catalog class (one SQLite transaction, or ``insert_many``); the indexes the
catalog creates are in place before the fill. The script prints figures only.
"""

import argparse
import json
import os
import secrets
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
from _common import (
    free_port,
    print_header,
    print_table,
    start_process,
    stop_process,
    summarize_ms,
    wait_for_port,
)
from mcp import Client

from mlhub_mcp.config import Settings
from mlhub_mcp.models._registry import ModelRegistry
from mlhub_mcp.models.server import create_model_server
from mlhub_mcp.platform import open_platform

MANY = "many-versions"
INSERT_BATCH = 1_000
TIME_BUDGET = 15.0
MIN_CALLS = 5


def model_documents(count: int) -> Iterator[dict[str, Any]]:
    """Yield ``count`` model versions shaped like registered ONNX files, oldest first."""
    many_every = 100
    start_millis = int(time.time() * 1000) - count
    single = 0
    many = 0
    for index in range(count):
        if index % many_every == many_every // 2:
            many += 1
            name, version = MANY, many
        else:
            name, version = f"model-{single:06d}", 1
            single += 1
        task = "regression" if index % 100 == 7 else "classification"
        sha = secrets.token_hex(32)
        yield {
            "id": f"{start_millis + index:012x}{secrets.token_hex(6)}",
            "name": name,
            "version": version,
            "kind": "file",
            "description": "benchmark entry",
            "task_type": task,
            "framework": "onnx",
            "format": "onnx",
            "file_name": "model.onnx",
            "size_bytes": 4416,
            "sha256": sha,
            "artifact_key": f"sha256/{sha[:2]}/{sha}",
            "signature": {
                "inputs": [{"name": "X", "dtype": "float32", "shape": [None, 10]}],
                "outputs": [{"name": "label", "dtype": "int64", "shape": [None]}],
                "n_features": 10,
            },
            "trusted": False,
            "preprocessing": {},
            "created_at": "2026-01-01T00:00:00.000+00:00",
        }


def fill_embedded(path: Path, documents: list[dict[str, Any]]) -> None:
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO models (id, doc) VALUES (?, ?)",
            ((doc["id"], json.dumps(doc)) for doc in documents),
        )
        connection.execute("COMMIT")
    finally:
        connection.close()


def fill_mongodb(uri: str, database: str, documents: list[dict[str, Any]]) -> None:
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        collection = client[database]["models"]
        for start in range(0, len(documents), INSERT_BATCH):
            chunk = documents[start : start + INSERT_BATCH]
            collection.insert_many(
                [{"_id": doc["id"], **{k: v for k, v in doc.items() if k != "id"}} for doc in chunk]
            )
    finally:
        client.close()


async def time_calls(
    call: Callable[[], Awaitable[Any]], calls: int, warmup: int
) -> dict[str, float]:
    """Time up to ``calls`` calls after ``warmup`` ones, stopping early after TIME_BUDGET s.

    At least MIN_CALLS calls are timed, so a slow case still gets a p50.
    """
    started = time.perf_counter()
    for _ in range(warmup):
        await call()
        if time.perf_counter() - started > TIME_BUDGET / 4:
            break

    durations: list[float] = []
    budget_end = time.perf_counter() + TIME_BUDGET
    while len(durations) < calls:
        started = time.perf_counter()
        await call()
        durations.append(time.perf_counter() - started)
        if len(durations) >= MIN_CALLS and time.perf_counter() > budget_end:
            break

    return {**summarize_ms(durations), "calls": len(durations)}


async def measure_backend(
    settings: Settings, documents: list[dict[str, Any]], calls: int
) -> list[list[object]]:
    middle_cursor = documents[len(documents) // 2]["id"]
    last_cursor = documents[-26]["id"]
    single = "model-000123"
    many_versions = sum(1 for doc in documents if doc["name"] == MANY)
    rows: list[list[object]] = []

    async with open_platform(settings) as platform, Client(create_model_server(settings)) as mcp:
        registry = ModelRegistry(platform)
        catalog = platform.catalog
        any_id = documents[len(documents) // 3]["id"]

        async def tool(name: str, arguments: dict[str, Any]) -> None:
            result = await mcp.call_tool(name, arguments)
            if result.is_error:
                raise RuntimeError(f"{name} failed: {result.content}")

        cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("list first page (50)", lambda: registry.list_page(limit=50)),
            ("list middle page by cursor", lambda: registry.list_page(cursor=middle_cursor)),
            ("list last page by cursor", lambda: registry.list_page(cursor=last_cursor)),
            ("catalog get by id", lambda: catalog.get("models", any_id)),
            ("get_model by name (1 version)", lambda: registry.get(single)),
            (
                f"get_model by name ({many_versions} versions)",
                lambda: registry.get(MANY),
            ),
            (
                f"get_model name + version ({many_versions} versions)",
                lambda: registry.get(MANY, many_versions // 2),
            ),
            (
                f"list_model_versions ({many_versions})",
                lambda: registry.versions(MANY),
            ),
            (
                "list name filter, first page",
                lambda: registry.list_page(name=MANY),
            ),
            (
                "list task_type filter (1 in 100)",
                lambda: registry.list_page(task_type="regression"),
            ),
            (
                "list framework filter (no match)",
                lambda: registry.list_page(framework="pytorch"),
            ),
            ("tool list_models first page (in-process MCP)", lambda: tool("list_models", {})),
            (
                "tool get_model (1 version, in-process MCP)",
                lambda: tool("get_model", {"name": single}),
            ),
            (
                f"tool get_model ({many_versions} versions, in-process MCP)",
                lambda: tool("get_model", {"name": MANY}),
            ),
        ]
        for label, call in cases:
            stats = await time_calls(call, calls, warmup=max(3, calls // 10))
            rows.append([label, stats["p50"], stats["p95"], stats["mean"], stats["calls"]])

        insert_calls = max(5, calls // 10)
        for label, name in (("new name", None), (f"{many_versions} versions", MANY)):
            durations = []
            for index in range(insert_calls):
                doc = dict(documents[0], id=f"{int(time.time() * 1000):012x}{secrets.token_hex(6)}")
                doc["name"] = name or f"fresh-{index}"
                started = time.perf_counter()
                await registry._insert_next_version(doc)
                durations.append(time.perf_counter() - started)
            stats = summarize_ms(durations)
            label = f"insert next version ({label})"
            rows.append([label, stats["p50"], stats["p95"], stats["mean"], insert_calls])

    return rows


async def run_embedded(folder: Path, documents: list[dict[str, Any]], calls: int) -> Any:
    settings = Settings(home=folder / "embedded", import_dirs=[folder])
    async with open_platform(settings):
        pass
    started = time.perf_counter()
    fill_embedded(settings.catalog_path, documents)
    print(f"embedded: filled {len(documents):,} models in {time.perf_counter() - started:.1f} s")
    return await measure_backend(settings, documents, calls)


async def run_mongodb(folder: Path, documents: list[dict[str, Any]], calls: int) -> Any:
    data_dir = folder / "nx-27017"
    data_dir.mkdir()
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "nx-27017"),
        "--host",
        "127.0.0.1",
        "-p",
        str(port),
        "--data-dir",
        str(data_dir),
        "--log-file",
        str(data_dir / "nx.log"),
        "--pid-file",
        str(data_dir / "nx.pid"),
    ]
    with (data_dir / "server.out").open("wb") as log:
        process = start_process(command, env=dict(os.environ), log=log)
    try:
        wait_for_port(port, process)
        uri = f"mongodb://127.0.0.1:{port}"
        settings = Settings(
            home=folder / "mongodb",
            import_dirs=[folder],
            catalog_backend="mongodb",
            mongodb_uri=uri,
            mongodb_database="bench",
        )
        async with open_platform(settings):
            pass
        started = time.perf_counter()
        await anyio.to_thread.run_sync(fill_mongodb, uri, "bench", documents)
        elapsed = time.perf_counter() - started
        print(f"mongodb (nx-27017): filled {len(documents):,} models in {elapsed:.1f} s")
        return await measure_backend(settings, documents, calls)
    finally:
        stop_process(process)


async def main(count: int, calls: int, backends: list[str]) -> None:
    print_header(f"catalog: {count:,} model versions, {calls} timed calls per case")
    documents = list(model_documents(count))
    runners = {"embedded": run_embedded, "mongodb": run_mongodb}
    with tempfile.TemporaryDirectory(prefix="mlhub-bench-catalog-") as scratch:
        for backend in backends:
            rows = await runners[backend](Path(scratch), documents, calls)
            print(f"\n{backend} ({count:,} models), ms per call:")
            print_table(["operation", "p50 ms", "p95 ms", "mean ms", "calls"], rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 models, 30 calls per case")
    parser.add_argument("--models", type=int, help="model versions (default 100,000)")
    parser.add_argument("--calls", type=int, help="timed calls per case (default 100)")
    parser.add_argument(
        "--backends", default="embedded,mongodb", help="comma-separated: embedded, mongodb"
    )
    arguments = parser.parse_args()
    model_count = arguments.models or (10_000 if arguments.quick else 100_000)
    call_count = arguments.calls or (30 if arguments.quick else 100)
    chosen = [b for b in arguments.backends.split(",") if b]
    anyio.run(main, model_count, call_count, chosen)
