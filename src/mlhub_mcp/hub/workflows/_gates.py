"""Gates: checks that must pass before a step runs.

``workflow_gate`` checks that a model fits a dataset and that the dataset is
within size limits, and only then runs an optional step. ``workflow_promote``
adds a metric gate: it evaluates the model on a labelled dataset and creates
a production deployment only when the chosen metric reaches the threshold.
"""

import logging
import secrets
from typing import TYPE_CHECKING, Any, Literal

import anyio
import mcp.types as types
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mlhub_mcp.hub._local_tools import LocalTool, ProgressFn
from mlhub_mcp.hub.workflows._base import (
    Outcome,
    ToolCallFailed,
    WorkflowError,
    call_tool,
    define_tool,
)
from mlhub_mcp.hub.workflows._checks import (
    Check,
    compatibility_checks,
    failed,
    failure_text,
    metric_check,
    size_checks,
    task_check,
)
from mlhub_mcp.hub.workflows._gated_step import check_step_allowed, step_mismatches
from mlhub_mcp.hub.workflows._scoring import MetricName, out_of_range, scalar_metrics

if TYPE_CHECKING:
    from mlhub_mcp.hub.server import Hub

logger = logging.getLogger(__name__)

GATE_TOOL = "workflow_gate"
PROMOTE_TOOL = "workflow_promote"
# Seconds allowed for cancelling the evaluation run and deleting the temporary
# deployment. cancel_execution alone waits up to 30 s for a run to stop.
CLEANUP_SECONDS = 60


# workflow_gate


class GatedStep(BaseModel):
    """A tool call that runs only when every check passes."""

    model_config = ConfigDict(extra="forbid")

    tool: str = Field(description="Public name of the tool to call, e.g. 'run_execution'")
    arguments: dict[str, Any] = Field(default_factory=dict, description="Arguments of the tool")


class SizeLimits(BaseModel):
    """Dataset size limits shared by the gate tools."""

    max_rows: int | None = Field(
        default=None, ge=1, description="Maximum number of rows the dataset may have"
    )
    min_rows: int | None = Field(
        default=None, ge=0, description="Minimum number of rows the dataset must have"
    )
    max_size_bytes: int | None = Field(
        default=None, ge=1, description="Largest stored size of the dataset, in bytes"
    )


class GateInput(SizeLimits):
    """Arguments of workflow_gate."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(description="Registered model name")
    model_version: int | None = Field(
        default=None, ge=1, description="Version; latest when omitted"
    )
    dataset: str = Field(description="Registered dataset name")
    label_column: str | None = Field(
        default=None, description="Column with the true values, which is not a feature"
    )
    feature_columns: list[str] | None = Field(
        default=None,
        description="Columns fed to the model; by default the signature's feature names, "
        "else every column except the label",
    )
    then: GatedStep | None = Field(
        default=None,
        description="Tool call to run only when every check passes. The models, datasets and "
        "deployments it names must be the ones checked: model_name, dataset, and a deployment "
        "of the checked model version",
    )
    allow_destructive: bool = Field(
        default=False,
        description="Allow 'then' to call a delete or another destructive tool",
    )


class StepReport(BaseModel):
    """The gated step's outcome."""

    tool: str
    status: Literal["succeeded", "failed", "not_run"]
    result: Any = None
    error: str | None = None


class GateOutput(BaseModel):
    """Result of workflow_gate."""

    passed: bool = Field(description="true when no check failed")
    failed_checks: list[str] = Field(description="names of the failed checks")
    checks: list[Check]
    step: StepReport | None = Field(description="the gated step; null when none was given")


