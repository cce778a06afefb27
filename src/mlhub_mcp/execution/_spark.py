"""The Spark engine: batch inference with ``mapInArrow`` on a Spark session.

The engine needs the ``spark`` extra (pyspark and pandas) and, except for
Spark Connect, Java 17 or newer (``JAVA_HOME`` is honoured, else ``java`` on
``PATH``). Each server process has one Spark session, created on first use:

- ``MLHUB_SPARK_MASTER`` selects the master: ``local[*]`` (the default),
  ``spark://host:port`` for a standalone cluster, or ``sc://host:port`` for a
  Spark Connect server.
- In local mode the driver, its ports and the web UI bind to 127.0.0.1.
- The web UI is off unless ``MLHUB_SPARK_UI=1``. Then ``run_spark`` sets the
  attribute ``spark_ui_url`` on the output it returns.
- The driver JVM runs with ``-XX:TieredStopAtLevel=1``. On a 2-core machine
  this cut the session start from about 8.7 s to 5.5 s, but the JVM then
  compiles its code with the C1 compiler only.

A run writes the same predictions as the local engine. The executors read the
dataset with its Parquet row number (``_metadata.row_index``, 0-based in the
file) and run the model on Arrow batches with the local engine's
``feature_matrix``. They write ``row``, ``prediction`` and ``score`` to a
scratch directory. The driver then sorts those rows, reads the label column
from the local copy of the dataset, and writes one Parquet file with the local
engine's columns.

Limits:

- Executors and the Spark Connect server must see the scratch directory
  (``<MLHUB_HOME>/tmp``) at the same path, so a cluster on other hosts needs
  a shared filesystem there.
- Datasets in an S3 artifact store are read from ``s3a://`` URLs. The session
  gets the endpoint and keys from the settings, but Spark also needs the
  hadoop-aws package matching the Hadoop version bundled with pyspark (the
  version in ``jars/hadoop-client-api-<version>.jar``, which is 3.5.0 in
  pyspark 4.3.0), for example through
  ``PYSPARK_SUBMIT_ARGS="--packages org.apache.hadoop:hadoop-aws:3.5.0 pyspark-shell"``.
  A Spark Connect server must be configured for s3a by its operator.
"""

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlhub_mcp.errors import ExecutionFailed, InvalidInput
from mlhub_mcp.execution._local import (
    RunOutput,
    RunSpec,
    feature_matrix,
    prediction_table,
)
from mlhub_mcp.models._formats import Predictor, load_predictor

# Python workers import this module to run _predict_partition, so modules that
# only the driver needs are imported for type checking or inside functions.
if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from mlhub_mcp.config import Settings
    from mlhub_mcp.execution._service import ProgressCallback
    from mlhub_mcp.platform import Platform

logger = logging.getLogger(__name__)

MASTER_ENV = "MLHUB_SPARK_MASTER"
UI_ENV = "MLHUB_SPARK_UI"
DEFAULT_MASTER = "local[*]"
MIN_JAVA_VERSION = 17
MISSING_EXTRA = "the Spark engine needs the 'spark' extra: pip install 'mlhub-mcp[spark]'"

_POLL_SECONDS = 0.25
_CANCEL_CHECK_SECONDS = 1.0
_CANCEL_WAIT_SECONDS = 10.0
_WORKER_CACHE_SIZE = 4

_session: "SparkSession | None" = None
_session_lock = threading.Lock()

# Predictors loaded in this Python worker process, by sha256 of the model file.
# Spark reuses worker processes across tasks, so each model loads once per worker.
_worker_predictors: dict[str, Predictor] = {}


def _import_pyspark() -> None:
    try:
        import pandas  # noqa: F401
        import pyspark.sql  # noqa: F401
    except ImportError as exc:
        raise ExecutionFailed(MISSING_EXTRA) from exc


def _java_executable() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        return str(candidate) if candidate.is_file() else None

    return shutil.which("java")


def _java_major_version(java: str) -> int | None:
    try:
        result = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None

    # The first line reads like 'openjdk version "17.0.15" 2025-04-15' or, before
    # Java 9, 'java version "1.8.0_392"'.
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2):
        major = int(match.group(2))

    return major


def check_spark_available() -> None:
    """Check that pyspark imports and Java 17 or newer is present, before a run is queued.

    Raises:
        ExecutionFailed: pyspark or Java is missing; the message names the fix.
    """
    global _spark_checked
    if _spark_checked:
        return

    _import_pyspark()
    check_java()
    _spark_checked = True


# Set once pyspark and Java passed the check, so that later runs skip the
# `java -version` subprocess.
_spark_checked = False


