"""Parallelization: run several deployments on one dataset at once and aggregate.

Every deployment runs as its own run_execution call in one task group, so the
execution server works on them concurrently. The results are gathered into a
table of metrics, the best deployment by the chosen metric, and, for
classifiers, a majority-vote ensemble whose metrics are computed with the same
scikit-learn functions as an execution's.
"""

from collections import Counter
from typing import TYPE_CHECKING, Any, Literal

import anyio
import mcp.types as types
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mlhub_mcp.hub._local_tools import LocalTool, ProgressFn
from mlhub_mcp.hub.workflows._base import (
    MAX_PREDICTION_PAGE,
    MonotonicProgress,
    Outcome,
    ToolCallFailed,
    WorkflowError,
    call_tool,
    define_tool,
    read_predictions,
)
from mlhub_mcp.hub.workflows._scoring import (
    LOWER_IS_BETTER,
    MetricName,
    is_better,
    scalar_metrics,
    task_of_metric,
)

if TYPE_CHECKING:
    from mlhub_mcp.hub.server import Hub

TOOL_NAME = "workflow_compare"
MAX_DEPLOYMENTS = 16


class CompareInput(BaseModel):
    """Arguments of workflow_compare."""

    model_config = ConfigDict(extra="forbid")

    deployments: list[str] = Field(
        min_length=2, max_length=MAX_DEPLOYMENTS, description="Deployment names to compare"
    )
    dataset: str = Field(description="Labelled dataset every deployment runs on")
    label_column: str = Field(description="Column with the true values")
    metric: MetricName = Field(
        default="f1_macro",
        description="Metric that picks the best deployment; mae, mse and rmse are better "
        "when lower, the others when higher",
    )
    batch_size: int | None = Field(default=None, ge=1, le=1_000_000, description="Rows per batch")
    ensemble: bool = Field(
        default=True, description="Build a majority-vote ensemble of the classifiers"
    )
    page_size: int = Field(
        default=MAX_PREDICTION_PAGE,
        ge=1,
        le=MAX_PREDICTION_PAGE,
        description="Rows per get_predictions call when reading predictions for the ensemble",
    )


class DeploymentRow(BaseModel):
    """One deployment's run."""

    deployment: str
    status: Literal["succeeded", "failed"]
    execution_id: str | None
    model_name: str | None
    model_version: int | None
    task_type: str | None
    metrics: dict[str, float]
    duration_seconds: float | None
    rows_per_second: float | None
    error: str | None


class Best(BaseModel):
    """The deployment with the best value of the chosen metric."""

    deployment: str
    metric: str
    value: float


class Ensemble(BaseModel):
    """A majority vote of the classifiers' predictions."""

    members: list[str]
    rows: int
    metrics: dict[str, float]
    value: float | None = Field(description="the chosen metric for the ensemble")
    beats_best: bool | None = Field(description="whether the ensemble beats the best member")
    unanimous_rows: int = Field(description="rows on which every member predicted the same")
    tied_rows: int = Field(
        description="rows whose top vote was tied; the best member's prediction among "
        "the tied classes decides them"
    )


class CompareOutput(BaseModel):
    """Result of workflow_compare."""

    dataset: str
    metric: str
    table: list[DeploymentRow] = Field(description="one row per deployment, in the given order")
    best: Best | None
    best_note: str | None = Field(description="why best is null, when it is")
    ensemble: Ensemble | None
    ensemble_note: str | None = Field(description="why no ensemble was built, if none was")


async def _run_one(hub: "Hub", params: CompareInput, deployment: str) -> DeploymentRow:
    arguments: dict[str, Any] = {
        "deployment": deployment,
        "dataset": params.dataset,
        "label_column": params.label_column,
    }
    if params.batch_size:
        arguments["batch_size"] = params.batch_size
    try:
        execution = await call_tool(hub, "run_execution", arguments)
    except ToolCallFailed as exc:
        return DeploymentRow(
            deployment=deployment,
            status="failed",
            execution_id=None,
            model_name=None,
            model_version=None,
            task_type=None,
            metrics={},
            duration_seconds=None,
            rows_per_second=None,
            error=exc.reason,
        )
    return DeploymentRow(
        deployment=deployment,
        status="succeeded",
        execution_id=execution["id"],
        model_name=execution["model_name"],
        model_version=execution["model_version"],
        task_type=execution["task_type"],
        metrics=scalar_metrics(execution.get("metrics")),
        duration_seconds=execution.get("duration_seconds"),
        rows_per_second=execution.get("rows_per_second"),
        error=None,
    )


async def run_all(hub: "Hub", params: CompareInput, progress: ProgressFn) -> list[DeploymentRow]:
    """Run every deployment at once; a failed run is a row with its error."""
    rows: list[DeploymentRow | None] = [None] * len(params.deployments)
    monotonic = MonotonicProgress(progress)
    finished = 0

    async def run(index: int, deployment: str) -> None:
        nonlocal finished
        row = await _run_one(hub, params, deployment)
        rows[index] = row
        finished += 1
        await monotonic(finished, len(rows), f"{deployment}: {row.status}")

    async with anyio.create_task_group() as group:
        for index, deployment in enumerate(params.deployments):
            group.start_soon(run, index, deployment)

    return [row for row in rows if row is not None]


def pick_best(rows: list[DeploymentRow], metric: str) -> Best | None:
    best: Best | None = None
    for row in rows:
        value = row.metrics.get(metric)
        if value is None:
            continue
        if best is None or is_better(value, best.value, metric):
            best = Best(deployment=row.deployment, metric=metric, value=value)
    return best


