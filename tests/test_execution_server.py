"""The execution server, with the model and data servers on the same data directory."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from mcp import Client
from sklearn import metrics as skm

from mlhub_mcp.config import Settings
from mlhub_mcp.datasets.server import create_data_server
from mlhub_mcp.execution.server import create_execution_server
from mlhub_mcp.models.server import create_model_server
from tests.conftest import snapshot

pytestmark = pytest.mark.anyio


def _text(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


class Platform:
    """In-process clients of the three servers."""

    def __init__(self, model: Client, data: Client, execution: Client) -> None:
        self.model = model
        self.data = data
        self.execution = execution

    async def call(self, client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
        result = await client.call_tool(tool, arguments)
        assert not result.is_error, _text(result)
        return result.structured_content


@pytest.fixture
async def platform(settings: Settings, staged_digits: dict[str, Path]) -> AsyncIterator[Platform]:
    async with (
        Client(create_model_server(settings)) as model,
        Client(create_data_server(settings)) as data,
        Client(create_execution_server(settings)) as execution,
    ):
        hub = Platform(model, data, execution)
        await hub.call(model, "register_model", name="digits", path="digits.onnx")
        await hub.call(data, "register_dataset", name="digits", path="digits_test.csv")
        await hub.call(execution, "create_deployment", name="dep", model_name="digits")
        yield hub


async def test_metrics_match_scikit_learn(
    platform: Platform, digits_files: dict[str, Any], digits_split: dict[str, Any]
) -> None:
    result = await platform.execution.call_tool(
        "run_execution",
        {"deployment": "dep", "dataset": "digits", "label_column": "label", "batch_size": 32},
    )

    assert not result.is_error, _text(result)
    execution = result.structured_content
    expected = digits_files["model"].predict(digits_split["x_test"])
    y_true = digits_split["y_test"]
    metrics = execution["metrics"]
    assert execution["status"] == "succeeded"
    assert execution["rows_processed"] == 540
    assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(y_true, expected))
    assert metrics["f1_macro"] == pytest.approx(skm.f1_score(y_true, expected, average="macro"))
    assert metrics["confusion_matrix"]["matrix"] == skm.confusion_matrix(y_true, expected).tolist()
    assert metrics["accuracy"] > 0.9
    assert [c.type for c in result.content] == ["text", "image"]


async def test_predictions_are_stored_as_parquet(platform: Platform, settings: Settings) -> None:
    execution = await platform.call(
        platform.execution,
        "run_execution",
        deployment="dep",
        dataset="digits",
        label_column="label",
    )
    rows = await platform.call(
        platform.execution, "get_predictions", execution_id=execution["id"], rows=5, offset=10
    )

    path = Path(execution["predictions_url"].removeprefix("file://"))
    table = pq.read_table(path)
    assert table.num_rows == 540
    assert table.column_names == ["row", "prediction", "score", "label"]
    assert table.column("row").to_pylist() == list(range(540))
    assert [r["row"] for r in rows["rows"]] == [10, 11, 12, 13, 14]


async def test_execution_records_versions_and_timings(platform: Platform) -> None:
    execution = await platform.call(
        platform.execution,
        "run_execution",
        deployment="dep",
        dataset="digits",
        label_column="label",
    )

    assert execution["model_name"] == "digits"
    assert execution["model_version"] == 1
    assert execution["dataset_name"] == "digits"
    assert execution["started_at"] is not None
    assert execution["finished_at"] >= execution["started_at"]
    assert execution["duration_seconds"] > 0


async def _large_dataset(platform: Platform, imports: Path, copies: int) -> None:
    table = pa_csv.read_csv(imports / "digits_test.csv")
    pq.write_table(pa.concat_tables([table] * copies), imports / "large.parquet")
    await platform.call(platform.data, "register_dataset", name="large", path="large.parquet")


async def test_progress_notifications_reach_the_caller(platform: Platform, imports: Path) -> None:
    await _large_dataset(platform, imports, 200)
    updates: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total))

    result = await platform.execution.call_tool(
        "run_execution",
        {"deployment": "dep", "dataset": "large", "label_column": "label", "batch_size": 16},
        progress_callback=on_progress,
    )

    assert not result.is_error, _text(result)
    assert len(updates) >= 2
    assert updates[-1] == (108_000, 108_000)
    assert [p for p, _ in updates] == sorted(p for p, _ in updates)


async def test_background_run_can_be_polled(platform: Platform) -> None:
    started = await platform.call(
        platform.execution,
        "run_execution",
        deployment="dep",
        dataset="digits",
        label_column="label",
        wait=False,
    )
    assert started["status"] == "queued"

    with anyio.fail_after(30):
        while True:
            current = await platform.call(
                platform.execution, "get_execution", execution_id=started["id"], include_plot=False
            )
            if current["status"] in ("succeeded", "failed", "cancelled"):
                break
            await anyio.sleep(0.05)

    assert current["status"] == "succeeded"
    assert current["metrics"]["accuracy"] > 0.9


async def test_background_run_can_be_cancelled(platform: Platform, imports: Path) -> None:
    await _large_dataset(platform, imports, 400)
    started = await platform.call(
        platform.execution,
        "run_execution",
        deployment="dep",
        dataset="large",
        label_column="label",
        batch_size=4,
        wait=False,
    )
    with anyio.fail_after(30):
        while True:
            current = await platform.call(
                platform.execution, "get_execution", execution_id=started["id"], include_plot=False
            )
            if current["status"] != "queued":
                break
            await anyio.sleep(0.02)

    cancelled = await platform.call(
        platform.execution, "cancel_execution", execution_id=started["id"]
    )

    assert cancelled["status"] == "cancelled"
    assert cancelled["rows_processed"] < 216_000
    assert cancelled["predictions_key"] is None


async def test_cancelling_a_waiting_call_cancels_the_run(platform: Platform, imports: Path) -> None:
    await _large_dataset(platform, imports, 400)
    with anyio.move_on_after(0.5):
        await platform.execution.call_tool(
            "run_execution",
            {"deployment": "dep", "dataset": "large", "label_column": "label", "batch_size": 4},
        )

    with anyio.fail_after(10):
        while True:
            page = await platform.call(platform.execution, "list_executions", deployment="dep")
            if page["executions"][0]["status"] != "running":
                break
            await anyio.sleep(0.05)

    assert page["executions"][0]["status"] == "cancelled"


async def test_regression_metrics(platform: Platform, imports: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 3)).astype(np.float32)
    target = features @ np.array([1.5, -2.0, 0.5]) + rng.normal(scale=0.1, size=400)
    model = LinearRegression().fit(features, target)
    (imports / "lin.onnx").write_bytes(to_onnx(model, features[:1]).SerializeToString())
    pq.write_table(
        pa.table({"a": features[:, 0], "b": features[:, 1], "c": features[:, 2], "y": target}),
        imports / "reg.parquet",
    )
    await platform.call(platform.model, "register_model", name="lin", path="lin.onnx")
    await platform.call(platform.data, "register_dataset", name="reg", path="reg.parquet")
    await platform.call(platform.execution, "create_deployment", name="lin-dep", model_name="lin")

    execution = await platform.call(
        platform.execution, "run_execution", deployment="lin-dep", dataset="reg", label_column="y"
    )

    expected = model.predict(features)
    metrics = execution["metrics"]
    assert execution["task_type"] == "regression"
    assert metrics["mae"] == pytest.approx(skm.mean_absolute_error(target, expected), rel=1e-4)
    assert metrics["rmse"] == pytest.approx(
        skm.mean_squared_error(target, expected) ** 0.5, rel=1e-4
    )
    assert metrics["r2"] == pytest.approx(skm.r2_score(target, expected), rel=1e-4)


# A model/dataset mismatch is reported before the run and stores nothing.


async def _rejected_run(platform: Platform, settings: Settings, **arguments: Any) -> str:
    before = await snapshot(settings)
    result = await platform.execution.call_tool("run_execution", arguments)

    assert result.is_error
    assert await snapshot(settings) == before
    return _text(result)


async def test_missing_label_column_is_named(platform: Platform, settings: Settings) -> None:
    message = await _rejected_run(
        platform, settings, deployment="dep", dataset="digits", label_column="target"
    )

    assert "label column 'target' is not in dataset 'digits'" in message


async def test_missing_feature_columns_are_named(platform: Platform, settings: Settings) -> None:
    message = await _rejected_run(
        platform,
        settings,
        deployment="dep",
        dataset="digits",
        feature_columns=["pixel_0", "pixel_99"],
        label_column="label",
    )

    assert "pixel_99" in message
    assert "lacks feature columns" in message


async def test_wrong_width_is_reported(platform: Platform, settings: Settings) -> None:
    message = await _rejected_run(platform, settings, deployment="dep", dataset="digits")

    assert "expects 64 features but 65 columns" in message


async def test_non_numeric_feature_is_named(
    platform: Platform, settings: Settings, imports: Path
) -> None:
    table = pa_csv.read_csv(imports / "digits_test.csv")
    table = table.set_column(3, "pixel_3", pa.array(["x"] * table.num_rows))
    pq.write_table(table, imports / "text.parquet")
    await platform.call(platform.data, "register_dataset", name="text", path="text.parquet")

    message = await _rejected_run(
        platform, settings, deployment="dep", dataset="text", label_column="label"
    )

    assert "pixel_3 (string)" in message


async def test_unknown_names_are_clear_errors(platform: Platform, settings: Settings) -> None:
    dataset = await _rejected_run(platform, settings, deployment="dep", dataset="ghost")
    deployment = await _rejected_run(platform, settings, deployment="ghost", dataset="digits")
    model = await platform.execution.call_tool(
        "create_deployment", {"name": "d2", "model_name": "ghost"}
    )

    assert "dataset 'ghost' not found" in dataset
    assert "deployment 'ghost' not found" in deployment
    assert "model 'ghost' not found" in _text(model)


async def test_model_in_use_cannot_be_deleted(platform: Platform) -> None:
    result = await platform.model.call_tool("delete_model", {"name": "digits"})

    assert result.is_error
    assert "used by deployment 'dep'" in _text(result)


async def test_deleting_execution_removes_its_files(platform: Platform, settings: Settings) -> None:
    before = await snapshot(settings)
    execution = await platform.call(
        platform.execution,
        "run_execution",
        deployment="dep",
        dataset="digits",
        label_column="label",
    )
    await platform.call(platform.execution, "delete_execution", execution_id=execution["id"])

    assert await snapshot(settings) == before


# Checks added for data that would run but give wrong or useless results.


async def test_null_features_are_named(
    platform: Platform, settings: Settings, imports: Path
) -> None:
    table = pa_csv.read_csv(imports / "digits_test.csv")
    values = table.column("pixel_7").to_pylist()
    values[:3] = [None, None, None]
    table = table.set_column(7, "pixel_7", pa.array(values, pa.float64()))
    pq.write_table(table, imports / "nulls.parquet")
    await platform.call(platform.data, "register_dataset", name="nulls", path="nulls.parquet")

    message = await _rejected_run(
        platform, settings, deployment="dep", dataset="nulls", label_column="label"
    )

    assert "pixel_7 (3 nulls)" in message


async def test_null_labels_are_rejected(
    platform: Platform, settings: Settings, imports: Path
) -> None:
    table = pa_csv.read_csv(imports / "digits_test.csv")
    labels = table.column("label").to_pylist()
    labels[0] = None
    table = table.set_column(64, "label", pa.array(labels, pa.int64()))
    pq.write_table(table, imports / "nolabel.parquet")
    await platform.call(platform.data, "register_dataset", name="nolabel", path="nolabel.parquet")

    message = await _rejected_run(
        platform, settings, deployment="dep", dataset="nolabel", label_column="label"
    )

    assert "label column 'label'" in message
    assert "1 null values" in message


async def test_empty_feature_list_is_rejected(platform: Platform, settings: Settings) -> None:
    message = await _rejected_run(
        platform, settings, deployment="dep", dataset="digits", feature_columns=[]
    )

    assert "'feature_columns' is empty" in message


async def test_regression_needs_numeric_label(
    platform: Platform, settings: Settings, imports: Path
) -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LinearRegression

    features = np.arange(20, dtype=np.float32).reshape(10, 2)
    model = LinearRegression().fit(features, features.sum(axis=1))
    (imports / "lin2.onnx").write_bytes(to_onnx(model, features[:1]).SerializeToString())
    names = ["a" if i % 2 else "b" for i in range(10)]
    pq.write_table(
        pa.table({"x": features[:, 0], "y": features[:, 1], "name": names}),
        imports / "strlabel.parquet",
    )
    await platform.call(platform.model, "register_model", name="lin2", path="lin2.onnx")
    await platform.call(platform.data, "register_dataset", name="strlabel", path="strlabel.parquet")
    await platform.call(platform.execution, "create_deployment", name="lin2", model_name="lin2")

    message = await _rejected_run(
        platform, settings, deployment="lin2", dataset="strlabel", label_column="name"
    )

    assert "regression label must be numeric" in message


async def test_multi_output_model_fails_at_deployment(platform: Platform, imports: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LinearRegression

    features = np.arange(20, dtype=np.float32).reshape(10, 2)
    model = LinearRegression().fit(features, np.column_stack([features[:, 0], features[:, 1]]))
    (imports / "two.onnx").write_bytes(to_onnx(model, features[:1]).SerializeToString())
    await platform.call(platform.model, "register_model", name="two", path="two.onnx")

    result = await platform.execution.call_tool(
        "create_deployment", {"name": "two", "model_name": "two"}
    )

    assert result.is_error
    assert "2 values per row" in _text(result)


async def test_many_classes_skip_the_matrix(platform: Platform, imports: Path) -> None:
    # A classifier evaluated against a column of 300 distinct values, as
    # happens when the wrong column is chosen as the label.
    table = pa_csv.read_csv(imports / "digits_test.csv")
    table = table.set_column(64, "label", pa.array(np.arange(540) % 300, pa.int64()))
    pq.write_table(table, imports / "wide.parquet")
    await platform.call(platform.data, "register_dataset", name="wide", path="wide.parquet")

    result = await platform.execution.call_tool(
        "run_execution", {"deployment": "dep", "dataset": "wide", "label_column": "label"}
    )

    metrics = result.structured_content["metrics"]
    assert metrics["classes"] == 300
    assert metrics["confusion_matrix"] is None
    assert "300 distinct classes" in metrics["note"]
    assert result.structured_content["plot_url"] is None
    assert [c.type for c in result.content] == ["text"]


async def test_mismatched_label_values_warn(platform: Platform, imports: Path) -> None:
    table = pa_csv.read_csv(imports / "digits_test.csv")
    labels = [f"digit-{v}" for v in table.column("label").to_pylist()]
    table = table.set_column(64, "label", pa.array(labels))
    pq.write_table(table, imports / "named.parquet")
    await platform.call(platform.data, "register_dataset", name="named", path="named.parquet")

    execution = await platform.call(
        platform.execution, "run_execution", deployment="dep", dataset="named", label_column="label"
    )

    assert execution["metrics"]["accuracy"] == 0
    assert "no predicted value matches any label value" in execution["metrics"]["warning"]


async def test_listing_leaves_out_matrices(platform: Platform) -> None:
    await platform.call(
        platform.execution,
        "run_execution",
        deployment="dep",
        dataset="digits",
        label_column="label",
    )

    page = await platform.call(platform.execution, "list_executions")

    metrics = page["executions"][0]["metrics"]
    assert metrics["accuracy"] > 0.9
    assert "confusion_matrix" not in metrics


async def test_execution_of_dead_server_is_failed(platform: Platform, settings: Settings) -> None:
    import socket

    from mlhub_mcp.ids import new_id, utc_now
    from mlhub_mcp.platform import open_platform

    # A finished child's pid stands for an execution server that died mid-run.
    dead = await anyio.open_process(["true"])
    await dead.wait()
    started = await platform.call(
        platform.execution,
        "run_execution",
        deployment="dep",
        dataset="digits",
        label_column="label",
        wait=False,
    )
    await platform.call(platform.execution, "cancel_execution", execution_id=started["id"])
    orphan_id = new_id()
    async with open_platform(settings) as storage:
        template = await storage.catalog.get("executions", started["id"])
        await storage.catalog.insert(
            "executions",
            {
                **template,
                "id": orphan_id,
                "status": "running",
                "started_at": utc_now(),
                "owner": {"host": socket.gethostname(), "pid": dead.pid, "instance": "x"},
            },
        )

    current = await platform.call(platform.execution, "get_execution", execution_id=orphan_id)
    deleted = await platform.execution.call_tool("delete_deployment", {"name": "dep"})

    assert current["status"] == "failed"
    assert f"pid {dead.pid}" in current["error"]
    assert not deleted.is_error, _text(deleted)


async def test_prediction_pages_cross_row_groups(platform: Platform, imports: Path) -> None:
    await _large_dataset(platform, imports, 20)
    execution = await platform.call(
        platform.execution,
        "run_execution",
        deployment="dep",
        dataset="large",
        label_column="label",
        batch_size=100,
    )

    pages = [
        await platform.call(
            platform.execution, "get_predictions", execution_id=execution["id"], rows=50, offset=o
        )
        for o in (0, 75, 10_770, 10_800)
    ]

    assert [r["row"] for r in pages[0]["rows"]] == list(range(50))
    assert [r["row"] for r in pages[1]["rows"]] == list(range(75, 125))
    assert [r["row"] for r in pages[2]["rows"]] == list(range(10_770, 10_800))
    assert pages[3]["rows"] == []


async def test_llm_options_need_an_llm_deployment(platform: Platform, settings: Settings) -> None:
    message = await _rejected_run(
        platform, settings, deployment="dep", dataset="digits", prompt_template="{pixel_0}"
    )

    assert "apply to LLM deployments only" in message


async def test_llm_deployment_rejects_other_engines(platform: Platform) -> None:
    await platform.call(
        platform.model, "register_llm", name="llama", provider_model="llama-3.3-70b-versatile"
    )

    spark = await platform.execution.call_tool(
        "create_deployment", {"name": "llm-spark", "model_name": "llama", "engine": "spark"}
    )
    default = await platform.call(
        platform.execution, "create_deployment", name="llm", model_name="llama"
    )
    tabular = await platform.call(
        platform.execution, "create_deployment", name="tab", model_name="digits"
    )

    assert spark.is_error
    assert "only engine 'groq' runs" in _text(spark)
    assert default["engine"] == "groq"
    assert tabular["engine"] == "local"
