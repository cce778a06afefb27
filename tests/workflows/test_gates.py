"""workflow_gate and workflow_promote: checks that must pass before a step runs."""

import logging
from functools import partial

import anyio
import pytest
from mcp import Client

from mlhub_mcp.hub.workflows import _gates
from tests.workflows.conftest import (
    CLASSIFIERS,
    DEPLOYMENTS,
    HOLDOUT,
    HOLDOUT_ROWS,
    NARROW,
    Platform,
    call,
    call_failing,
    text_of,
)

pytestmark = pytest.mark.anyio


def _checks(output: dict) -> dict[str, dict]:
    return {check["name"]: check for check in output["checks"]}


async def _deployment_names(client: Client) -> set[str]:
    listing = await call(client, "list_deployments", {"limit": 500})
    return {d["name"] for d in listing["deployments"]}


async def test_gate_passes_and_runs_the_step(client: Client) -> None:
    arguments = {
        "model_name": CLASSIFIERS["logreg"],
        "dataset": HOLDOUT,
        "label_column": "label",
        "max_rows": 1000,
        "max_size_bytes": 10_000_000,
        "then": {
            "tool": "run_execution",
            "arguments": {
                "deployment": DEPLOYMENTS["logreg"],
                "dataset": HOLDOUT,
                "label_column": "label",
            },
        },
    }

    output = await call(client, "workflow_gate", arguments)
    checks = _checks(output)

    assert output["passed"] is True
    assert output["failed_checks"] == []
    assert checks["n_features"]["values"]["model_n_features"] == 64
    assert checks["n_features"]["values"]["dataset_feature_columns"] == 64
    assert checks["max_rows"]["values"] == {"row_count": HOLDOUT_ROWS, "max_rows": 1000}
    assert output["step"]["status"] == "succeeded"
    assert output["step"]["result"]["metrics"]["accuracy"] > 0.9


async def test_gate_fails_on_feature_count(client: Client) -> None:
    arguments = {
        "model_name": CLASSIFIERS["logreg"],
        "dataset": NARROW,
        "label_column": "label",
        "then": {
            "tool": "run_execution",
            "arguments": {"deployment": DEPLOYMENTS["logreg"], "dataset": NARROW},
        },
    }

    result = await call_failing(client, "workflow_gate", arguments)
    output = result.structured_content

    assert output is not None
    assert output["passed"] is False
    assert output["failed_checks"] == ["n_features"]
    assert _checks(output)["n_features"]["values"]["model_n_features"] == 64
    assert _checks(output)["n_features"]["values"]["dataset_feature_columns"] == 10
    assert output["step"] == {
        "tool": "run_execution",
        "status": "not_run",
        "result": None,
        "error": None,
    }
    assert "expects 64 features" in text_of(result)
    assert "has 10 feature columns besides label 'label'" in text_of(result)


async def test_gate_fails_on_size_limits(client: Client) -> None:
    arguments = {
        "model_name": CLASSIFIERS["tree"],
        "dataset": HOLDOUT,
        "label_column": "label",
        "max_rows": 100,
        "min_rows": 10,
        "max_size_bytes": 1000,
    }

    result = await call_failing(client, "workflow_gate", arguments)
    output = result.structured_content

    assert output is not None
    assert output["failed_checks"] == ["max_rows", "max_size_bytes"]
    assert _checks(output)["min_rows"]["status"] == "passed"
    assert _checks(output)["max_rows"]["values"] == {"row_count": HOLDOUT_ROWS, "max_rows": 100}
    assert _checks(output)["max_size_bytes"]["values"]["size_bytes"] > 1000
    assert f"has {HOLDOUT_ROWS} rows; the limit is 100" in text_of(result)


async def test_gate_fails_on_a_missing_label(client: Client) -> None:
    arguments = {"model_name": CLASSIFIERS["tree"], "dataset": HOLDOUT, "label_column": "digit"}

    result = await call_failing(client, "workflow_gate", arguments)

    assert result.structured_content is not None
    assert "label_column" in result.structured_content["failed_checks"]
    assert "column 'digit' is not in dataset" in text_of(result)


