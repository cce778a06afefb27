"""``mlhub demo``: the whole flow through the hub, on scikit-learn's digits.

The digits set (1,797 images of 8x8 pixels, 10 classes) ships with
scikit-learn, so the demo needs no download. It trains a classifier, exports it
to ONNX, starts the hub (which starts the three servers), registers the model
and the held-out split, deploys the model and runs it with progress, then
prints the metrics and where the predictions are.
"""

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from mlhub_mcp.config import HOME_ENV, IMPORT_DIRS_ENV, load_settings, passthrough_environment

MODEL_NAME = "digits-classifier"
DATASET_NAME = "digits-holdout"
DEPLOYMENT_NAME = "digits-demo"


def prepare_files(folder: Path) -> tuple[Path, Path, int]:
    """Train the classifier and write the ONNX model and the held-out CSV.

    Returns the model path, the dataset path and the number of held-out rows.
    """
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = load_digits(return_X_y=True)
    features = features.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.3, random_state=42, stratify=labels
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x_train, y_train)

    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / "digits-logreg.onnx"
    onnx_model = to_onnx(model, x_train[:1], options={"zipmap": False}, target_opset=17)
    model_path.write_bytes(onnx_model.SerializeToString())

    columns: dict[str, Any] = {f"pixel_{i}": x_test[:, i] for i in range(x_test.shape[1])}
    columns["label"] = y_test.astype(np.int64)
    dataset_path = folder / "digits-holdout.csv"
    pa_csv.write_csv(pa.table(columns), dataset_path)
    return model_path, dataset_path, len(y_test)


def _check(result: Any, step: str) -> dict[str, Any]:
    if result.is_error:
        text = " ".join(getattr(c, "text", "") for c in result.content)
        raise RuntimeError(f"{step} failed: {text}")
    return result.structured_content or {}


async def _remove_previous_run(client: Any) -> None:
    # Rerunning the demo on the same data directory replaces its deployment
    # and dataset; the model gains a version each run.
    await client.call_tool("delete_deployment", {"name": DEPLOYMENT_NAME})
    await client.call_tool("delete_dataset", {"name": DATASET_NAME})


async def run_flow(home: Path, model_path: Path, dataset_path: Path) -> dict[str, Any]:
    """Drive the hub over stdio through the whole flow and return the execution."""
    from mcp import Client, StdioServerParameters

    env = passthrough_environment()
    env.update(
        {
            HOME_ENV: str(home),
            IMPORT_DIRS_ENV: str(model_path.parent),
            "MLHUB_LOG_LEVEL": "WARNING",
        }
    )
    hub = StdioServerParameters(command=sys.executable, args=["-m", "mlhub_mcp", "hub"], env=env)

    async with Client(hub, mode="legacy", read_timeout_seconds=600) as client:
        tools = await client.list_tools()
        own = [t for t in tools.tools if t.name.startswith(("hub_", "workflow_", "get_audit"))]
        print(
            f"hub started: {len(tools.tools) - len(own)} tools from the model, data and "
            f"execution servers, {len(own)} of its own"
        )
        await _remove_previous_run(client)

        model = _check(
            await client.call_tool(
                "register_model",
                {
                    "name": MODEL_NAME,
                    "path": str(model_path),
                    "description": "Logistic regression on scikit-learn's 8x8 digits",
                },
            ),
            "register_model",
        )
        print(
            f"registered model {model['name']} version {model['version']} "
            f"({model['format']}, {model['size_bytes']} bytes, sha256 {model['sha256'][:12]})"
        )

        dataset = _check(
            await client.call_tool(
                "register_dataset",
                {
                    "name": DATASET_NAME,
                    "path": str(dataset_path),
                    "description": "Held-out 30% of the digits, with labels",
                },
            ),
            "register_dataset",
        )
        print(
            f"registered dataset {dataset['name']}: {dataset['row_count']} rows, "
            f"{len(dataset['columns'])} columns"
        )

        deployment = _check(
            await client.call_tool(
                "create_deployment",
                {
                    "name": DEPLOYMENT_NAME,
                    "model_name": MODEL_NAME,
                    "model_version": model["version"],
                    "environment": "staging",
                    "batch_size": 32,
                },
            ),
            "create_deployment",
        )
        print(
            f"deployed {deployment['model_name']} v{deployment['model_version']} "
            f"as {deployment['name']} ({deployment['environment']})"
        )

        async def show_progress(done: float, total: float | None, message: str | None) -> None:
            width = 30
            share = done / total if total else 0.0
            bar = "#" * int(share * width)
            print(
                f"\r  running [{bar:<{width}}] {int(done)}/{int(total or 0)} rows",
                end="",
                flush=True,
            )

        execution = _check(
            await client.call_tool(
                "run_execution",
                {
                    "deployment": DEPLOYMENT_NAME,
                    "dataset": DATASET_NAME,
                    "label_column": "label",
                    "batch_size": 32,
                },
                progress_callback=show_progress,
            ),
            "run_execution",
        )
        print()
        return execution


def print_report(execution: dict[str, Any], elapsed: float) -> None:
    metrics = execution["metrics"]
    print(
        f"execution {execution['id']} {execution['status']}: "
        f"{execution['rows_processed']} rows in {execution['duration_seconds']:.2f} s"
    )
    print("metrics on the held-out split:")
    for name in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted"):
        print(f"  {name:<16} {metrics[name]:.4f}")
    print(f"predictions (Parquet): {execution['predictions_url']}")
    if execution.get("plot_url"):
        print(f"confusion matrix (PNG): {execution['plot_url']}")
    print(f"demo finished in {elapsed:.1f} s")


def run_demo(home: str | None = None) -> int:
    """Run the demo; return the process exit code."""
    started = time.perf_counter()
    home_path = Path(home).resolve() if home else load_settings().home
    home_path.mkdir(parents=True, exist_ok=True)
    print(f"data directory: {home_path}")

    folder = Path(tempfile.mkdtemp(prefix="demo-", dir=_imports_dir(home_path)))
    model_path, dataset_path, rows = prepare_files(folder)
    print(f"trained a classifier on {1797 - rows} images; {rows} held out")

    try:
        execution = anyio.run(run_flow, home_path, model_path, dataset_path)
    except RuntimeError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for path in (model_path, dataset_path):
            path.unlink(missing_ok=True)
        folder.rmdir()

    print_report(execution, time.perf_counter() - started)
    return 0 if execution["metrics"]["accuracy"] > 0.9 else 1


def _imports_dir(home: Path) -> Path:
    path = home / "imports"
    path.mkdir(parents=True, exist_ok=True)
    return path
