"""Deployments and executions: validation, the run loop, status and results."""

import logging
import os
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import numpy as np

from mlhub_mcp.catalog import Page
from mlhub_mcp.errors import (
    Conflict,
    ExecutionFailed,
    InvalidInput,
    MLHubError,
    NotFound,
    SchemaMismatch,
)
from mlhub_mcp.execution._checks import check_label, format_names, select_features
from mlhub_mcp.execution._local import BatchRunner, CancelRequested, RunOutput, RunSpec
from mlhub_mcp.execution._metrics import (
    MAX_PLOT_CLASSES,
    classification_metrics,
    confusion_matrix_png,
    regression_metrics,
)
from mlhub_mcp.ids import new_id, utc_now
from mlhub_mcp.models._formats import Predictor, load_predictor
from mlhub_mcp.paths import check_entry_name
from mlhub_mcp.platform import Platform, process_alive

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, float | None, str | None], Awaitable[None]]

ENGINES = ("local", "spark", "groq")
ENVIRONMENTS = ("production", "staging", "development")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
_PROGRESS_INTERVAL = 0.2


async def _no_progress(progress: float, total: float | None, message: str | None) -> None:
    return None


def new_execution_doc(
    deployment: dict[str, Any],
    model: dict[str, Any],
    dataset: dict[str, Any],
    parameters: dict[str, Any],
    engine: str,
    status: str = "queued",
) -> dict[str, Any]:
    """Build the catalog entry of a new execution, with every field it will carry."""
    now = utc_now()
    return {
        "id": new_id(),
        "status": status,
        "engine": engine,
        "deployment_id": deployment["id"],
        "deployment_name": deployment["name"],
        "model_id": model["id"],
        "model_name": model["name"],
        "model_version": model["version"],
        "task_type": model["task_type"],
        "dataset_id": dataset["id"],
        "dataset_name": dataset["name"],
        "dataset_sha256": dataset["sha256"],
        "parameters": parameters,
        "rows_total": dataset["row_count"],
        "rows_processed": 0,
        "created_at": now,
        "started_at": now if status == "running" else None,
        "finished_at": None,
        "duration_seconds": None,
        "error": None,
        "metrics": None,
        "predictions_key": None,
        "plot_key": None,
        "cancel_requested": False,
    }