def check_java() -> None:
    """Check that Java 17 or newer is available to start a Spark driver.

    Raises:
        ExecutionFailed: No Java runtime was found, or it is older than Java 17.
    """
    java = _java_executable()
    if java is None:
        where = f"JAVA_HOME={os.environ['JAVA_HOME']!r}" if "JAVA_HOME" in os.environ else "PATH"
        raise ExecutionFailed(
            f"the Spark engine needs Java {MIN_JAVA_VERSION} or newer, but no java was "
            f"found in {where}; install a Java {MIN_JAVA_VERSION} runtime and set JAVA_HOME "
            "to it or put its java on PATH"
        )

    major = _java_major_version(java)
    if major is None or major < MIN_JAVA_VERSION:
        found = f"Java {major}" if major is not None else "not a working Java runtime"
        raise ExecutionFailed(
            f"the Spark engine needs Java {MIN_JAVA_VERSION} or newer, but {java} is {found}; "
            f"install Java {MIN_JAVA_VERSION} and set JAVA_HOME to it"
        )


def spark_master() -> str:
    """Return the Spark master URL from ``MLHUB_SPARK_MASTER``, else ``local[*]``."""
    return os.environ.get(MASTER_ENV) or DEFAULT_MASTER


def _is_connect(master: str) -> bool:
    return master.startswith("sc://")


def _is_connect_session(session: "SparkSession") -> bool:
    return type(session).__module__.startswith("pyspark.sql.connect")


def hadoop_version() -> str | None:
    """Return the Hadoop version bundled with pyspark, read from its jar names."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    for jar in jars.glob("hadoop-client-api-*.jar"):
        return jar.name.removeprefix("hadoop-client-api-").removesuffix(".jar")

    return None


# NOTE: these s3a settings have not been run against an S3 server.
def _s3a_settings(settings: "Settings") -> dict[str, str]:
    scheme = "https" if settings.s3_secure else "http"
    return {
        "fs.s3a.endpoint": f"{scheme}://{settings.s3_endpoint}",
        "fs.s3a.endpoint.region": settings.s3_region,
        "fs.s3a.access.key": settings.s3_access_key,
        "fs.s3a.secret.key": settings.s3_secret_key,
        "fs.s3a.path.style.access": "true",
        "fs.s3a.connection.ssl.enabled": str(settings.s3_secure).lower(),
    }


def _build_session(master: str, settings: "Settings | None") -> "SparkSession":
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("mlhub-mcp")
    if _is_connect(master):
        return builder.remote(master).getOrCreate()

    check_java()
    # pyspark starts Python workers with PYSPARK_PYTHON, else 'python3' from PATH,
    # which lacks this environment's packages.
    python = os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    ui_enabled = os.environ.get(UI_ENV) == "1"
    builder = (
        builder.master(master)
        .config("spark.pyspark.python", python)
        .config("spark.driver.memory", "1g")
        .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1")
        .config("spark.ui.enabled", str(ui_enabled).lower())
        .config("spark.ui.showConsoleProgress", "false")
    )
    if master.startswith("local"):
        # The web UI binds to SPARK_LOCAL_IP, else to every interface.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = builder.config("spark.driver.host", "127.0.0.1")
        builder = builder.config("spark.driver.bindAddress", "127.0.0.1")
    if settings is not None and settings.artifact_backend == "s3":
        for key, value in _s3a_settings(settings).items():
            builder = builder.config(f"spark.hadoop.{key}", value)

    return builder.getOrCreate()


def spark_session(settings: "Settings | None" = None) -> "SparkSession":
    """Return this process's Spark session, creating it on first use.

    The first call fixes the master and, for an S3 artifact store, the s3a
    settings taken from ``settings``. Blocks for several seconds while the
    driver starts, so call it from a worker thread.

    Raises:
        ExecutionFailed: The 'spark' extra or Java is missing, or Spark did not start.
    """
    global _session

    _import_pyspark()
    with _session_lock:
        if _session is not None and not _is_stopped(_session):
            return _session

        master = spark_master()
        logger.info("starting spark session with master %s", master)
        started = time.perf_counter()
        try:
            _session = _build_session(master, settings)
        except ExecutionFailed:
            raise
        except Exception as exc:
            raise ExecutionFailed(
                f"failed to start Spark with master {master!r}: {type(exc).__name__}: {exc}"
            ) from exc

        logger.info("started spark session in %.1f s", time.perf_counter() - started)
        return _session


def _is_stopped(session: "SparkSession") -> bool:
    if _is_connect_session(session):
        return bool(session.is_stopped)

    from pyspark import SparkContext

    return SparkContext._active_spark_context is None


def stop_spark_session() -> None:
    """Stop this process's Spark session, if one was started."""
    global _session

    with _session_lock:
        if _session is not None:
            _session.stop()
            _session = None