async def _model_and_dataset(
    hub: "Hub", model_name: str, model_version: int | None, dataset: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    arguments: dict[str, Any] = {"name": model_name}
    if model_version is not None:
        arguments["version"] = model_version
    model = await call_tool(hub, "get_model", arguments)
    data = await call_tool(hub, "get_dataset", {"name": dataset})
    return model, data


async def _check_step(
    hub: "Hub", params: GateInput, model: dict[str, Any], dataset: dict[str, Any]
) -> None:
    """Reject a 'then' call that acts on other entries than the gate checked."""
    assert params.then is not None
    problems = await step_mismatches(
        hub,
        params.then.tool,
        params.then.arguments,
        model,
        dataset,
        params.label_column,
        params.feature_columns,
    )
    if problems:
        raise WorkflowError(
            "'then' does not act on what the gate checks, so nothing was run: "
            + "; ".join(problems)
        )


async def run_gate(hub: "Hub", params: GateInput, progress: ProgressFn) -> Outcome:
    if params.then is not None:
        check_step_allowed(hub, params.then.tool, params.allow_destructive)

    model, dataset = await _model_and_dataset(
        hub, params.model_name, params.model_version, params.dataset
    )
    if params.then is not None:
        await _check_step(hub, params, model, dataset)

    checks = compatibility_checks(model, dataset, params.label_column, params.feature_columns)
    checks += size_checks(dataset, params.max_rows, params.min_rows, params.max_size_bytes)
    failures = failed(checks)

    step = None
    if params.then is not None:
        step = StepReport(tool=params.then.tool, status="not_run")
    output = GateOutput(
        passed=not failures, failed_checks=[c.name for c in failures], checks=checks, step=step
    )
    if failures:
        consequence = f"{params.then.tool} was not run" if params.then else "the gate is closed"
        return Outcome(output, error=f"gate failed, so {consequence}: {failure_text(checks)}")
    if params.then is None:
        return Outcome(output)

    report = output.step
    assert report is not None
    try:
        report.result = await call_tool(hub, params.then.tool, params.then.arguments, progress)
    except ToolCallFailed as exc:
        report.status = "failed"
        report.error = exc.reason
        return Outcome(output, error=f"every check passed, but {exc}")
    report.status = "succeeded"
    return Outcome(output)


def gate_tool() -> LocalTool:
    return define_tool(
        name=GATE_TOOL,
        title="Check a model and dataset, then run a step",
        description=(
            "Check that a model version fits a dataset before using them together: the "
            "label column exists, the feature columns exist and are numeric, the model's "
            "n_features equals the dataset's columns minus the label, and the dataset is "
            "within max_rows/min_rows/max_size_bytes. When every check passes, the "
            "optional 'then' tool call runs (e.g. run_execution). 'then' must act on the "
            "checked model version and dataset, and a destructive 'then' tool needs "
            "allow_destructive=true. A failed check is returned as an error naming the "
            "check and the values compared, and 'then' does not run."
        ),
        input_model=GateInput,
        output_model=GateOutput,
        # The gated step may be any tool.
        annotations=types.ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=True
        ),
        run=run_gate,
    )


# workflow_promote


