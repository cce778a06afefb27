"""workflow_optimize: evaluate-then-adjust loops for a threshold, a batch size and a prompt."""

import pytest
from mcp import Client

from mlhub_mcp.hub.workflows._optimize import dyadic_thresholds
from mlhub_mcp.hub.workflows._prompt_refiner import PromptRefiner, score_outputs
from mlhub_mcp.hub.workflows._scoring import out_of_range
from tests.groq_stub import Answer
from tests.workflows.conftest import (
    BINARY_DEPLOYMENT,
    BINARY_HOLDOUT,
    DEPLOYMENTS,
    HOLDOUT,
    HOLDOUT_ROWS,
    LLM_DEPLOYMENT,
    REVIEW_ROWS,
    REVIEWS,
    Platform,
    call,
    call_failing,
    label_reviews,
    text_of,
)

pytestmark = pytest.mark.anyio

TEMPLATE = "Review: {text}\nIs this review positive or negative?"


def test_dyadic_thresholds_refine_the_grid() -> None:
    assert dyadic_thresholds(0.5)[:7] == [0.5, 0.25, 0.75, 0.125, 0.375, 0.625, 0.875]
    assert dyadic_thresholds(0.3)[:4] == [0.3, 0.5, 0.25, 0.75]


def test_refiner_states_labels_then_adds_examples() -> None:
    rows = [
        {"row": 0, "prompt": "Review: {odd} one", "output": "meh", "label": "positive"},
        {"row": 1, "prompt": "Review: two", "output": "negative", "label": "negative"},
        {"row": 2, "prompt": "Review: three", "output": None, "label": "negative"},
        {"row": 3, "prompt": "Review: four", "output": "positive", "label": "positive"},
    ]
    refiner = PromptRefiner("Review: {text}", examples_per_round=1)
    score = score_outputs(rows, exclude=set())

    first = refiner.refine(rows, score)
    second = refiner.refine(rows, score)

    assert (score.accuracy, score.failed, score.wrong_rows) == (0.5, 1, [0, 2])
    assert first == "state that the answer is one of ['negative', 'positive']"
    assert second == "add rows [0] as solved examples; they are left out of later scores"
    assert refiner.template() == (
        "Solved examples:\n\nReview: {{odd}} one\nAnswer: positive\n\nNow answer this one:"
        "\n\nReview: {text}\n\nAnswer with exactly one of: negative, positive. Reply with the "
        "answer only, without punctuation or explanation."
    )
    assert score_outputs(rows, exclude=refiner.example_rows).evaluated == 3


async def test_threshold_reaches_a_recall_target(client: Client) -> None:
    arguments = {
        "tune": "threshold",
        "deployment": BINARY_DEPLOYMENT,
        "dataset": BINARY_HOLDOUT,
        "label_column": "label",
        "metric": "recall",
        "target": 0.99,
        "max_iterations": 10,
    }

    output = await call(client, "workflow_optimize", arguments)
    thresholds = [i["setting"] for i in output["iterations"]]

    assert output["met"] is True
    assert output["best"] == output["iterations"][-1]
    assert output["best"]["value"] >= 0.99
    assert thresholds[0] == 0.5
    assert thresholds == sorted(thresholds, reverse=True)
    assert all(i["value"] < 0.99 for i in output["iterations"][:-1])
    assert len({i["execution_id"] for i in output["iterations"]}) == 1
    assert "positive class '1'" in output["stopped_because"]


async def test_threshold_needs_a_binary_classifier(client: Client) -> None:
    arguments = {
        "tune": "threshold",
        "deployment": DEPLOYMENTS["logreg"],
        "dataset": HOLDOUT,
        "label_column": "label",
        "metric": "f1",
        "target": 0.9,
    }

    result = await call_failing(client, "workflow_optimize", arguments)

    assert "threshold tuning needs a binary classifier" in text_of(result)
    assert "have 10 classes" in text_of(result)


async def test_batch_size_meets_a_throughput_target(client: Client) -> None:
    arguments = {
        "tune": "batch_size",
        "deployment": DEPLOYMENTS["tree"],
        "dataset": HOLDOUT,
        "feature_columns": [f"pixel_{i}" for i in range(64)],
        "metric": "rows_per_second",
        "target": 1.0,
        "start_batch_size": 64,
    }

    output = await call(client, "workflow_optimize", arguments)

    assert output["met"] is True
    assert len(output["iterations"]) == 1
    assert output["best"]["setting"] == 64
    assert output["best"]["metrics"]["rows_processed"] == HOLDOUT_ROWS


async def test_batch_size_stops_at_dataset_size(client: Client) -> None:
    arguments = {
        "tune": "batch_size",
        "deployment": DEPLOYMENTS["tree"],
        "dataset": HOLDOUT,
        "label_column": "label",
        "metric": "duration_seconds",
        "target": 0.0,
        "start_batch_size": 32,
        "batch_growth": 8,
        "max_iterations": 6,
    }

    result = await call_failing(client, "workflow_optimize", arguments)
    output = result.structured_content

    assert output is not None
    assert [i["setting"] for i in output["iterations"]] == [32, 256, HOLDOUT_ROWS]
    assert output["met"] is False
    assert (
        output["stopped_because"]
        == f"batch size {HOLDOUT_ROWS} already takes the whole dataset in one batch"
    )
    assert output["best"]["value"] == min(i["value"] for i in output["iterations"])
    assert "accuracy" in output["iterations"][0]["metrics"]
    assert text_of(result).startswith("target duration_seconds <= 0.0 not met")


