"""The Spark engine against the local engine, on the scikit-learn digits set.

One Spark session serves the whole module, because starting one takes several seconds.
"""

import shutil
import sys
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlhub_mcp.config import Settings
from mlhub_mcp.datasets._registry import DatasetRegistry
from mlhub_mcp.errors import ExecutionFailed
from mlhub_mcp.execution import _spark
from mlhub_mcp.execution._service import ExecutionService
from mlhub_mcp.models._registry import ModelRegistry
from mlhub_mcp.platform import Platform, open_platform

pytest.importorskip("pyspark")
pytest.importorskip("pandas")

pytestmark = pytest.mark.anyio

MODEL = "digits-lr"
DEPLOYMENT = "digits-lr-dev"


@pytest.fixture(scope="module")
def spark() -> Any:
    try:
        _spark.check_java()
    except ExecutionFailed as exc:
        pytest.skip(str(exc))

    # Four task slots on any machine split the wide dataset into several partitions.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(_spark.MASTER_ENV, "local[4]")
        session = _spark.spark_session()
    yield session
    _spark.stop_spark_session()


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write a logistic regression in ONNX and the digits test split as Parquet."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    folder = tmp_path_factory.mktemp("digits")
    features, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, train_size=0.7, random_state=0
    )
    model = LogisticRegression(max_iter=5000).fit(x_train, y_train)
    onnx_model = to_onnx(model, x_train[:1].astype(np.float32), options={"zipmap": False})
    (folder / "digits.onnx").write_bytes(onnx_model.SerializeToString())

    columns = {f"pixel_{i}": x_test[:, i] for i in range(x_test.shape[1])}
    test_table = pa.table({**columns, "label": y_test.astype(np.int64)})
    pq.write_table(test_table, folder / "digits_test.parquet")

    # Forty copies make a job long enough to cancel with one-row batches.
    tiled = pa.concat_tables([test_table] * 40)
    pq.write_table(tiled, folder / "digits_tiled.parquet")
    return folder


@pytest.fixture(scope="module")
def wide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write 150,000 rows of 10 random features (about 12 MB) and a model for them."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    folder = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(150_000, 10))
    labels = (features[:, 0] + features[:, 1] > 0).astype(np.int64)
    model = LogisticRegression().fit(features[:5_000], labels[:5_000])
    onnx_model = to_onnx(model, features[:1].astype(np.float32), options={"zipmap": False})
    (folder / "wide.onnx").write_bytes(onnx_model.SerializeToString())

    columns = {f"x{i}": features[:, i] for i in range(features.shape[1])}
    pq.write_table(pa.table({**columns, "label": labels}), folder / "wide.parquet")
    return folder