class ExecutionService:
    """Creates deployments and runs executions in this server process."""

    def __init__(self, platform: Platform, task_group: anyio.abc.TaskGroup) -> None:
        self.platform = platform
        self.catalog = platform.catalog
        self._task_group = task_group
        self._predictors: dict[str, Predictor] = {}
        self._load_lock = anyio.Lock()
        self._scopes: dict[str, tuple[anyio.CancelScope, anyio.Event]] = {}
        # Recorded on each execution this service queues or runs, so that
        # another server process can tell when the owner has died.
        self._owner = {"host": socket.gethostname(), "pid": os.getpid(), "instance": new_id()}

    async def recover(self) -> int:
        """Settle executions left queued or running by a server process that died.

        Returns the number of executions marked failed.
        """
        settled = 0
        stale = await self.catalog.find_all("executions", {"status": ["queued", "running"]})
        for doc in stale:
            if (await self._settle_abandoned(doc))["status"] == "failed":
                settled += 1

        if settled:
            logger.warning("marked %d executions of stopped server processes as failed", settled)
        return settled

    async def _settle_abandoned(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Mark ``doc`` failed if the process that queued or ran it has died."""
        owner = doc.get("owner") or {}
        if doc["status"] not in ("queued", "running"):
            return doc
        if owner.get("host") != self._owner["host"] or not owner.get("pid"):
            return doc
        if owner["pid"] == os.getpid() or process_alive(owner["pid"]):
            return doc

        changes = {
            "status": "failed",
            "finished_at": utc_now(),
            "error": (
                f"the execution server that ran this execution (pid {owner['pid']}) stopped "
                "before it finished; run it again"
            ),
        }
        updated = await self.catalog.update(
            "executions", doc["id"], changes, expected={"status": doc["status"]}
        )
        if updated is None:
            return await self.get_execution(doc["id"])

        logger.warning("execution %s of stopped pid %s marked failed", doc["id"], owner["pid"])
        return updated

    # Deployments

    async def create_deployment(
        self,
        *,
        name: str,
        model_name: str,
        model_version: int | None,
        environment: str,
        batch_size: int,
        threads: int,
        engine: str | None,
    ) -> dict[str, Any]:
        """Check the model, load it, and add the deployment to the catalog.

        Raises:
            NotFound: The model or version does not exist.
            Conflict: A deployment with this name exists.
        """
        check_entry_name(name, "deployment")
        if environment not in ENVIRONMENTS:
            raise InvalidInput(f"unknown environment {environment!r}; use one of {ENVIRONMENTS}")
        if await self.catalog.find_one("deployments", {"name": name}) is not None:
            raise Conflict(f"deployment {name!r} already exists; choose another name or delete it")

        model = await self._model(model_name, model_version)
        engine = self._engine_for(model, engine)

        doc = {
            "id": new_id(),
            "name": name,
            "model_id": model["id"],
            "model_name": model["name"],
            "model_version": model["version"],
            "model_kind": model.get("kind", "file"),
            "task_type": model["task_type"],
            "environment": environment,
            "engine": engine,
            "batch_size": batch_size,
            "threads": threads,
            "created_at": utc_now(),
        }
        if engine == "local":
            self._predictors[doc["id"]] = await self._load(model, threads)

        await self.catalog.insert("deployments", doc)
        logger.info("created deployment %s of %s v%s", name, model["name"], model["version"])
        return doc

    def _engine_for(self, model: dict[str, Any], engine: str | None) -> str:
        """Return the engine that runs ``model``: ``engine``, or the model's default.

        Raises:
            InvalidInput: The engine is unknown or cannot run this kind of model.
        """
        if engine is not None and engine not in ENGINES:
            raise InvalidInput(f"unknown engine {engine!r}; use one of {ENGINES}")
        if model.get("kind") == "llm":
            if engine not in (None, "groq"):
                raise InvalidInput(
                    f"model {model['name']!r} is a hosted LLM, which only engine 'groq' "
                    f"runs; leave 'engine' out or set it to 'groq', not {engine!r}"
                )
            return "groq"
        if engine == "groq":
            raise InvalidInput(
                f"engine 'groq' runs hosted LLMs; model {model['name']!r} is a "
                f"{model['format']} file, so use engine 'local' or 'spark'"
            )
        if engine == "spark":
            from mlhub_mcp.execution._spark import check_spark_available

            check_spark_available()
        return engine or "local"

    async def _model(self, name: str, version: int | None) -> dict[str, Any]:
        if version is not None:
            model = await self.catalog.find_one("models", {"name": name, "version": version})
            if model is None:
                raise NotFound(
                    "model", f"{name} version {version}", "list_model_versions shows the versions"
                )
            return model

        versions = await self.catalog.find_all("models", {"name": name})
        if not versions:
            raise NotFound("model", name, "list_models shows the registered models")
        return max(versions, key=lambda m: m["version"])

    async def _load(self, model: dict[str, Any], threads: int) -> Predictor:
        path = await self.platform.artifacts.fetch(model["artifact_key"])
        return await anyio.to_thread.run_sync(load_predictor, path, model, threads)

    async def predictor(self, deployment: dict[str, Any]) -> Predictor:
        """Return the loaded model of a deployment, loading it after a restart."""
        async with self._load_lock:
            if deployment["id"] not in self._predictors:
                model = await self.catalog.get("models", deployment["model_id"])
                if model is None:
                    raise NotFound("model", deployment["model_name"])
                self._predictors[deployment["id"]] = await self._load(model, deployment["threads"])
            return self._predictors[deployment["id"]]

    async def get_deployment(self, name: str) -> dict[str, Any]:
        doc = await self.catalog.find_one("deployments", {"name": name})
        if doc is None:
            raise NotFound("deployment", name, "list_deployments shows the deployments")
        return doc

    async def list_deployments(
        self, *, environment: str | None, limit: int, cursor: str | None
    ) -> Page:
        filters = {"environment": environment} if environment else None
        return await self.catalog.find("deployments", filters, limit=limit, cursor=cursor)

    async def delete_deployment(self, name: str) -> dict[str, Any]:
        doc = await self.get_deployment(name)
        unfinished = await self.catalog.find_all(
            "executions", {"deployment_id": doc["id"], "status": ["queued", "running"]}
        )
        settled = [await self._settle_abandoned(e) for e in unfinished]
        active = next((e for e in settled if e["status"] in ("queued", "running")), None)
        if active is not None:
            raise Conflict(
                f"deployment {name!r} has execution {active['id']} {active['status']}; "
                "cancel it or wait for it to finish"
            )

        await self.catalog.delete("deployments", doc["id"])
        self._predictors.pop(doc["id"], None)
        logger.info("deleted deployment %s", name)
        return doc

    # Executions

    async def prepare(
        self,
        *,
        deployment_name: str,
        dataset_name: str,
        batch_size: int | None,
        feature_columns: list[str] | None,
        label_column: str | None,
        engine: str | None,
        llm: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Validate an execution and add it to the catalog as queued.

        Raises:
            NotFound: The deployment or dataset does not exist.
            SchemaMismatch: The dataset lacks the columns or types the model needs.
        """
        deployment = await self.get_deployment(deployment_name)
        dataset = await self.catalog.find_one("datasets", {"name": dataset_name})
        if dataset is None:
            raise NotFound("dataset", dataset_name, "list_datasets shows the registered datasets")

        model = await self.catalog.get("models", deployment["model_id"])
        if model is None:
            raise NotFound("model", deployment["model_name"], "the deployment's model was deleted")

        run_engine = self._engine_for(model, engine or deployment["engine"])
        columns = {c["name"]: c["type"] for c in dataset.get("columns", [])}
        if label_column is not None and label_column not in columns:
            raise SchemaMismatch(
                f"label column {label_column!r} is not in dataset {dataset_name!r}; "
                f"its columns: {format_names(list(columns))}"
            )
        if feature_columns is not None and not feature_columns:
            raise InvalidInput(
                "'feature_columns' is empty; omit it to use every column but the label"
            )
        if llm and run_engine != "groq":
            raise InvalidInput(
                f"{sorted(llm)} apply to LLM deployments only; deployment "
                f"{deployment_name!r} runs a {model['format']} model"
            )
        if label_column is not None and run_engine != "groq":
            check_label(model, dataset, columns, label_column)

        parameters: dict[str, Any] = {
            "batch_size": batch_size or deployment["batch_size"],
            "label_column": label_column,
        }
        if run_engine == "groq":
            from mlhub_mcp.execution._groq import validate_llm_parameters

            parameters["llm"] = validate_llm_parameters(llm or {}, columns)
            parameters["feature_columns"] = []
        else:
            if dataset.get("kind", "table") == "table":
                features = select_features(model, dataset, columns, feature_columns, label_column)
            else:
                features = []
            parameters["feature_columns"] = features

        doc = new_execution_doc(deployment, model, dataset, parameters, run_engine)
        doc["owner"] = self._owner
        await self.catalog.insert("executions", doc)
        return doc

    async def get_execution(self, execution_id: str) -> dict[str, Any]:
        doc = await self.catalog.get("executions", execution_id)
        if doc is None:
            raise NotFound("execution", execution_id, "list_executions shows the executions")
        return await self._settle_abandoned(doc)

    async def list_executions(
        self, *, deployment: str | None, status: str | None, limit: int, cursor: str | None
    ) -> Page:
        filters: dict[str, Any] = {}
        if deployment:
            filters["deployment_id"] = (await self.get_deployment(deployment))["id"]
        if status:
            filters["status"] = status
        page = await self.catalog.find(
            "executions", filters, limit=limit, cursor=cursor, newest_first=True
        )
        page.items = [await self._settle_abandoned(doc) for doc in page.items]
        return page

    def start_in_background(self, execution_id: str) -> None:
        """Run a queued execution in this server's task group and return at once."""
        self._task_group.start_soon(self._run_quietly, execution_id)

    async def _run_quietly(self, execution_id: str) -> None:
        try:
            await self.run(execution_id, _no_progress)
        except MLHubError:
            pass
        except Exception:
            logger.exception("execution %s crashed", execution_id)

    async def cancel(self, execution_id: str) -> dict[str, Any]:
        """Cancel a queued or running execution."""
        doc = await self.get_execution(execution_id)
        if doc["status"] in TERMINAL_STATUSES:
            return doc

        if doc["status"] == "queued":
            updated = await self.catalog.update(
                "executions",
                execution_id,
                {
                    "status": "cancelled",
                    "finished_at": utc_now(),
                    "error": "cancelled before start",
                },
                expected={"status": "queued"},
            )
            if updated is not None:
                return updated

        await self.catalog.update("executions", execution_id, {"cancel_requested": True})
        running = self._scopes.get(execution_id)
        if running is not None:
            scope, finished = running
            scope.cancel()
            with anyio.move_on_after(30):
                await finished.wait()
            return await self.get_execution(execution_id)

        # Another server process runs it and checks the request about once a
        # second, so wait a little for it to stop.
        for _ in range(50):
            doc = await self.get_execution(execution_id)
            if doc["status"] in TERMINAL_STATUSES:
                break
            await anyio.sleep(0.2)

        return doc

    async def run(self, execution_id: str, progress: ProgressCallback) -> dict[str, Any]:
        """Claim a queued execution, run it and record the outcome.

        Raises:
            Conflict: Another worker has claimed the execution.
            ExecutionFailed: The run stopped on an error, which is also recorded.
        """
        claimed = await self.catalog.update(
            "executions",
            execution_id,
            {"status": "running", "started_at": utc_now(), "owner": self._owner},
            expected={"status": "queued"},
        )
        if claimed is None:
            doc = await self.get_execution(execution_id)
            raise Conflict(f"execution {execution_id} is {doc['status']}, not queued")

        started = time.perf_counter()
        scope = anyio.CancelScope()
        finished = anyio.Event()
        self._scopes[execution_id] = (scope, finished)
        try:
            try:
                with scope:
                    changes = await self._run_engine(claimed, progress)
            except CancelRequested:
                changes = {"status": "cancelled", "error": "cancelled on request"}
            if scope.cancelled_caught:
                changes = {"status": "cancelled", "error": "cancelled on request"}
            return await self._finish(execution_id, started, changes)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._finish(
                    execution_id,
                    started,
                    {"status": "cancelled", "error": "cancelled by the caller"},
                )
            raise
        except Exception as exc:
            message = str(exc) if isinstance(exc, MLHubError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, MLHubError):
                logger.exception("execution %s failed", execution_id)
            await self._finish(execution_id, started, {"status": "failed", "error": message})
            raise ExecutionFailed(f"execution {execution_id} failed: {message}") from exc
        finally:
            self._scopes.pop(execution_id, None)
            finished.set()

    async def _finish(
        self, execution_id: str, started: float, changes: dict[str, Any]
    ) -> dict[str, Any]:
        duration = time.perf_counter() - started
        changes = {**changes, "finished_at": utc_now(), "duration_seconds": round(duration, 3)}
        rows = changes.get("rows_processed")
        if rows and duration > 0:
            changes["rows_per_second"] = round(rows / duration, 1)

        doc = await self.catalog.update("executions", execution_id, changes)
        logger.info("execution %s %s in %.2f s", execution_id, changes["status"], duration)
        return doc or await self.get_execution(execution_id)

    async def _run_engine(self, doc: dict[str, Any], progress: ProgressCallback) -> dict[str, Any]:
        dataset = await self.catalog.get("datasets", doc["dataset_id"])
        if dataset is None or dataset["sha256"] != doc["dataset_sha256"]:
            raise ExecutionFailed(f"dataset {doc['dataset_name']!r} was deleted or replaced")
        dataset_path = await self.platform.artifacts.fetch(dataset["artifact_key"])
        output_path = Path(
            tempfile.mkstemp(
                dir=self.platform.scratch_dir, prefix=f"run-{os.getpid()}-", suffix=".parquet"
            )[1]
        )
        try:
            if doc["engine"] == "groq":
                from mlhub_mcp.execution._groq import run_llm

                model = await self.catalog.get("models", doc["model_id"])
                rows, metrics = await run_llm(
                    model,
                    dataset_path,
                    doc["parameters"],
                    output_path,
                    self._tracked(doc, progress),
                )
                return await self._store_results(doc, rows, metrics, output_path)

            spec = RunSpec(
                dataset_path=dataset_path,
                feature_columns=doc["parameters"]["feature_columns"],
                label_column=doc["parameters"]["label_column"],
                batch_size=doc["parameters"]["batch_size"],
                output_path=output_path,
                total_rows=doc["rows_total"],
                task_type=doc["task_type"],
            )
            deployment = await self.catalog.get("deployments", doc["deployment_id"])
            if deployment is None:
                raise ExecutionFailed(f"deployment {doc['deployment_name']!r} was deleted")

            if doc["engine"] == "spark":
                from mlhub_mcp.execution._spark import run_spark

                model = await self.catalog.get("models", doc["model_id"])
                tracked = self._tracked(doc, progress, counts_rows=False)
                output = await run_spark(self.platform, model, dataset, spec, tracked, doc["id"])
            elif dataset.get("kind", "table") != "table":
                from mlhub_mcp.execution._images import run_images

                output = await run_images(
                    await self.predictor(deployment),
                    dataset_path,
                    spec,
                    self._tracked(doc, progress),
                )
            else:
                output = await self._run_local(
                    await self.predictor(deployment), spec, self._tracked(doc, progress)
                )

            # scikit-learn takes about half a second per million rows, so the
            # metrics are computed off the event loop.
            metrics = await anyio.to_thread.run_sync(self._metrics, doc, output)
            changes = await self._store_results(doc, output.rows, metrics, output_path)
            spark_ui_url = getattr(output, "spark_ui_url", None)
            if spark_ui_url:
                changes["spark_ui_url"] = spark_ui_url
            return changes
        finally:
            output_path.unlink(missing_ok=True)

    def _tracked(
        self, doc: dict[str, Any], progress: ProgressCallback, counts_rows: bool = True
    ) -> ProgressCallback:
        """Wrap ``progress`` so that it also records the row count and honours cancellation.

        About once a second the wrapper stores ``rows_processed`` (when the
        engine reports rows, not partitions) and raises if another process
        asked to cancel the execution through the catalog.
        """
        last_check = time.monotonic()

        async def report(done: float, total: float | None, message: str | None) -> None:
            nonlocal last_check
            await progress(done, total, message)

            now = time.monotonic()
            if now - last_check < 1.0:
                return
            last_check = now

            current = await self.catalog.get("executions", doc["id"])
            if current and current.get("cancel_requested"):
                raise CancelRequested
            if counts_rows:
                await self.catalog.update("executions", doc["id"], {"rows_processed": int(done)})

        return report

    async def _run_local(
        self, predictor: Predictor, spec: RunSpec, progress: ProgressCallback
    ) -> RunOutput:
        runner = BatchRunner(predictor, spec)
        last_report = 0.0
        try:
            while not runner.finished:
                rows = await anyio.to_thread.run_sync(runner.step)
                now = time.monotonic()
                if now - last_report >= _PROGRESS_INTERVAL or runner.finished:
                    last_report = now
                    await progress(rows, spec.total_rows, f"{rows}/{spec.total_rows} rows")
        finally:
            # Shielded: a cancelled run must still close its Parquet writer.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(runner.close)

        return runner.output

    def _metrics(self, doc: dict[str, Any], output: RunOutput) -> dict[str, Any] | None:
        if not doc["parameters"].get("label_column"):
            return None
        if output.tally is not None:
            return output.tally.metrics()

        predictions, labels = output.arrays()
        if labels is None or len(labels) == 0:
            return None
        if doc["task_type"] == "regression":
            return regression_metrics(labels, predictions)
        if doc["task_type"] == "classification":
            return classification_metrics(labels, predictions)
        return None

    async def _store_results(
        self, doc: dict[str, Any], rows: int, metrics: dict[str, Any] | None, output_path: Path
    ) -> dict[str, Any]:
        changes: dict[str, Any] = {
            "status": "succeeded",
            "rows_processed": rows,
            "metrics": metrics,
        }
        if output_path.stat().st_size > 0:
            stored = await self.platform.artifacts.put_file(output_path)
            changes["predictions_key"] = stored.key

        confusion = (metrics or {}).get("confusion_matrix")
        if confusion and len(confusion["labels"]) <= MAX_PLOT_CLASSES:
            title = f"{doc['model_name']} v{doc['model_version']} on {doc['dataset_name']}"
            png = await anyio.to_thread.run_sync(confusion_matrix_png, confusion, title)
            plot = await self.platform.artifacts.put_bytes(png, self.platform.scratch_dir)
            changes["plot_key"] = plot.key

        return changes

    async def predictions(self, execution_id: str, rows: int, offset: int) -> list[dict[str, Any]]:
        """Return rows of an execution's predictions."""
        import pyarrow.parquet as pq

        doc = await self.get_execution(execution_id)
        if not doc.get("predictions_key"):
            raise InvalidInput(
                f"execution {execution_id} has no predictions (status {doc['status']})"
            )

        path = await self.platform.artifacts.fetch(doc["predictions_key"])

        def read() -> list[dict[str, Any]]:
            # Only the row groups that hold the requested rows are read.
            parquet = pq.ParquetFile(path, pre_buffer=False)
            groups: list[int] = []
            first_row = 0
            skipped = 0
            for index in range(parquet.num_row_groups):
                size = parquet.metadata.row_group(index).num_rows
                end = first_row + size
                if end > offset and first_row < offset + rows:
                    if not groups:
                        skipped = first_row
                    groups.append(index)
                first_row = end
            if not groups:
                return []

            table = parquet.read_row_groups(groups).slice(offset - skipped, rows)
            return [
                {k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}
                for r in table.to_pylist()
            ]

        return await anyio.to_thread.run_sync(read)

    async def delete_execution(self, execution_id: str) -> dict[str, Any]:
        doc = await self.get_execution(execution_id)
        if doc["status"] not in TERMINAL_STATUSES:
            raise Conflict(f"execution {execution_id} is {doc['status']}; cancel it first")
        await self.catalog.delete("executions", execution_id)
        await self.platform.release_artifact(doc.get("predictions_key"))
        await self.platform.release_artifact(doc.get("plot_key"))
        return doc