def explain_no_best(rows: list[DeploymentRow], metric: str) -> str:
    """Return why no deployment is the best by ``metric``, naming the metrics reported."""
    succeeded = [row for row in rows if row.status == "succeeded"]
    if not succeeded:
        return "no run succeeded"

    reported = ", ".join(sorted({name for row in succeeded for name in row.metrics}))
    tasks = sorted({str(row.task_type) for row in succeeded})
    note = f"no run reported {metric!r}"
    if task_of_metric(metric) not in tasks:
        note += (
            f", which is a {task_of_metric(metric)} metric, and the deployments are "
            f"{' and '.join(tasks)} models"
        )
    return f"{note}. Choose one of the metrics the runs reported: {reported or 'none'}"


def majority_vote(predictions: list[list[Any]], priority: list[int]) -> tuple[list[Any], int, int]:
    """Return the per-row majority vote, the unanimous row count and the tied row count.

    ``predictions`` contains one list per member, aligned by row. ``priority``
    lists member indices from the most to the least trusted. Among tied
    classes, the prediction of the most trusted member that voted for one wins.
    """
    votes: list[Any] = []
    unanimous = tied = 0
    for row in zip(*predictions, strict=True):
        counts = Counter(row)
        top = max(counts.values())
        leaders = {label for label, count in counts.items() if count == top}
        if len(counts) == 1:
            unanimous += 1
        if len(leaders) == 1:
            votes.append(next(iter(leaders)))
            continue
        tied += 1
        votes.append(next(row[m] for m in priority if row[m] in leaders))
    return votes, unanimous, tied


async def build_ensemble(
    hub: "Hub", params: CompareInput, rows: list[DeploymentRow], best: Best | None
) -> tuple[Ensemble | None, str | None]:
    """Vote over the classifiers' predictions read through get_predictions.

    Returns the ensemble, or None and the reason when none can be built.
    """
    members = [r for r in rows if r.status == "succeeded"]
    if len(members) < 2:
        return None, f"{len(members)} run succeeded; a vote needs at least 2"
    not_classifiers = [r.deployment for r in members if r.task_type != "classification"]
    if not_classifiers:
        return None, f"deployments {not_classifiers} are not classifiers, so no vote is taken"

    tables: list[list[dict[str, Any]]] = [[] for _ in members]

    async def read(index: int, row: DeploymentRow) -> None:
        assert row.execution_id is not None
        tables[index] = await read_predictions(hub, row.execution_id, params.page_size)

    async with anyio.create_task_group() as group:
        for index, member in enumerate(members):
            group.start_soon(read, index, member)

    by_row = [{r["row"]: r for r in table} for table in tables]
    row_ids = sorted(by_row[0])
    if any(sorted(table) != row_ids for table in by_row):
        raise WorkflowError(
            "the executions' predictions cover different rows, so they cannot be aligned"
        )
    if not row_ids:
        return None, "the executions produced no predictions"

    # scikit-learn loads in about a second, so the hub imports it on first use.
    from mlhub_mcp.execution._metrics import classification_metrics

    predictions = [[table[i]["prediction"] for i in row_ids] for table in by_row]
    labels = np.asarray([by_row[0][i]["label"] for i in row_ids])
    order = sorted(
        range(len(members)),
        key=lambda m: _sort_key(members[m].metrics.get(params.metric), params.metric),
    )
    votes, unanimous, tied = majority_vote(predictions, order)

    metrics = scalar_metrics(classification_metrics(labels, np.asarray(votes)))
    value = metrics.get(params.metric)
    beats = None if value is None or best is None else is_better(value, best.value, params.metric)
    ensemble = Ensemble(
        members=[m.deployment for m in members],
        rows=len(row_ids),
        metrics=metrics,
        value=value,
        beats_best=beats,
        unanimous_rows=unanimous,
        tied_rows=tied,
    )
    return ensemble, None


def _sort_key(value: float | None, metric: str) -> float:
    # Sorts the best member first; a member without the metric goes last.
    if value is None:
        return float("inf")
    return value if metric in LOWER_IS_BETTER else -value


async def run_compare(hub: "Hub", params: CompareInput, progress: ProgressFn) -> Outcome:
    if len(set(params.deployments)) != len(params.deployments):
        raise WorkflowError(f"deployments {params.deployments} name one deployment twice")

    rows = await run_all(hub, params, progress)
    best = pick_best(rows, params.metric)
    output = CompareOutput(
        dataset=params.dataset,
        metric=params.metric,
        table=rows,
        best=best,
        best_note=explain_no_best(rows, params.metric) if best is None else None,
        ensemble=None,
        ensemble_note="not requested" if not params.ensemble else None,
    )
    if params.ensemble:
        output.ensemble, output.ensemble_note = await build_ensemble(hub, params, rows, best)

    failures = [f"{r.deployment}: {r.error}" for r in rows if r.status == "failed"]
    if len(failures) == len(rows):
        return Outcome(output, error="every run failed: " + "; ".join(failures))
    return Outcome(output)


def compare_tool() -> LocalTool:
    return define_tool(
        name=TOOL_NAME,
        title="Compare deployments on one dataset",
        description=(
            "Run 2 to 16 deployments on the same labelled dataset at the same time, then "
            "return a table of their metrics, the best deployment by 'metric' (or, when no "
            "run reports that metric, a note naming the metrics they report), and a "
            "majority-vote ensemble of the classifiers with its own metrics (ties go to "
            "the best member's prediction). A run that fails is a table row with its "
            "error; the tool fails only when every run fails. Each run is recorded as an "
            "execution."
        ),
        input_model=CompareInput,
        output_model=CompareOutput,
        # LLM deployments among them would reach the provider.
        annotations=types.ToolAnnotations(
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=True,
        ),
        run=run_compare,
    )
