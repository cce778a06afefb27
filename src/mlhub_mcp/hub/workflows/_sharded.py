"""Orchestrator-workers: one execution split into row-range shards run by parallel workers.

The hub reads the deployment, model and dataset from the shared catalog and
artifact store, loads the model once, and runs the shards in worker threads.
The threads run in parallel because onnxruntime, scikit-learn and numpy
release the GIL while they compute. A failed shard is retried up to ``max_attempts``
times. The merged predictions and metrics are stored and recorded in the
catalog as an execution with engine ``sharded``, so get_execution,
get_predictions, list_executions and delete_execution work on it.

The hub must use the same catalog and artifact store as the execution server
(the same MLHUB_HOME, or the same MongoDB and S3).

NOTE: the shards always run in threads of the hub process; running them as
Spark tasks when Spark is configured is not implemented.
"""

import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.from_thread
import anyio.to_thread
import mcp.types as types
from pydantic import BaseModel, ConfigDict, Field

from mlhub_mcp.execution._service import new_execution_doc
from mlhub_mcp.hub._local_tools import LocalTool, ProgressFn
from mlhub_mcp.hub.workflows import _shard_worker as worker
from mlhub_mcp.hub.workflows._base import (
    MonotonicProgress,
    Outcome,
    WorkflowError,
    call_tool,
    define_tool,
)
from mlhub_mcp.hub.workflows._checks import (
    compatibility_checks,
    failed,
    failure_text,
    select_features,
)
from mlhub_mcp.ids import utc_now
from mlhub_mcp.models._formats import load_predictor
from mlhub_mcp.platform import Platform, open_platform

if TYPE_CHECKING:
    from mlhub_mcp.hub.server import Hub

logger = logging.getLogger(__name__)

TOOL_NAME = "workflow_sharded_run"
ENGINE = "sharded"
_PROGRESS_INTERVAL = 0.2
_CANCEL_POLL_SECONDS = 1.0

ShardStatus = Literal["succeeded", "failed", "stopped", "not_run"]


class ShardedInput(BaseModel):
    """Arguments of workflow_sharded_run."""

    model_config = ConfigDict(extra="forbid")

    deployment: str = Field(description="Deployment of a model file (not a hosted LLM)")
    dataset: str = Field(description="Table dataset to run on")
    label_column: str | None = Field(
        default=None, description="Column with the true values; enables metrics"
    )
    feature_columns: list[str] | None = Field(
        default=None,
        description="Columns fed to the model, in order; all but the label when omitted",
    )
    shards: int = Field(default=4, ge=1, le=64, description="Number of row ranges")
    workers: int | None = Field(
        default=None, ge=1, le=32, description="Shards run at once; default min(shards, CPU count)"
    )
    batch_size: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Rows per batch; the deployment's default"
    )
    max_attempts: int = Field(
        default=2, ge=1, le=5, description="Tries per shard before the run fails"
    )


class ShardReport(BaseModel):
    """One shard's outcome."""

    index: int
    start_row: int
    stop_row: int = Field(description="first row after the shard")
    rows: int = Field(description="rows done by the last attempt")
    attempts: int
    status: ShardStatus = Field(
        description="'stopped' when the run was cancelled or another shard failed"
    )
    errors: list[str] = Field(description="the error of each failed attempt")
    duration_seconds: float | None = Field(description="duration of the last attempt")


class ShardedOutput(BaseModel):
    """Result of workflow_sharded_run."""

    execution: dict[str, Any] = Field(
        description="the recorded execution, as get_execution returns it"
    )
    workers: int
    shards: list[ShardReport]


@dataclass
class Shard:
    """A shard's range and its state during the run."""

    index: int
    start: int
    stop: int
    status: ShardStatus = "not_run"
    attempts: int = 0
    rows_done: int = 0
    errors: list[str] = field(default_factory=list)
    duration: float | None = None
    output: worker.ShardOutput | None = None

    def state(self) -> str:
        """Describe the shard for a progress message, e.g. '80/135 rows, attempt 2'."""
        size = self.stop - self.start
        if self.status in ("failed", "stopped"):
            return self.status
        if self.rows_done == size and self.attempts:
            return "done"
        if not self.attempts:
            return "waiting"
        retry = f", attempt {self.attempts}" if self.attempts > 1 else ""
        return f"{self.rows_done}/{size} rows{retry}"

    def report(self) -> ShardReport:
        return ShardReport(
            index=self.index,
            start_row=self.start,
            stop_row=self.stop,
            rows=self.rows_done,
            attempts=self.attempts,
            status=self.status,
            errors=self.errors,
            duration_seconds=None if self.duration is None else round(self.duration, 3),
        )