async def test_promote_creates_a_production_deployment(client: Client) -> None:
    arguments = {
        "model_name": CLASSIFIERS["logreg"],
        "dataset": HOLDOUT,
        "label_column": "label",
        "metric": "accuracy",
        "threshold": 0.9,
        "deployment_name": "logreg-production",
        "max_rows": 10_000,
    }

    output = await call(client, "workflow_promote", arguments)
    names = await _deployment_names(client)

    assert output["promoted"] is True
    assert output["deployment"]["environment"] == "production"
    assert output["deployment"]["model_name"] == CLASSIFIERS["logreg"]
    assert output["evaluation"]["temporary"] is True
    assert output["evaluation"]["value"] >= 0.9
    assert _checks(output)["metric"]["status"] == "passed"
    assert "logreg-production" in names
    assert output["evaluation"]["deployment"] not in names


async def test_promote_rejects_below_threshold(client: Client) -> None:
    arguments = {
        "model_name": CLASSIFIERS["tree"],
        "dataset": HOLDOUT,
        "label_column": "label",
        "metric": "f1_macro",
        "threshold": 0.99,
        "deployment_name": "tree-production",
        "evaluation_deployment": DEPLOYMENTS["tree"],
    }

    result = await call_failing(client, "workflow_promote", arguments)
    output = result.structured_content
    names = await _deployment_names(client)

    assert output is not None
    assert output["promoted"] is False
    assert output["failed_checks"] == ["metric"]
    assert output["evaluation"]["value"] < 0.99
    assert output["evaluation"]["temporary"] is False
    assert _checks(output)["metric"]["values"]["threshold"] == 0.99
    assert "the metric gate failed: f1_macro = " in text_of(result)
    assert "does not meet the threshold >= 0.99" in text_of(result)
    assert "tree-production" not in names
    assert DEPLOYMENTS["tree"] in names


async def test_promote_rejects_regression_metric(client: Client) -> None:
    arguments = {
        "model_name": CLASSIFIERS["tree"],
        "dataset": HOLDOUT,
        "label_column": "label",
        "metric": "rmse",
        "threshold": 1.0,
        "deployment_name": "tree-rmse",
    }

    result = await call_failing(client, "workflow_promote", arguments)

    assert result.structured_content is not None
    assert result.structured_content["failed_checks"] == ["task_type"]
    assert result.structured_content["evaluation"] is None
    assert "metric 'rmse' needs a regression model" in text_of(result)