class PromoteInput(SizeLimits):
    """Arguments of workflow_promote."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(description="Registered model name")
    model_version: int | None = Field(
        default=None, ge=1, description="Version; latest when omitted"
    )
    dataset: str = Field(description="Labelled dataset to evaluate the model on")
    label_column: str = Field(description="Column with the true values")
    metric: MetricName = Field(
        default="accuracy",
        description="Metric the gate compares; mae, mse and rmse must be at most the "
        "threshold, the others at least",
    )
    threshold: float = Field(
        description="Value the metric must reach, e.g. 0.9 for accuracy. It must be in the "
        "metric's range: 0 to 1 for classification metrics, at most 1 for r2, at least 0 "
        "for mae, mse and rmse"
    )
    deployment_name: str = Field(description="Name of the production deployment to create")
    evaluation_deployment: str | None = Field(
        default=None,
        description="Existing deployment of this model version to evaluate with; when "
        "omitted a temporary staging deployment is created and deleted afterwards",
    )
    feature_columns: list[str] | None = Field(
        default=None, description="Columns fed to the model; all but the label when omitted"
    )
    batch_size: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Rows per batch for the evaluation"
    )
    threads: int = Field(default=1, ge=1, le=256, description="Inference threads of the deployment")

    @model_validator(mode="after")
    def _check_threshold(self) -> "PromoteInput":
        problem = out_of_range(self.metric, self.threshold, "threshold")
        if problem is not None:
            raise ValueError(problem)
        return self


class Evaluation(BaseModel):
    """The evaluation run behind the metric gate."""

    deployment: str
    temporary: bool = Field(description="true when the workflow created and deleted it")
    execution_id: str
    metric: str
    value: float | None
    threshold: float
    metrics: dict[str, float]


class PromoteOutput(BaseModel):
    """Result of workflow_promote."""

    promoted: bool
    failed_checks: list[str]
    checks: list[Check]
    evaluation: Evaluation | None = Field(description="null when an earlier check failed")
    deployment: dict[str, Any] | None = Field(description="the production deployment created")


async def _deployment_names(hub: "Hub") -> set[str]:
    names: set[str] = set()
    cursor = None
    while True:
        arguments: dict[str, Any] = {"limit": 500}
        if cursor:
            arguments["cursor"] = cursor
        page = await call_tool(hub, "list_deployments", arguments)
        names.update(d["name"] for d in page["deployments"])
        cursor = page.get("next_cursor")
        if not cursor:
            return names


async def _existing_evaluator(hub: "Hub", name: str, model: dict[str, Any]) -> None:
    """Check that the deployment ``name`` serves the model version to promote."""
    deployment = await call_tool(hub, "get_deployment", {"name": name})
    served = (deployment["model_name"], deployment["model_version"])
    if served != (model["name"], model["version"]):
        raise WorkflowError(
            f"evaluation deployment {name!r} serves {served[0]!r} v{served[1]}, not "
            f"{model['name']!r} v{model['version']}"
        )


def _temporary_name(deployment_name: str, existing: set[str]) -> str:
    name = f"{deployment_name[:80]}-eval-{secrets.token_hex(3)}"
    while name in existing:
        name = f"{deployment_name[:80]}-eval-{secrets.token_hex(3)}"
    return name


async def _cancel_unfinished(hub: "Hub", deployment: str) -> None:
    """Cancel the deployment's queued and running executions.

    A cancelled run_execution call cancels its execution downstream, but
    delete_deployment can arrive before that execution has stopped, and then
    fails. cancel_execution waits for the execution to stop, for up to 30 s.
    """
    page = await call_tool(hub, "list_executions", {"deployment": deployment, "limit": 500})
    for execution in page["executions"]:
        if execution["status"] in ("queued", "running"):
            await call_tool(hub, "cancel_execution", {"execution_id": execution["id"]})


async def _delete_temporary(hub: "Hub", name: str) -> None:
    # Shielded, so the cleanup also runs when the caller cancels the evaluation.
    with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_SECONDS) as scope:
        try:
            await _cancel_unfinished(hub, name)
            await call_tool(hub, "delete_deployment", {"name": name})
        except ToolCallFailed as exc:
            logger.warning("temporary deployment %s was not deleted: %s", name, exc)
        else:
            logger.info("deleted temporary deployment %s", name)

    if scope.cancelled_caught:
        logger.warning(
            "temporary deployment %s was not deleted: cleanup timed out after %s s",
            name,
            CLEANUP_SECONDS,
        )


async def _evaluate_on_temporary(
    hub: "Hub", params: PromoteInput, model: dict[str, Any], name: str, progress: ProgressFn
) -> dict[str, Any]:
    """Evaluate on a new staging deployment ``name``, and delete it afterwards.

    The deployment is deleted on success, failure and cancellation alike,
    unless create_deployment reported that it created nothing.
    """
    arguments = {
        "name": name,
        "model_name": model["name"],
        "model_version": model["version"],
        "environment": "staging",
        "threads": params.threads,
    }
    created = True
    try:
        try:
            await call_tool(hub, "create_deployment", arguments)
        except ToolCallFailed:
            created = False
            raise
        return await _evaluate(hub, params, name, progress)
    finally:
        # A call cancelled during create_deployment may have created it, so
        # only a failed create_deployment skips the cleanup.
        if created:
            await _delete_temporary(hub, name)


async def _evaluate(
    hub: "Hub", params: PromoteInput, deployment: str, progress: ProgressFn
) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "deployment": deployment,
        "dataset": params.dataset,
        "label_column": params.label_column,
    }
    if params.feature_columns:
        arguments["feature_columns"] = params.feature_columns
    if params.batch_size:
        arguments["batch_size"] = params.batch_size
    return await call_tool(hub, "run_execution", arguments, progress)


async def run_promote(hub: "Hub", params: PromoteInput, progress: ProgressFn) -> Outcome:
    model, dataset = await _model_and_dataset(
        hub, params.model_name, params.model_version, params.dataset
    )
    existing = await _deployment_names(hub)
    if params.deployment_name in existing:
        raise WorkflowError(
            f"deployment {params.deployment_name!r} already exists; choose another "
            "deployment_name or delete it first"
        )

    checks = [task_check(model, params.metric)]
    checks += compatibility_checks(model, dataset, params.label_column, params.feature_columns)
    checks += size_checks(dataset, params.max_rows, params.min_rows, params.max_size_bytes)
    output = PromoteOutput(
        promoted=False, failed_checks=[], checks=checks, evaluation=None, deployment=None
    )
    if failed(checks):
        output.failed_checks = [c.name for c in failed(checks)]
        return Outcome(output, error=f"not promoted, a check failed: {failure_text(checks)}")

    temporary = params.evaluation_deployment is None
    if params.evaluation_deployment is not None:
        evaluator = params.evaluation_deployment
        await _existing_evaluator(hub, evaluator, model)
        execution = await _evaluate(hub, params, evaluator, progress)
    else:
        evaluator = _temporary_name(params.deployment_name, existing)
        execution = await _evaluate_on_temporary(hub, params, model, evaluator, progress)

    gate = metric_check(execution.get("metrics"), params.metric, params.threshold)
    output.checks.append(gate)
    output.evaluation = Evaluation(
        deployment=evaluator,
        temporary=temporary,
        execution_id=execution["id"],
        metric=params.metric,
        value=gate.values.get("value"),
        threshold=params.threshold,
        metrics=scalar_metrics(execution.get("metrics")),
    )
    if gate.status == "failed":
        output.failed_checks = ["metric"]
        return Outcome(output, error=f"not promoted, the metric gate failed: {gate.detail}")

    arguments: dict[str, Any] = {
        "name": params.deployment_name,
        "model_name": model["name"],
        "model_version": model["version"],
        "environment": "production",
        "threads": params.threads,
    }
    if params.batch_size:
        arguments["batch_size"] = params.batch_size
    try:
        output.deployment = await call_tool(hub, "create_deployment", arguments)
    except ToolCallFailed as exc:
        return Outcome(output, error=f"every check passed, but {exc}")

    output.promoted = True
    return Outcome(output)


def promote_tool() -> LocalTool:
    return define_tool(
        name=PROMOTE_TOOL,
        title="Promote a model to production behind gates",
        description=(
            "Create a production deployment of a model version only after it passes gates: "
            "the model's task fits the metric, the model fits the dataset (label column, "
            "numeric feature columns, n_features), the dataset is within the size limits, "
            "and an evaluation run on the labelled dataset reaches the metric threshold "
            "(e.g. accuracy >= 0.9). The evaluation uses a temporary staging deployment "
            "unless 'evaluation_deployment' is given. A failed gate is returned as an "
            "error naming the check and the values, and nothing is deployed."
        ),
        input_model=PromoteInput,
        output_model=PromoteOutput,
        annotations=types.ToolAnnotations(
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=False,
        ),
        run=run_promote,
    )