# Python workers


def _worker_predictor(sha256: str, model_source: Any, model_doc: dict[str, Any]) -> Predictor:
    predictor = _worker_predictors.get(sha256)
    if predictor is not None:
        return predictor

    data = model_source if isinstance(model_source, bytes) else model_source.value
    suffix = Path(model_doc.get("file_name") or "").suffix
    with tempfile.TemporaryDirectory(prefix="mlhub-model-") as folder:
        path = Path(folder) / f"model{suffix}"
        path.write_bytes(data)
        predictor = load_predictor(path, model_doc, threads=1)

    while len(_worker_predictors) >= _WORKER_CACHE_SIZE:
        _worker_predictors.pop(next(iter(_worker_predictors)))
    _worker_predictors[sha256] = predictor
    return predictor


def _predict_partition(
    batches: Iterator[pa.RecordBatch],
    *,
    sha256: str,
    model_source: Any,
    model_doc: dict[str, Any],
    feature_names: list[str],
    prediction_type: pa.DataType,
    with_scores: bool,
) -> Iterator[pa.RecordBatch]:
    """Run the model on the Arrow batches of one partition, in a Python worker."""
    predictor = _worker_predictor(sha256, model_source, model_doc)
    names = ["row", "prediction", "score"] if with_scores else ["row", "prediction"]
    for batch in batches:
        if batch.num_rows == 0:
            continue

        predictions, scores = predictor.predict(feature_matrix(batch, feature_names))
        columns = [batch.column("row"), pa.array(predictions, type=prediction_type)]
        if with_scores:
            columns.append(pa.array(np.asarray(scores, dtype=np.float32)))

        yield pa.RecordBatch.from_arrays(columns, names=names)


# The driver


def _probe_output(predictor: Predictor, spec: RunSpec) -> tuple[pa.DataType, bool]:
    """Run the model on the first rows to learn the prediction type and whether it scores."""
    parquet = pq.ParquetFile(spec.dataset_path, pre_buffer=False)
    batch = next(parquet.iter_batches(batch_size=8, columns=spec.feature_columns), None)
    if batch is None:
        raise InvalidInput("the dataset contains no rows")

    predictions, scores = predictor.predict(feature_matrix(batch, spec.feature_columns))
    return pa.array(predictions).type, scores is not None


def _quote(column: str) -> str:
    escaped = column.replace("`", "``")
    return f"`{escaped}`"


