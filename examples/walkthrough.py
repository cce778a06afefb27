"""A step-by-step tour of mlhub-mcp as an MCP client.

This script does by hand what `mlhub demo` does, one commented step at a
time. It starts the hub over stdio (the hub starts the model, data and
execution servers), then registers a model and a dataset, deploys the model,
runs it and reads the results back.

Run it from the repository root after `pip install -e .`:

    python examples/walkthrough.py

It keeps its data in a temporary directory, so it leaves nothing behind.
"""

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from mcp import Client, StdioServerParameters


def make_files(folder: Path) -> tuple[Path, Path]:
    """Step 0: train a classifier on the digits and write the files to register."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    features, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        features.astype(np.float32), labels, test_size=0.3, random_state=7
    )
    model = RandomForestClassifier(n_estimators=50, random_state=7).fit(x_train, y_train)

    model_path = folder / "digits-forest.onnx"
    model_path.write_bytes(
        to_onnx(model, x_train[:1], options={"zipmap": False}).SerializeToString()
    )

    table = {f"pixel_{i}": x_test[:, i] for i in range(64)}
    table["digit"] = y_test
    dataset_path = folder / "digits-test.csv"
    pa_csv.write_csv(pa.table(table), dataset_path)
    return model_path, dataset_path


def show(title: str, result: Any) -> dict[str, Any]:
    """Print a tool result and return its structured content."""
    if result.is_error:
        sys.exit(f"{title} failed: {result.content[0].text}")
    data = result.structured_content or {}
    print(f"\n== {title}")
    print(json.dumps(data, indent=2)[:800])
    return data


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model_path, dataset_path = make_files(folder)

        # Step 1: start the hub. MLHUB_HOME is where the catalog and the stored
        # files live; MLHUB_IMPORT_DIRS lists the folders tools may read from.
        hub = StdioServerParameters(
            command=sys.executable,
            args=["-m", "mlhub_mcp", "hub"],
            env={
                "MLHUB_HOME": str(folder / "home"),
                "MLHUB_IMPORT_DIRS": str(folder),
                "MLHUB_LOG_LEVEL": "WARNING",
            },
        )
        async with Client(hub, mode="legacy") as client:
            tools = await client.list_tools()
            print("tools:", ", ".join(sorted(t.name for t in tools.tools)))

            # Step 2: register the model. The server checks the ONNX file and
            # reads its input signature (64 float features) before storing it.
            show("register_model", await client.call_tool(
                "register_model",
                {"name": "digits-forest", "path": str(model_path),
                 "description": "Random forest, 50 trees"},
            ))

            # Step 3: register the dataset. It is parsed in batches, converted
            # to Parquet, and its schema and statistics are kept.
            show("register_dataset", await client.call_tool(
                "register_dataset", {"name": "digits-test", "path": str(dataset_path)}
            ))
            show("get_dataset_statistics", await client.call_tool(
                "get_dataset_statistics", {"name": "digits-test", "columns": ["digit"]}
            ))

            # Step 4: deploy the model. The execution server loads it once and
            # keeps it in memory for every execution of this deployment.
            show("create_deployment", await client.call_tool(
                "create_deployment",
                {"name": "forest-staging", "model_name": "digits-forest", "batch_size": 64},
            ))

            # Step 5: run it. feature_columns defaults to every column but the
            # label; progress notifications arrive while it runs.
            async def progress(done: float, total: float | None, message: str | None) -> None:
                print(f"  progress: {message}")

            execution = show("run_execution", await client.call_tool(
                "run_execution",
                {"deployment": "forest-staging", "dataset": "digits-test",
                 "label_column": "digit"},
                progress_callback=progress,
            ))

            # Step 6: read the predictions back, a page at a time.
            show("get_predictions", await client.call_tool(
                "get_predictions", {"execution_id": execution["id"], "rows": 5}
            ))

            # Step 7: resources give the same data to a client that reads them.
            card = await client.read_resource("models://digits-forest/card")
            print("\n== models://digits-forest/card\n" + card.contents[0].text)

            print(f"accuracy: {execution['metrics']['accuracy']:.3f}")


if __name__ == "__main__":
    anyio.run(main)