@pytest.fixture
async def platform(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv(_spark.UI_ENV, raising=False)
    async with open_platform(settings) as opened:
        yield opened


def _stage(platform: Platform, source: Path) -> str:
    """Copy ``source`` into the import directory and return the copy's path."""
    target = platform.settings.import_dirs[0] / source.name
    shutil.copyfile(source, target)
    return str(target)


async def _deploy(
    platform: Platform, task_group: anyio.abc.TaskGroup, digits_dir: Path
) -> ExecutionService:
    models = ModelRegistry(platform)
    await models.register_file(name=MODEL, path=_stage(platform, digits_dir / "digits.onnx"))
    datasets = DatasetRegistry(platform)
    test_split = _stage(platform, digits_dir / "digits_test.parquet")
    await datasets.register(name="digits", path=test_split)
    tiled = _stage(platform, digits_dir / "digits_tiled.parquet")
    await datasets.register(name="digits-tiled", path=tiled)

    service = ExecutionService(platform, task_group)
    await service.create_deployment(
        name=DEPLOYMENT,
        model_name=MODEL,
        model_version=None,
        environment="development",
        batch_size=100,
        threads=1,
        engine="local",
    )
    return service


async def _prepare(
    service: ExecutionService, engine: str, dataset: str = "digits", batch_size: int = 100
) -> str:
    doc = await service.prepare(
        deployment_name=DEPLOYMENT,
        dataset_name=dataset,
        batch_size=batch_size,
        feature_columns=None,
        label_column="label",
        engine=engine,
    )
    return doc["id"]


async def _ignore_progress(progress: float, total: float | None, message: str | None) -> None:
    return None


async def _predictions(platform: Platform, doc: dict[str, Any]) -> pa.Table:
    return pq.read_table(await platform.artifacts.fetch(doc["predictions_key"]))


async def test_spark_matches_local_engine(platform: Platform, spark: Any, digits_dir: Path) -> None:
    async with anyio.create_task_group() as task_group:
        service = await _deploy(platform, task_group, digits_dir)
        local = await service.run(await _prepare(service, "local"), _ignore_progress)
        remote = await service.run(await _prepare(service, "spark"), _ignore_progress)

    assert local["status"] == "succeeded"
    assert remote["status"] == "succeeded"
    assert remote["engine"] == "spark"
    assert remote["rows_processed"] == local["rows_processed"] == 540
    assert local["metrics"]["accuracy"] > 0.9
    assert remote["metrics"] == local["metrics"]

    local_table = await _predictions(platform, local)
    spark_table = await _predictions(platform, remote)
    assert spark_table.column_names == ["row", "prediction", "score", "label"]
    assert spark_table.schema == local_table.schema
    assert spark_table.equals(local_table)


async def test_spark_keeps_row_order_across_partitions(
    platform: Platform, spark: Any, wide_dir: Path
) -> None:
    """Ingesting writes 65,536-row row groups, so Spark reads the file in several partitions."""
    events: list[tuple[float, float | None, str | None]] = []

    async def record(progress: float, total: float | None, message: str | None) -> None:
        events.append((progress, total, message))

    model_path = _stage(platform, wide_dir / "wide.onnx")
    await ModelRegistry(platform).register_file(name="wide-lr", path=model_path)
    dataset_path = _stage(platform, wide_dir / "wide.parquet")
    await DatasetRegistry(platform).register(name="wide", path=dataset_path)
    async with anyio.create_task_group() as task_group:
        service = ExecutionService(platform, task_group)
        await service.create_deployment(
            name="wide-lr-dev",
            model_name="wide-lr",
            model_version=None,
            environment="development",
            batch_size=10_000,
            threads=1,
            engine="local",
        )
        runs = {}
        for engine in ("local", "spark"):
            doc = await service.prepare(
                deployment_name="wide-lr-dev",
                dataset_name="wide",
                batch_size=None,
                feature_columns=None,
                label_column="label",
                engine=engine,
            )
            runs[engine] = await service.run(
                doc["id"], record if engine == "spark" else _ignore_progress
            )

    partitions = max(total or 0 for _, total, _ in events)
    assert partitions > 1
    assert runs["spark"]["status"] == "succeeded"
    assert runs["spark"]["metrics"] == runs["local"]["metrics"]

    local_table = await _predictions(platform, runs["local"])
    spark_table = await _predictions(platform, runs["spark"])
    assert spark_table.num_rows == 150_000
    assert spark_table.equals(local_table)


async def test_spark_reports_partition_progress(
    platform: Platform, spark: Any, digits_dir: Path
) -> None:
    events: list[tuple[float, float | None, str | None]] = []

    async def record(progress: float, total: float | None, message: str | None) -> None:
        events.append((progress, total, message))

    async with anyio.create_task_group() as task_group:
        service = await _deploy(platform, task_group, digits_dir)
        doc = await service.run(await _prepare(service, "spark"), record)

    assert doc["status"] == "succeeded"
    partition_events = [e for e in events if e[2] and e[2].endswith(" partitions")]
    assert partition_events, f"no partition progress among {events}"
    done, total, message = partition_events[-1]
    assert done == total
    assert message == f"{done}/{total} partitions"


async def test_spark_cancel_stops_job(platform: Platform, spark: Any, digits_dir: Path) -> None:
    job_started = anyio.Event()

    async def watch(progress: float, total: float | None, message: str | None) -> None:
        if total:
            job_started.set()

    async with anyio.create_task_group() as task_group:
        service = await _deploy(platform, task_group, digits_dir)
        execution_id = await _prepare(service, "spark", dataset="digits-tiled", batch_size=1)
        task_group.start_soon(service.run, execution_id, watch)
        with anyio.fail_after(60):
            await job_started.wait()
        await service.cancel(execution_id)

    doc = await service.get_execution(execution_id)
    assert doc["status"] == "cancelled"
    assert doc["predictions_key"] is None

    tracker = spark.sparkContext.statusTracker()
    jobs = [tracker.getJobInfo(job_id) for job_id in tracker.getJobIdsForGroup(execution_id)]
    assert [job.status for job in jobs] == ["FAILED"]
    assert not list((platform.scratch_dir).glob("spark-*"))


async def test_spark_cancel_through_catalog(
    platform: Platform, spark: Any, digits_dir: Path
) -> None:
    """Another server process cancels by setting ``cancel_requested`` in the catalog."""
    job_started = anyio.Event()

    async def watch(progress: float, total: float | None, message: str | None) -> None:
        if total:
            job_started.set()

    async with anyio.create_task_group() as task_group:
        service = await _deploy(platform, task_group, digits_dir)
        execution_id = await _prepare(service, "spark", dataset="digits-tiled", batch_size=1)
        task_group.start_soon(service.run, execution_id, watch)
        with anyio.fail_after(60):
            await job_started.wait()
        await platform.catalog.update("executions", execution_id, {"cancel_requested": True})

    doc = await service.get_execution(execution_id)
    assert doc["status"] == "cancelled"

    tracker = spark.sparkContext.statusTracker()
    jobs = [tracker.getJobInfo(job_id) for job_id in tracker.getJobIdsForGroup(execution_id)]
    assert [job.status for job in jobs] == ["FAILED"]


async def test_spark_without_extra_fails_with_install_hint(
    platform: Platform, digits_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules makes the import raise ImportError.
    monkeypatch.setitem(sys.modules, "pyspark", None)
    monkeypatch.setitem(sys.modules, "pyspark.sql", None)

    async with anyio.create_task_group() as task_group:
        service = await _deploy(platform, task_group, digits_dir)
        execution_id = await _prepare(service, "spark")
        with pytest.raises(ExecutionFailed, match="'spark' extra"):
            await service.run(execution_id, _ignore_progress)

    doc = await service.get_execution(execution_id)
    assert doc["status"] == "failed"
    assert "pip install 'mlhub-mcp[spark]'" in doc["error"]


def test_check_java_names_java_17(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))

    with pytest.raises(ExecutionFailed, match="needs Java 17 or newer") as caught:
        _spark.check_java()

    assert str(tmp_path) in str(caught.value)