@dataclass
class Inputs:
    """The catalog entries and local files of one sharded run."""

    deployment: dict[str, Any]
    model: dict[str, Any]
    dataset: dict[str, Any]
    features: list[str]
    model_path: Path
    dataset_path: Path


async def _load_inputs(platform: Platform, params: ShardedInput) -> Inputs:
    catalog = platform.catalog
    deployment = await catalog.find_one("deployments", {"name": params.deployment})
    if deployment is None:
        raise WorkflowError(
            f"deployment {params.deployment!r} is not in the hub's catalog "
            f"({platform.settings.catalog_backend} at {platform.settings.home}); "
            "list_deployments shows the deployments, and the hub must share its storage "
            "with the execution server"
        )
    model = await catalog.get("models", deployment["model_id"])
    if model is None:
        raise WorkflowError(f"the model of deployment {params.deployment!r} was deleted")
    if model.get("kind") == "llm":
        raise WorkflowError(
            f"deployment {params.deployment!r} serves a hosted LLM; sharded runs need a "
            "model file, so use run_execution"
        )
    dataset = await catalog.find_one("datasets", {"name": params.dataset})
    if dataset is None:
        raise WorkflowError(
            f"dataset {params.dataset!r} not found; list_datasets shows the datasets"
        )
    if dataset.get("kind", "table") != "table":
        raise WorkflowError(
            f"dataset {params.dataset!r} contains images; sharded runs need a table"
        )

    checks = compatibility_checks(model, dataset, params.label_column, params.feature_columns)
    if failed(checks):
        raise WorkflowError(f"the model does not fit the dataset: {failure_text(checks)}")

    columns = [c["name"] for c in dataset["columns"]]
    signature = model.get("signature") or {}
    features = select_features(signature, columns, params.feature_columns, params.label_column)
    model_path = await platform.artifacts.fetch(model["artifact_key"])
    dataset_path = await platform.artifacts.fetch(dataset["artifact_key"])
    return Inputs(deployment, model, dataset, features, model_path, dataset_path)


def _execution_doc(inputs: Inputs, parameters: dict[str, Any]) -> dict[str, Any]:
    doc = new_execution_doc(
        inputs.deployment, inputs.model, inputs.dataset, parameters, ENGINE, status="running"
    )
    # The hub process runs the shards, so an execution server marks the
    # execution failed if the hub dies before it finishes.
    doc["owner"] = {"host": socket.gethostname(), "pid": os.getpid(), "instance": "hub"}
    return doc


