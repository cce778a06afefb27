"""Evaluator-optimizer: evaluate, adjust one setting, and repeat until a target or a budget.

Three settings can be tuned:

- ``threshold``: the decision threshold of a binary classifier on its
  probability of the positive class, to reach a precision, recall, F1 or
  accuracy target. One execution provides the scores; each iteration
  re-scores them at a new threshold.
- ``batch_size``: the batch size of a deployment, to reach a throughput
  (rows_per_second) or duration target. Each iteration is a new execution.
- ``prompt_template``: the prompt of a hosted LLM deployment, to reach an
  accuracy target on labelled rows. Each iteration is a new execution. The
  evaluator compares the outputs with the labels. The optimizer first restricts
  the answer to the label set, then adds solved examples from the rows answered
  wrongly.
"""

from typing import TYPE_CHECKING, Any, Literal

import mcp.types as types
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mlhub_mcp.hub._local_tools import LocalTool, ProgressFn
from mlhub_mcp.hub.workflows._base import (
    MAX_PREDICTION_PAGE,
    MonotonicProgress,
    Outcome,
    WorkflowError,
    call_tool,
    define_tool,
    read_predictions,
)
from mlhub_mcp.hub.workflows._prompt_refiner import PromptRefiner, score_outputs
from mlhub_mcp.hub.workflows._scoring import out_of_range

if TYPE_CHECKING:
    from mlhub_mcp.hub.server import Hub

TOOL_NAME = "workflow_optimize"

Tune = Literal["threshold", "batch_size", "prompt_template"]
OptimizeMetric = Literal[
    "precision", "recall", "f1", "accuracy", "rows_per_second", "duration_seconds"
]
METRICS_BY_TUNE: dict[str, tuple[str, ...]] = {
    "threshold": ("precision", "recall", "f1", "accuracy"),
    "batch_size": ("rows_per_second", "duration_seconds"),
    "prompt_template": ("accuracy",),
}
MAX_BATCH_SIZE = 1_000_000


class OptimizeInput(BaseModel):
    """Arguments of workflow_optimize."""

    model_config = ConfigDict(extra="forbid")

    tune: Tune = Field(
        description="Setting to adjust: 'threshold' (binary classifier), 'batch_size' "
        "(any model file), or 'prompt_template' (hosted LLM deployment)"
    )
    deployment: str = Field(description="Deployment to evaluate")
    dataset: str = Field(description="Dataset to evaluate on; labelled except for batch_size")
    label_column: str | None = Field(
        default=None,
        description="Column with the true values; required for threshold and prompt_template",
    )
    feature_columns: list[str] | None = Field(
        default=None, description="Columns fed to the model; all but the label when omitted"
    )
    metric: OptimizeMetric = Field(
        description="Target metric. threshold: precision, recall or f1 of the positive "
        "class, or accuracy; batch_size: rows_per_second or duration_seconds (lower is "
        "better); prompt_template: accuracy (exact match after lowercasing)"
    )
    target: float = Field(
        description="Value to reach, e.g. 0.95; for duration_seconds a maximum. precision, "
        "recall, f1 and accuracy targets must be between 0 and 1, the others at least 0"
    )
    max_iterations: int = Field(default=8, ge=1, le=50, description="Evaluations before giving up")
    positive_label: str | int | None = Field(
        default=None, description="threshold: the positive class; the larger label when omitted"
    )
    start_threshold: float = Field(default=0.5, gt=0, lt=1, description="threshold: first value")
    start_batch_size: int = Field(
        default=32, ge=1, le=MAX_BATCH_SIZE, description="batch_size: first value"
    )
    batch_growth: int = Field(
        default=4, ge=2, le=16, description="batch_size: factor applied after each miss"
    )
    prompt_template: str | None = Field(
        default=None,
        description="prompt_template: the starting prompt, with {column} placeholders",
    )
    system_prompt: str | None = Field(default=None, description="prompt_template: system message")
    examples_per_round: int = Field(
        default=2, ge=1, le=10, description="prompt_template: solved examples added per iteration"
    )

    @model_validator(mode="after")
    def _check_combination(self) -> "OptimizeInput":
        allowed = METRICS_BY_TUNE[self.tune]
        if self.metric not in allowed:
            raise ValueError(
                f"metric {self.metric!r} does not apply to tune={self.tune!r}; use one of {allowed}"
            )
        if self.tune in ("threshold", "prompt_template") and not self.label_column:
            raise ValueError(f"tune={self.tune!r} needs 'label_column'")
        if self.tune == "prompt_template" and not (self.prompt_template or "").strip():
            raise ValueError("tune='prompt_template' needs a starting 'prompt_template'")
        problem = out_of_range(self.metric, self.target, "target")
        if problem is not None:
            raise ValueError(problem)
        return self