async def test_prompt_template_is_refined_until_accurate(platform: Platform) -> None:
    platform.stub.plan = label_reviews
    arguments = {
        "tune": "prompt_template",
        "deployment": LLM_DEPLOYMENT,
        "dataset": REVIEWS,
        "label_column": "label",
        "metric": "accuracy",
        "target": 0.9,
        "prompt_template": TEMPLATE,
        "max_iterations": 4,
    }

    output = await call(platform.client, "workflow_optimize", arguments)
    first, second = output["iterations"]

    assert output["met"] is True
    assert first["setting"] == TEMPLATE
    assert first["value"] == 0.0
    assert first["adjustment"] == "state that the answer is one of ['negative', 'positive']"
    assert second["setting"].startswith(
        TEMPLATE + "\n\nAnswer with exactly one of: negative, positive."
    )
    assert second["value"] == 1.0
    assert second["metrics"]["evaluated_rows"] == len(REVIEW_ROWS)
    assert output["best"] == second


async def test_prompt_template_gives_up_after_the_budget(platform: Platform) -> None:
    platform.stub.plan = lambda call: Answer("no idea")
    arguments = {
        "tune": "prompt_template",
        "deployment": LLM_DEPLOYMENT,
        "dataset": REVIEWS,
        "label_column": "label",
        "metric": "accuracy",
        "target": 0.9,
        "prompt_template": TEMPLATE,
        "max_iterations": 3,
        "examples_per_round": 2,
    }
    try:
        result = await call_failing(platform.client, "workflow_optimize", arguments)
    finally:
        platform.stub.plan = label_reviews
    output = result.structured_content

    assert output is not None
    assert output["met"] is False
    assert [i["value"] for i in output["iterations"]] == [0.0, 0.0, 0.0]
    assert output["iterations"][1]["adjustment"] == (
        "add rows [0, 1] as solved examples; they are left out of later scores"
    )
    assert output["iterations"][2]["setting"].startswith(
        "Solved examples:\n\nReview: I love this phone"
    )
    assert output["iterations"][2]["metrics"]["evaluated_rows"] == len(REVIEW_ROWS) - 2
    assert "the budget of 3 iterations was spent" in text_of(result)


async def test_optimize_rejects_a_metric_of_another_setting(client: Client) -> None:
    arguments = {
        "tune": "batch_size",
        "deployment": DEPLOYMENTS["tree"],
        "dataset": HOLDOUT,
        "metric": "recall",
        "target": 0.9,
    }

    result = await call_failing(client, "workflow_optimize", arguments)

    assert "metric 'recall' does not apply to tune='batch_size'" in text_of(result)


def test_out_of_range_names_the_bounds() -> None:
    assert out_of_range("accuracy", 1.0, "target") is None
    assert out_of_range("r2", -3.0, "target") is None
    assert out_of_range("duration_seconds", 0.0, "target") is None
    assert out_of_range("nan_metric", float("nan"), "target") == (
        "target must be a finite number, not nan"
    )
    assert out_of_range("mse", -0.5, "threshold") == (
        "threshold -0.5 is out of range: mse is always at least 0"
    )


@pytest.mark.parametrize(
    ("tune", "metric", "target", "message"),
    [
        ("threshold", "f1", 1.5, "target 1.5 is out of range: f1 is always between 0 and 1"),
        ("threshold", "recall", -0.1, "target -0.1 is out of range: recall is always between"),
        (
            "batch_size",
            "duration_seconds",
            -1.0,
            "target -1 is out of range: duration_seconds is always at least 0",
        ),
    ],
)
async def test_optimize_rejects_impossible_targets(
    client: Client, tune: str, metric: str, target: float, message: str
) -> None:
    before = await call(client, "list_executions", {"limit": 1})
    arguments = {
        "tune": tune,
        "deployment": BINARY_DEPLOYMENT,
        "dataset": BINARY_HOLDOUT,
        "label_column": "label",
        "metric": metric,
        "target": target,
    }

    result = await call_failing(client, "workflow_optimize", arguments)
    after = await call(client, "list_executions", {"limit": 1})

    assert message in text_of(result)
    assert after["executions"] == before["executions"]


async def test_prompt_template_needs_an_llm_deployment(client: Client) -> None:
    arguments = {
        "tune": "prompt_template",
        "deployment": DEPLOYMENTS["tree"],
        "dataset": REVIEWS,
        "label_column": "label",
        "metric": "accuracy",
        "target": 0.9,
        "prompt_template": TEMPLATE,
    }

    result = await call_failing(client, "workflow_optimize", arguments)

    assert (
        f"deployment '{DEPLOYMENTS['tree']}' is not an LLM deployment, and prompt_template "
        "tuning needs one" in text_of(result)
    )
    assert "feature columns" not in text_of(result)