class ShardedRun:
    """Runs the shards of one execution with retries, and reports progress."""

    def __init__(
        self,
        job: worker.ShardJob,
        shards: list[Shard],
        workers: int,
        max_attempts: int,
        scratch_dir: Path,
        progress: ProgressFn,
        execution_id: str,
    ) -> None:
        self.job = job
        self.shards = shards
        # A shard keeps its worker slot across its retries. The thread limiter
        # only keeps these threads off anyio's default limiter.
        self.slots = anyio.CapacityLimiter(workers)
        self.threads = anyio.CapacityLimiter(workers)
        self.max_attempts = max_attempts
        self.scratch_dir = scratch_dir
        self.progress = MonotonicProgress(progress)
        self.execution_id = execution_id
        self.total = sum(s.stop - s.start for s in shards)
        self.files: list[Path] = []

    async def run(self) -> None:
        async with anyio.create_task_group() as group:
            for shard in self.shards:
                group.start_soon(self._run_with_retries, shard)

    async def _report(self) -> None:
        # Every message shows every shard: progress values must increase, so a
        # report whose total equals the previous one is dropped, and a message
        # about one shard alone could be lost that way.
        done = sum(s.rows_done for s in self.shards)
        message = "; ".join(f"shard {s.index + 1} {s.state()}" for s in self.shards)
        await self.progress(done, self.total, message)

    def _reporter(self, shard: Shard) -> Callable[[int], None]:
        last = 0.0

        def report(rows: int) -> None:
            nonlocal last
            shard.rows_done = rows
            now = time.monotonic()
            if now - last >= _PROGRESS_INTERVAL or rows == shard.stop - shard.start:
                last = now
                anyio.from_thread.run(self._report)

        return report

    async def _run_with_retries(self, shard: Shard) -> None:
        async with self.slots:
            await self._attempts(shard)

    async def _attempts(self, shard: Shard) -> None:
        while shard.attempts < self.max_attempts:
            if self.job.stop.is_set():
                shard.status = "stopped"
                return
            shard.attempts += 1
            shard.rows_done = 0
            handle, name = tempfile.mkstemp(dir=self.scratch_dir, suffix=".parquet")
            os.close(handle)
            path = Path(name)
            self.files.append(path)
            started = time.perf_counter()
            try:
                shard.output = await anyio.to_thread.run_sync(
                    worker.run_shard,
                    self.job,
                    shard.start,
                    shard.stop,
                    path,
                    self._reporter(shard),
                    limiter=self.threads,
                    # A cancelled caller need not wait for the batch in progress;
                    # the stop flag set below ends the thread at its next batch.
                    abandon_on_cancel=True,
                )
            except anyio.get_cancelled_exc_class():
                self.job.stop.set()
                shard.status = "stopped"
                raise
            except worker.ShardStopped:
                shard.status = "stopped"
                return
            except Exception as exc:
                # Any error of the model or the file fails this attempt only.
                shard.duration = time.perf_counter() - started
                shard.errors.append(f"{type(exc).__name__}: {exc}")
                logger.warning(
                    "execution %s shard %d attempt %d of %d failed: %s",
                    self.execution_id,
                    shard.index,
                    shard.attempts,
                    self.max_attempts,
                    shard.errors[-1],
                )
                continue

            shard.duration = time.perf_counter() - started
            shard.status = "succeeded"
            await self._report()
            return

        shard.status = "failed"
        self.job.stop.set()


async def _watch_cancel(platform: Platform, execution_id: str, stop: threading.Event) -> None:
    # cancel_execution on the execution server only marks the catalog entry,
    # because the run is not in that server's task group, so this task polls it.
    while not stop.is_set():
        await anyio.sleep(_CANCEL_POLL_SECONDS)
        current = await platform.catalog.get("executions", execution_id)
        if current is not None and current.get("cancel_requested"):
            logger.info("execution %s: cancel requested", execution_id)
            stop.set()


def _metrics(task_type: str, outputs: list[worker.ShardOutput], label_column: str | None) -> Any:
    # scikit-learn loads in about a second, so the hub imports it on first use.
    from mlhub_mcp.execution._metrics import classification_metrics, regression_metrics

    if not label_column:
        return None
    predictions, labels = worker.gather(outputs)
    if labels is None or len(labels) == 0:
        return None
    if task_type == "regression":
        return regression_metrics(labels, predictions)
    if task_type == "classification":
        return classification_metrics(labels, predictions)
    return None


async def _store_results(
    platform: Platform, doc: dict[str, Any], shards: list[Shard], label_column: str | None
) -> dict[str, Any]:
    outputs = [s.output for s in shards if s.output is not None]
    metrics = await anyio.to_thread.run_sync(_metrics, doc["task_type"], outputs, label_column)
    changes: dict[str, Any] = {
        "status": "succeeded",
        "rows_processed": sum(o.rows for o in outputs),
        "metrics": metrics,
    }
    handle, name = tempfile.mkstemp(dir=platform.scratch_dir, suffix=".parquet")
    os.close(handle)
    merged = Path(name)
    try:
        if await anyio.to_thread.run_sync(worker.merge_outputs, outputs, merged):
            changes["predictions_key"] = (await platform.artifacts.put_file(merged)).key
    finally:
        merged.unlink(missing_ok=True)

    confusion = (metrics or {}).get("confusion_matrix")
    if confusion:
        from mlhub_mcp.execution._metrics import confusion_matrix_png

        title = f"{doc['model_name']} v{doc['model_version']} on {doc['dataset_name']}"
        png = await anyio.to_thread.run_sync(confusion_matrix_png, confusion, title)
        changes["plot_key"] = (await platform.artifacts.put_bytes(png, platform.scratch_dir)).key
    return changes


def _finish_changes(changes: dict[str, Any], started: float) -> dict[str, Any]:
    duration = time.perf_counter() - started
    changes = {**changes, "finished_at": utc_now(), "duration_seconds": round(duration, 3)}
    rows = changes.get("rows_processed")
    if rows and duration > 0:
        changes["rows_per_second"] = round(rows / duration, 1)
    return changes