class _SparkJob:
    """One Spark job that writes an execution's predictions, run in its own thread."""

    def __init__(
        self,
        session: "SparkSession",
        frame: "DataFrame",
        target: Path,
        tag: str,
        broadcast: Any = None,
    ) -> None:
        self.session = session
        self.frame = frame
        self.target = target
        self.tag = tag
        self.connect = _is_connect_session(session)
        self._broadcast = broadcast
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self._connect_progress = (0, 0)
        self._thread = threading.Thread(target=self._run, name=f"spark-{tag}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            if self.connect:
                self.session.addTag(self.tag)
                self.session.registerProgressHandler(self._on_connect_progress)
            else:
                description = f"mlhub-mcp execution {self.tag}"
                self.session.sparkContext.setJobGroup(self.tag, description, interruptOnCancel=True)
            self.frame.write.mode("overwrite").parquet(self.target.as_uri())
        except BaseException as exc:
            self.error = exc
        finally:
            self._release()
            self.finished.set()

    def _release(self) -> None:
        try:
            if self.connect:
                self.session.removeTag(self.tag)
                self.session.removeProgressHandler(self._on_connect_progress)
            elif self._broadcast is not None:
                self._broadcast.destroy(blocking=False)
        except Exception:
            logger.warning(
                "failed to release the spark job of execution %s", self.tag, exc_info=True
            )

    def _on_connect_progress(
        self, stages: Any, inflight_tasks: int, operation_id: str | None, done: bool
    ) -> None:
        # Spark Connect calls a session's handlers from every thread that runs a
        # query, so calls from other threads belong to other executions.
        if threading.get_ident() != self._thread.ident or stages is None:
            return
        stages = list(stages)
        completed = sum(stage.num_completed_tasks for stage in stages)
        self._connect_progress = (completed, sum(stage.num_tasks for stage in stages))

    def wait_progress(self, timeout: float) -> tuple[int, int]:
        """Wait up to ``timeout`` seconds for the job, then return its finished and total tasks."""
        self.finished.wait(timeout)
        if self.connect:
            done, total = self._connect_progress
            # Spark Connect's last progress message may predate the final tasks.
            if self.finished.is_set() and self.error is None:
                done = total
            return done, total

        tracker = self.session.sparkContext.statusTracker()
        done = total = 0
        for job_id in tracker.getJobIdsForGroup(self.tag):
            job = tracker.getJobInfo(job_id)
            stages = [tracker.getStageInfo(s) for s in job.stageIds] if job else []
            for stage in stages:
                if stage is not None:
                    done += stage.numCompletedTasks
                    total += stage.numTasks

        return done, total

    def cancel(self) -> None:
        if self.connect:
            self.session.interruptTag(self.tag)
        else:
            self.session.sparkContext.cancelJobGroup(self.tag)


def _prepare_job(
    session: "SparkSession",
    source: str,
    spec: RunSpec,
    model_doc: dict[str, Any],
    model_bytes: bytes,
    output_type: tuple[pa.DataType, bool],
    target: Path,
    tag: str,
) -> _SparkJob:
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_type
    from pyspark.sql.types import FloatType, LongType, StructField, StructType

    connect = _is_connect_session(session)
    if not connect:
        # A session of its own gives this execution its own SQL settings, while
        # sharing the SparkContext with the other executions.
        session = session.newSession()
    # NOTE: with Spark Connect, concurrent executions share one session, so one
    # execution may run with the Arrow batch size that another one set.
    session.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(spec.batch_size))

    # Positional aliases avoid clashes with a dataset column named 'row' and with
    # Spark's parsing of dots in column names.
    feature_names = [f"f{i}" for i in range(len(spec.feature_columns))]
    columns = [F.col("_metadata.row_index").alias("row")]
    for column, alias in zip(spec.feature_columns, feature_names, strict=True):
        columns.append(F.col(_quote(column)).alias(alias))
    frame = session.read.parquet(source).select(*columns)

    prediction_type, with_scores = output_type
    fields = [
        StructField("row", LongType()),
        StructField("prediction", from_arrow_type(prediction_type)),
    ]
    if with_scores:
        fields.append(StructField("score", FloatType()))

    # Classic Spark ships the model to each executor once, as a broadcast variable.
    # Spark Connect has no broadcast variables, so the bytes travel inside the function.
    broadcast = None if connect else session.sparkContext.broadcast(model_bytes)
    model_source = model_bytes if broadcast is None else broadcast
    predict = partial(
        _predict_partition,
        sha256=model_doc["sha256"],
        model_source=model_source,
        model_doc=model_doc,
        feature_names=feature_names,
        prediction_type=prediction_type,
        with_scores=with_scores,
    )
    frame = frame.mapInArrow(predict, StructType(fields))
    return _SparkJob(session, frame, target, tag, broadcast)


async def _cancel_job(job: _SparkJob, execution_id: str) -> None:
    # A cancel sent before Spark submits the job would miss it, so repeat it
    # until the job thread ends.
    with anyio.move_on_after(_CANCEL_WAIT_SECONDS):
        while not job.finished.is_set():
            await anyio.to_thread.run_sync(job.cancel)
            await anyio.to_thread.run_sync(job.finished.wait, _POLL_SECONDS)

    if not job.finished.is_set():
        logger.warning(
            "spark job of execution %s is still running %.0f s after it was cancelled",
            execution_id,
            _CANCEL_WAIT_SECONDS,
        )


async def _watch(
    job: _SparkJob, platform: "Platform", execution_id: str, progress: "ProgressCallback"
) -> None:
    """Report finished partitions until the job ends, and cancel it on request."""
    from mlhub_mcp.execution._local import CancelRequested

    reported: tuple[int, int] | None = None
    next_check = time.monotonic() + _CANCEL_CHECK_SECONDS
    try:
        while True:
            finished = job.finished.is_set()
            done, total = await anyio.to_thread.run_sync(job.wait_progress, _POLL_SECONDS)
            if total and (done, total) != reported:
                reported = (done, total)
                await progress(done, total, f"{done}/{total} partitions")
            if finished:
                return

            if time.monotonic() >= next_check:
                # Another process may have asked to cancel through the catalog.
                next_check = time.monotonic() + _CANCEL_CHECK_SECONDS
                current = await platform.catalog.get("executions", execution_id)
                if current and current.get("cancel_requested"):
                    raise CancelRequested
    except (anyio.get_cancelled_exc_class(), CancelRequested):
        with anyio.CancelScope(shield=True):
            await _cancel_job(job, execution_id)
        raise