class _LogWaiter(logging.Handler):
    """A log handler that sets ``seen`` when a record's message contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.INFO)
        self.text = text
        self.seen = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


async def test_promote_cancel_deletes_temporary_deployment(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    evaluating = anyio.Event()

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        evaluating.set()

    arguments = {
        "model_name": CLASSIFIERS["forest"],
        "dataset": HOLDOUT,
        "label_column": "label",
        "threshold": 0.5,
        "deployment_name": "forest-cancelled",
        # One row per batch makes the evaluation last long enough to cancel it.
        "batch_size": 1,
    }
    caplog.set_level(logging.INFO, logger=_gates.__name__)
    deleted = _LogWaiter("deleted temporary deployment forest-cancelled-eval-")
    _gates.logger.addHandler(deleted)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(
                partial(client.call_tool, progress_callback=on_progress),
                "workflow_promote",
                arguments,
            )
            with anyio.fail_after(30):
                await evaluating.wait()
            group.cancel_scope.cancel()

        # The hub cleans up after the cancelled call returns, so wait for it.
        with anyio.fail_after(45):
            await deleted.seen.wait()
    finally:
        _gates.logger.removeHandler(deleted)
    names = await _deployment_names(client)
    cancelled = await call(client, "list_executions", {"status": "cancelled", "limit": 500})
    evaluations = [
        e for e in cancelled["executions"] if e["deployment_name"].startswith("forest-cancelled-")
    ]

    assert not [name for name in names if name.startswith("forest-cancelled")]
    assert len(evaluations) == 1


async def test_gate_rejects_a_destructive_step_by_default(platform: Platform) -> None:
    client = platform.client
    model = {"name": "gate-victim", "path": str(platform.files / "nine.onnx")}
    await call(client, "register_model", model)
    arguments = {
        "model_name": "gate-victim",
        "dataset": HOLDOUT,
        "then": {"tool": "delete_model", "arguments": {"name": "gate-victim"}},
    }

    result = await call_failing(client, "workflow_gate", arguments)
    still_there = await call(client, "get_model", {"name": "gate-victim"})

    assert "'then' calls delete_model, which is destructive" in text_of(result)
    assert "allow_destructive=true" in text_of(result)
    assert still_there["name"] == "gate-victim"


async def test_gate_runs_an_allowed_destructive_step(client: Client) -> None:
    deployment = {"name": "gate-doomed", "model_name": CLASSIFIERS["tree"]}
    await call(client, "create_deployment", deployment)
    arguments = {
        "model_name": CLASSIFIERS["tree"],
        "dataset": HOLDOUT,
        "label_column": "label",
        "allow_destructive": True,
        "then": {"tool": "delete_deployment", "arguments": {"name": "gate-doomed"}},
    }

    output = await call(client, "workflow_gate", arguments)

    assert output["step"]["status"] == "succeeded"
    assert "gate-doomed" not in await _deployment_names(client)


@pytest.mark.parametrize(
    ("then", "message"),
    [
        pytest.param(
            {"deployment": DEPLOYMENTS["tree"], "dataset": HOLDOUT},
            f"then.arguments.deployment is deployment '{DEPLOYMENTS['tree']}' of model "
            f"'{CLASSIFIERS['tree']}' v1, but the gate checked model '{CLASSIFIERS['logreg']}' v1",
            id="deployment of another model",
        ),
        pytest.param(
            {"deployment": DEPLOYMENTS["logreg"], "dataset": NARROW},
            f"then.arguments.dataset is dataset '{NARROW}', but the gate checked dataset "
            f"'{HOLDOUT}'",
            id="another dataset",
        ),
        pytest.param(
            {"deployment": "ghost-deployment", "dataset": HOLDOUT},
            "then.arguments.deployment: deployment 'ghost-deployment' not found",
            id="unknown deployment",
        ),
        pytest.param(
            {"deployment": DEPLOYMENTS["logreg"], "dataset": HOLDOUT, "label_column": "digit"},
            "then.arguments.label_column is 'digit', but the gate checked label column 'label'",
            id="another label column",
        ),
    ],
)
async def test_gate_rejects_a_step_on_other_entries(
    client: Client, then: dict, message: str
) -> None:
    before = await call(client, "list_executions", {"limit": 1})
    arguments = {
        "model_name": CLASSIFIERS["logreg"],
        "dataset": HOLDOUT,
        "label_column": "label",
        "then": {"tool": "run_execution", "arguments": then},
    }

    result = await call_failing(client, "workflow_gate", arguments)
    after = await call(client, "list_executions", {"limit": 1})

    assert "'then' does not act on what the gate checks, so nothing was run" in text_of(result)
    assert message in text_of(result)
    assert after["executions"] == before["executions"]


@pytest.mark.parametrize(
    ("metric", "threshold", "message"),
    [
        ("accuracy", 1.2, "threshold 1.2 is out of range: accuracy is always between 0 and 1"),
        ("f1_macro", -0.5, "threshold -0.5 is out of range: f1_macro is always between"),
        ("r2", 1.5, "threshold 1.5 is out of range: r2 is always at most 1"),
        ("rmse", -1.0, "threshold -1 is out of range: rmse is always at least 0"),
    ],
)
async def test_promote_rejects_impossible_thresholds(
    client: Client, metric: str, threshold: float, message: str
) -> None:
    before = await call(client, "list_executions", {"limit": 1})
    arguments = {
        "model_name": CLASSIFIERS["logreg"],
        "dataset": HOLDOUT,
        "label_column": "label",
        "metric": metric,
        "threshold": threshold,
        "deployment_name": "logreg-impossible",
    }

    result = await call_failing(client, "workflow_promote", arguments)
    after = await call(client, "list_executions", {"limit": 1})

    assert message in text_of(result)
    assert after["executions"] == before["executions"]
    assert "logreg-impossible" not in await _deployment_names(client)