def _failure(shards: list[Shard], cancelled: bool) -> str | None:
    broken = [s for s in shards if s.status == "failed"]
    if broken:
        shard = broken[0]
        return (
            f"shard {shard.index} (rows {shard.start}-{shard.stop - 1}) failed after "
            f"{shard.attempts} attempts: {shard.errors[-1]}"
        )
    if cancelled:
        return "cancelled while running"
    return None


async def run_sharded(hub: "Hub", params: ShardedInput, progress: ProgressFn) -> Outcome:
    async with open_platform(hub.settings) as platform:
        inputs = await _load_inputs(platform, params)
        predictor = await anyio.to_thread.run_sync(
            load_predictor, inputs.model_path, inputs.model, inputs.deployment["threads"]
        )
        ranges = worker.plan_shards(inputs.dataset["row_count"], params.shards)
        workers = params.workers or min(len(ranges), os.cpu_count() or 1)
        batch_size = params.batch_size or inputs.deployment["batch_size"]
        parameters = {
            "batch_size": batch_size,
            "label_column": params.label_column,
            "feature_columns": inputs.features,
            "shards": len(ranges),
            "workers": workers,
            "max_attempts": params.max_attempts,
        }
        doc = _execution_doc(inputs, parameters)
        await platform.catalog.insert("executions", doc)
        logger.info(
            "execution %s: %d shards of %s on %s, %d workers",
            doc["id"],
            len(ranges),
            params.deployment,
            params.dataset,
            workers,
        )

        stop = threading.Event()
        job = worker.ShardJob(
            predictor, inputs.dataset_path, inputs.features, params.label_column, batch_size, stop
        )
        shards = [Shard(i, start, end) for i, (start, end) in enumerate(ranges)]
        run = ShardedRun(
            job, shards, workers, params.max_attempts, platform.scratch_dir, progress, doc["id"]
        )
        started = time.perf_counter()
        try:
            await _run_and_record(platform, run, doc, params, started)
        finally:
            for path in run.files:
                path.unlink(missing_ok=True)

    execution = await call_tool(
        hub, "get_execution", {"execution_id": doc["id"], "include_plot": False}
    )
    output = ShardedOutput(
        execution=execution, workers=workers, shards=[s.report() for s in shards]
    )
    if execution["status"] != "succeeded":
        return Outcome(
            output, error=f"execution {doc['id']} {execution['status']}: {execution['error']}"
        )
    return Outcome(output)


async def _run_and_record(
    platform: Platform, run: ShardedRun, doc: dict[str, Any], params: ShardedInput, started: float
) -> None:
    stop = run.job.stop
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(_watch_cancel, platform, doc["id"], stop)
            await run.run()
            group.cancel_scope.cancel()
    except anyio.get_cancelled_exc_class():
        stop.set()
        with anyio.CancelScope(shield=True):
            changes = {"status": "cancelled", "error": "cancelled by the caller"}
            await platform.catalog.update(
                "executions", doc["id"], _finish_changes(changes, started)
            )
        raise

    error = _failure(run.shards, cancelled=stop.is_set())
    if error is not None:
        status = "cancelled" if error.startswith("cancelled") else "failed"
        changes = {
            "status": status,
            "error": error,
            "rows_processed": sum(s.rows_done for s in run.shards),
        }
        logger.warning("execution %s %s: %s", doc["id"], status, error)
    else:
        changes = await _store_results(platform, doc, run.shards, params.label_column)
    await platform.catalog.update("executions", doc["id"], _finish_changes(changes, started))


def sharded_tool() -> LocalTool:
    return define_tool(
        name=TOOL_NAME,
        title="Run an execution in parallel shards",
        description=(
            "Run a deployment of a model file over a table dataset split into 'shards' "
            "row ranges, processed by parallel workers in the hub, with progress per "
            "shard and up to 'max_attempts' tries per shard. The merged predictions and "
            "metrics equal a single run_execution's, and are recorded as an execution "
            "(engine 'sharded') that get_execution, get_predictions and cancel_execution "
            "work on. Not for hosted LLM deployments."
        ),
        input_model=ShardedInput,
        output_model=ShardedOutput,
        annotations=types.ToolAnnotations(
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=False,
        ),
        run=run_sharded,
    )