class Iteration(BaseModel):
    """One evaluation and what the optimizer changed after it."""

    iteration: int
    setting: float | int | str = Field(
        description="the threshold, batch size or template evaluated"
    )
    value: float | None = Field(description="the target metric's value")
    metrics: dict[str, float]
    execution_id: str | None
    adjustment: str | None = Field(description="what changes for the next iteration")


class OptimizeOutput(BaseModel):
    """Result of workflow_optimize."""

    tune: str
    metric: str
    target: float
    met: bool
    best: Iteration | None = Field(
        description="the first iteration that met the target, else the one closest to it"
    )
    iterations: list[Iteration]
    stopped_because: str


def _meets(metric: str, value: float | None, target: float) -> bool:
    if value is None:
        return False
    return value <= target if metric == "duration_seconds" else value >= target


def _closest(metric: str, iterations: list[Iteration]) -> Iteration | None:
    scored = [i for i in iterations if i.value is not None]
    if not scored:
        return None
    if metric == "duration_seconds":
        return min(scored, key=lambda i: i.value or 0.0)
    return max(scored, key=lambda i: i.value or 0.0)


async def _run_execution(hub: "Hub", params: OptimizeInput, **extra: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {"deployment": params.deployment, "dataset": params.dataset}
    if params.label_column:
        arguments["label_column"] = params.label_column
    if params.feature_columns:
        arguments["feature_columns"] = params.feature_columns
    arguments.update({k: v for k, v in extra.items() if v is not None})
    return await call_tool(hub, "run_execution", arguments)


# Threshold


def positive_scores(
    rows: list[dict[str, Any]], positive_label: str | int | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Return whether each row is positive, its positive-class probability, and the positive label.

    The score of a prediction row is the probability of the predicted class,
    so for two classes the positive-class probability is the score when the
    prediction is positive and one minus it otherwise.

    Raises:
        WorkflowError: The rows have no score, or not exactly two classes.
    """
    if any(row.get("score") is None for row in rows):
        raise WorkflowError(
            "the predictions have no score; threshold tuning needs a classifier that "
            "outputs class probabilities"
        )
    classes = sorted({str(r["label"]) for r in rows} | {str(r["prediction"]) for r in rows})
    if len(classes) != 2:
        listed = classes[:12] + (["..."] if len(classes) > 12 else [])
        raise WorkflowError(
            f"threshold tuning needs a binary classifier; the predictions and labels have "
            f"{len(classes)} classes: {listed}"
        )
    positive = classes[-1] if positive_label is None else str(positive_label)
    if positive not in classes:
        raise WorkflowError(
            f"positive_label {positive_label!r} is not one of the classes {classes}"
        )

    truth = np.array([str(r["label"]) == positive for r in rows])
    scores = np.array([float(r["score"]) for r in rows])
    predicted_positive = np.array([str(r["prediction"]) == positive for r in rows])
    return truth, np.where(predicted_positive, scores, 1.0 - scores), positive


def threshold_metrics(
    truth: np.ndarray, probability: np.ndarray, threshold: float
) -> dict[str, float]:
    """Return precision, recall and F1 of the positive class, and accuracy, at ``threshold``."""
    # scikit-learn loads in about a second, so the hub imports it on first use.
    from sklearn import metrics as skm

    predicted = probability >= threshold
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        truth, predicted, average="binary", pos_label=True, zero_division=0
    )
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "accuracy": float(skm.accuracy_score(truth, predicted)),
        "predicted_positive": float(predicted.sum()),
    }


def dyadic_thresholds(start: float) -> list[float]:
    """Return ``start``, then 1/2, 1/4, 3/4, 1/8, 3/8, ... without repeats, up to 1/1024."""
    points = [start]
    for level in range(1, 11):
        step = 1 / 2**level
        points += [k * step for k in range(1, 2**level, 2) if k * step != start]
    return points


class ThresholdSearch:
    """A search that proposes the next threshold after each missed target.

    Recall falls as the threshold rises, so a recall miss halves the distance
    to the lower bound. A precision miss halves the distance to the upper bound,
    although precision does not always rise with the threshold. F1 and accuracy
    have no such direction, so they walk a grid that gets finer.
    """

    def __init__(self, metric: str, start: float) -> None:
        self.metric = metric
        self.low, self.high = 0.0, 1.0
        self.current = start
        self.grid = dyadic_thresholds(start)
        self.tried: set[float] = set()

    def propose(self) -> tuple[float, str]:
        """Move to the next threshold; return it and the reason for the move."""
        self.tried.add(self.current)
        previous = self.current
        if self.metric == "recall":
            self.high = previous
            self.current = (self.low + previous) / 2
            return self.current, f"recall too low at {previous:.4f}, so lower the threshold"
        if self.metric == "precision":
            self.low = previous
            self.current = (previous + self.high) / 2
            return self.current, f"precision too low at {previous:.4f}, so raise the threshold"
        self.current = next(p for p in self.grid if p not in self.tried)
        return self.current, f"try the next grid point {self.current:.4f}"


async def tune_threshold(
    hub: "Hub", params: OptimizeInput, progress: MonotonicProgress
) -> OptimizeOutput:
    execution = await _run_execution(hub, params)
    rows = await read_predictions(hub, execution["id"], MAX_PREDICTION_PAGE)
    truth, probability, positive = positive_scores(rows, params.positive_label)

    search = ThresholdSearch(params.metric, params.start_threshold)
    iterations: list[Iteration] = []
    stopped = f"the budget of {params.max_iterations} iterations was spent"
    for number in range(1, params.max_iterations + 1):
        threshold = search.current
        metrics = threshold_metrics(truth, probability, threshold)
        value = metrics[params.metric]
        iteration = Iteration(
            iteration=number,
            setting=round(threshold, 6),
            value=value,
            metrics=metrics,
            execution_id=execution["id"],
            adjustment=None,
        )
        iterations.append(iteration)
        await progress(
            number, params.max_iterations, f"threshold {threshold:.4f}: {params.metric} {value:.4f}"
        )
        if _meets(params.metric, value, params.target):
            stopped = f"{params.metric} reached the target at threshold {threshold:.4f}"
            break
        if number < params.max_iterations:
            _, iteration.adjustment = search.propose()

    return _output(params, iterations, stopped, note=f"positive class {positive!r}")


# Batch size


async def tune_batch_size(
    hub: "Hub", params: OptimizeInput, progress: MonotonicProgress
) -> OptimizeOutput:
    batch_size = params.start_batch_size
    iterations: list[Iteration] = []
    stopped = f"the budget of {params.max_iterations} iterations was spent"
    for number in range(1, params.max_iterations + 1):
        execution = await _run_execution(hub, params, batch_size=batch_size)
        metrics = {
            key: float(execution[key])
            for key in ("rows_per_second", "duration_seconds", "rows_processed")
            if execution.get(key) is not None
        }
        for key, value in (execution.get("metrics") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics[key] = float(value)
        value = metrics.get(params.metric)
        iteration = Iteration(
            iteration=number,
            setting=batch_size,
            value=value,
            metrics=metrics,
            execution_id=execution["id"],
            adjustment=None,
        )
        iterations.append(iteration)
        await progress(
            number, params.max_iterations, f"batch size {batch_size}: {params.metric} {value}"
        )
        if _meets(params.metric, value, params.target):
            stopped = f"{params.metric} reached the target with batch size {batch_size}"
            break

        rows_total = int(execution.get("rows_total") or 0)
        if batch_size >= max(rows_total, 1) or batch_size >= MAX_BATCH_SIZE:
            stopped = f"batch size {batch_size} already takes the whole dataset in one batch"
            break
        if number < params.max_iterations:
            batch_size = min(batch_size * params.batch_growth, max(rows_total, 1), MAX_BATCH_SIZE)
            iteration.adjustment = (
                f"{params.metric} missed the target, so try batch size {batch_size}"
            )

    return _output(params, iterations, stopped)


# Prompt template


async def tune_prompt(
    hub: "Hub", params: OptimizeInput, progress: MonotonicProgress
) -> OptimizeOutput:
    assert params.prompt_template is not None and params.label_column is not None
    deployment = await call_tool(hub, "get_deployment", {"name": params.deployment})
    if deployment["model_kind"] != "llm":
        raise WorkflowError(
            f"deployment {params.deployment!r} is not an LLM deployment, and prompt_template "
            f"tuning needs one (its model {deployment['model_name']!r} is "
            f"{deployment['model_kind']})"
        )

    refiner = PromptRefiner(params.prompt_template, params.examples_per_round)
    iterations: list[Iteration] = []
    stopped = f"the budget of {params.max_iterations} iterations was spent"
    for number in range(1, params.max_iterations + 1):
        template = refiner.template()
        execution = await _run_execution(
            hub,
            params,
            prompt_template=template,
            system_prompt=params.system_prompt,
            temperature=0.0,
        )
        rows = await read_predictions(hub, execution["id"], MAX_PREDICTION_PAGE)
        score = score_outputs(rows, exclude=refiner.example_rows)
        iteration = Iteration(
            iteration=number,
            setting=template,
            value=score.accuracy,
            metrics=score.metrics(),
            execution_id=execution["id"],
            adjustment=None,
        )
        iterations.append(iteration)
        await progress(
            number, params.max_iterations, f"template {number}: accuracy {score.accuracy}"
        )
        if _meets(params.metric, score.accuracy, params.target):
            stopped = f"accuracy reached the target with template {number}"
            break
        if number == params.max_iterations:
            break

        adjustment = refiner.refine(rows, score)
        if adjustment is None:
            stopped = (
                "no refinement is left: the label set is stated and no wrongly answered "
                "row is left to use as an example"
            )
            break
        iteration.adjustment = adjustment

    return _output(params, iterations, stopped)


def _output(
    params: OptimizeInput, iterations: list[Iteration], stopped: str, note: str | None = None
) -> OptimizeOutput:
    met = any(_meets(params.metric, i.value, params.target) for i in iterations)
    best = next((i for i in iterations if _meets(params.metric, i.value, params.target)), None)
    return OptimizeOutput(
        tune=params.tune,
        metric=params.metric,
        target=params.target,
        met=met,
        best=best or _closest(params.metric, iterations),
        iterations=iterations,
        stopped_because=stopped if note is None else f"{stopped} ({note})",
    )


async def run_optimize(hub: "Hub", params: OptimizeInput, progress: ProgressFn) -> Outcome:
    monotonic = MonotonicProgress(progress)
    if params.tune == "threshold":
        output = await tune_threshold(hub, params, monotonic)
    elif params.tune == "batch_size":
        output = await tune_batch_size(hub, params, monotonic)
    else:
        output = await tune_prompt(hub, params, monotonic)

    if output.met:
        return Outcome(output)
    best = output.best
    closest = (
        "no iteration produced a value"
        if best is None
        else (f"the closest was {best.value} at iteration {best.iteration}")
    )
    return Outcome(
        output,
        error=f"target {params.metric} {'<=' if params.metric == 'duration_seconds' else '>='} "
        f"{params.target} not met: {output.stopped_because}; {closest}",
    )


def optimize_tool() -> LocalTool:
    return define_tool(
        name=TOOL_NAME,
        title="Tune a setting until a target is met",
        description=(
            "Repeat evaluate-then-adjust until a target metric is met or max_iterations is "
            "spent. tune='threshold': a binary classifier's decision threshold on the "
            "positive-class probability, for a precision/recall/f1/accuracy target (one "
            "execution, re-scored per iteration). tune='batch_size': the batch size for a "
            "rows_per_second or duration_seconds target (one execution per iteration). "
            "tune='prompt_template': a hosted LLM deployment's prompt for an accuracy "
            "target on labelled rows; the prompt is refined by stating the label set, "
            "then adding solved examples from wrongly answered rows, which are left out "
            "of the score. Returns every iteration and the best one; a missed target is "
            "an error that says why the loop stopped."
        ),
        input_model=OptimizeInput,
        output_model=OptimizeOutput,
        # The prompt path sends requests to the LLM provider.
        annotations=types.ToolAnnotations(
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=True,
        ),
        run=run_optimize,
    )