def _job_failure(error: BaseException, source: str) -> ExecutionFailed:
    text = str(error)
    if "S3AFileSystem" in text or 'scheme "s3a"' in text:
        version = hadoop_version() or "<Hadoop version of pyspark>"
        return ExecutionFailed(
            f"Spark cannot read {source!r} because the hadoop-aws package is missing; "
            "restart the server with PYSPARK_SUBMIT_ARGS="
            f"'--packages org.apache.hadoop:hadoop-aws:{version} pyspark-shell'"
        )

    # A Python worker's error contains its traceback and then the JVM stack trace.
    # The traceback's last line names the exception.
    python_part = text.split("JVM stacktrace:")[0].strip()
    lines = [line for line in python_part.splitlines() if line.strip()]
    summary = lines[-1].strip() if lines else type(error).__name__
    return ExecutionFailed(f"the Spark job failed: {summary}")


def _collect_output(predictions_dir: Path, spec: RunSpec) -> RunOutput:
    """Sort Spark's prediction files by row and write the local engine's output file."""
    table = pq.read_table(predictions_dir).sort_by("row")
    rows = table.num_rows
    if rows != spec.total_rows:
        raise ExecutionFailed(
            f"Spark returned {rows} prediction rows for a dataset of {spec.total_rows} rows"
        )
    if not np.array_equal(table.column("row").to_numpy(), np.arange(rows)):
        raise ExecutionFailed(
            f"Spark returned row numbers other than 0 to {rows - 1}, so its predictions "
            "cannot be matched to the dataset rows"
        )

    predictions = table.column("prediction").to_numpy()
    scores = None
    if "score" in table.column_names:
        scores = table.column("score").to_numpy()

    labels = None
    if spec.label_column:
        label_table = pq.read_table(spec.dataset_path, columns=[spec.label_column])
        labels = label_table.column(0).to_numpy()

    pq.write_table(prediction_table(0, predictions, scores, labels), spec.output_path)
    return RunOutput(
        rows=rows,
        predictions=[predictions],
        labels=[labels] if labels is not None else [],
    )


async def run_spark(
    platform: "Platform",
    model_doc: dict[str, Any],
    dataset_doc: dict[str, Any],
    spec: RunSpec,
    progress: "ProgressCallback",
    execution_id: str,
) -> RunOutput:
    """Run a model over a table dataset on Spark and write ``spec.output_path``.

    Progress is reported as finished partitions. When ``MLHUB_SPARK_UI=1``,
    the returned output has the attribute ``spark_ui_url``.

    Raises:
        ExecutionFailed: Spark is not installed or did not start, or the job failed.
        InvalidInput: The dataset is not a table.
    """
    _import_pyspark()
    if dataset_doc.get("kind", "table") != "table":
        raise InvalidInput(
            f"the Spark engine runs on tables; dataset {dataset_doc['name']!r} is a "
            f"{dataset_doc['kind']} dataset, so use engine 'local'"
        )

    model_path = await platform.artifacts.fetch(model_doc["artifact_key"])
    predictor = await anyio.to_thread.run_sync(load_predictor, model_path, model_doc, 1)
    output_type = await anyio.to_thread.run_sync(_probe_output, predictor, spec)
    model_bytes = await anyio.to_thread.run_sync(model_path.read_bytes)
    source = platform.artifacts.spark_path(dataset_doc["artifact_key"])

    await progress(0, None, "starting Spark")
    session = await anyio.to_thread.run_sync(
        spark_session, platform.settings, abandon_on_cancel=True
    )

    scratch = Path(tempfile.mkdtemp(dir=platform.scratch_dir, prefix="spark-"))
    try:
        job = await anyio.to_thread.run_sync(
            _prepare_job,
            session,
            source,
            spec,
            model_doc,
            model_bytes,
            output_type,
            scratch / "predictions",
            execution_id,
        )
        job.start()
        await _watch(job, platform, execution_id, progress)
        if job.error is not None:
            logger.error("spark job of execution %s failed", execution_id, exc_info=job.error)
            raise _job_failure(job.error, source) from job.error

        output = await anyio.to_thread.run_sync(_collect_output, scratch / "predictions", spec)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(partial(shutil.rmtree, scratch, ignore_errors=True))

    if os.environ.get(UI_ENV) == "1" and not _is_connect_session(session):
        output.spark_ui_url = session.sparkContext.uiWebUrl  # type: ignore[attr-defined]
    return output
