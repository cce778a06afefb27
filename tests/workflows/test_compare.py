"""workflow_compare: deployments run at once, a metrics table, the best one and a vote."""

from collections import Counter
from typing import Any

import numpy as np
import pytest
from mcp import Client
from sklearn.metrics import accuracy_score, f1_score

from mlhub_mcp.hub.workflows._compare import majority_vote
from tests.workflows.conftest import DEPLOYMENTS, HOLDOUT, HOLDOUT_ROWS, call, call_failing, text_of

pytestmark = pytest.mark.anyio


async def _predictions(client: Client, execution_id: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    while True:
        page = await call(
            client,
            "get_predictions",
            {"execution_id": execution_id, "rows": 1000, "offset": len(rows)},
        )
        rows += page["rows"]
        if len(page["rows"]) < 1000:
            return rows


def test_majority_vote_breaks_ties_by_priority() -> None:
    predictions = [[1, 1, 2], [1, 2, 3], [2, 2, 4]]

    votes, unanimous, tied = majority_vote(predictions, priority=[1, 0, 2])

    assert votes == [1, 2, 3]
    assert unanimous == 0
    assert tied == 1


async def test_compare_three_classifiers(client: Client) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    arguments = {
        "deployments": list(DEPLOYMENTS.values()),
        "dataset": HOLDOUT,
        "label_column": "label",
        "metric": "f1_macro",
        "page_size": 200,
        # Small batches make each run last long enough to see the runs overlap.
        "batch_size": 8,
    }
    result = await client.call_tool("workflow_compare", arguments, progress_callback=on_progress)
    assert not result.is_error, text_of(result)
    output = result.structured_content
    assert output is not None

    table = {row["deployment"]: row for row in output["table"]}
    assert [row["status"] for row in output["table"]] == ["succeeded"] * 3
    best_value = max(row["metrics"]["f1_macro"] for row in output["table"])
    assert output["best"]["value"] == best_value
    assert table[output["best"]["deployment"]]["metrics"]["f1_macro"] == best_value
    assert [p[0] for p in progress] == [1, 2, 3]

    runs = [
        await call(
            client, "get_execution", {"execution_id": row["execution_id"], "include_plot": False}
        )
        for row in output["table"]
    ]
    assert max(run["started_at"] for run in runs) < min(run["finished_at"] for run in runs)

    ensemble = output["ensemble"]
    assert ensemble["members"] == list(DEPLOYMENTS.values())
    assert ensemble["rows"] == HOLDOUT_ROWS

    # The vote again, from the predictions read by the test, with ties to the best member.
    per_member = [await _predictions(client, table[d]["execution_id"]) for d in ensemble["members"]]
    labels = [row["label"] for row in per_member[0]]
    order = sorted(range(3), key=lambda m: -output["table"][m]["metrics"]["f1_macro"])
    expected = []
    columns = [[p["prediction"] for p in member] for member in per_member]
    for votes in zip(*columns, strict=True):
        counts = Counter(votes)
        top = max(counts.values())
        leaders = {v for v, c in counts.items() if c == top}
        expected.append(next(votes[m] for m in order if votes[m] in leaders))

    assert ensemble["metrics"]["accuracy"] == pytest.approx(accuracy_score(labels, expected))
    assert ensemble["metrics"]["f1_macro"] == pytest.approx(
        f1_score(labels, expected, average="macro")
    )
    assert ensemble["value"] == ensemble["metrics"]["f1_macro"]
    assert ensemble["beats_best"] == (ensemble["value"] > best_value)
    unanimous = int(np.sum([len(set(v)) == 1 for v in zip(*columns, strict=True)]))
    assert ensemble["unanimous_rows"] == unanimous


async def test_compare_reports_a_failed_run(client: Client) -> None:
    arguments = {
        "deployments": [DEPLOYMENTS["logreg"], "ghost-deployment", DEPLOYMENTS["tree"]],
        "dataset": HOLDOUT,
        "label_column": "label",
        "metric": "accuracy",
    }

    output = await call(client, "workflow_compare", arguments)
    ghost = output["table"][1]

    assert ghost["status"] == "failed"
    assert "deployment 'ghost-deployment' not found" in ghost["error"]
    assert output["best"]["deployment"] == DEPLOYMENTS["logreg"]
    assert output["ensemble"]["members"] == [DEPLOYMENTS["logreg"], DEPLOYMENTS["tree"]]


async def test_compare_fails_when_every_run_fails(client: Client) -> None:
    arguments = {
        "deployments": list(DEPLOYMENTS.values()),
        "dataset": "ghost-dataset",
        "label_column": "label",
    }

    result = await call_failing(client, "workflow_compare", arguments)

    assert result.structured_content is not None
    assert result.structured_content["best"] is None
    assert result.structured_content["ensemble_note"] == "0 run succeeded; a vote needs at least 2"
    assert text_of(result).startswith("every run failed: logreg-staging: ")
    assert "dataset 'ghost-dataset' not found" in text_of(result)


async def test_compare_explains_a_metric_no_run_reports(client: Client) -> None:
    arguments = {
        "deployments": [DEPLOYMENTS["logreg"], DEPLOYMENTS["tree"]],
        "dataset": HOLDOUT,
        "label_column": "label",
        "metric": "rmse",
        "ensemble": False,
    }

    output = await call(client, "workflow_compare", arguments)

    assert output["best"] is None
    assert output["best_note"].startswith(
        "no run reported 'rmse', which is a regression metric, and the deployments are "
        "classification models. Choose one of the metrics the runs reported: accuracy, "
    )
    assert "f1_macro" in output["best_note"]


async def test_compare_has_no_note_with_a_best(client: Client) -> None:
    arguments = {
        "deployments": [DEPLOYMENTS["logreg"], DEPLOYMENTS["tree"]],
        "dataset": HOLDOUT,
        "label_column": "label",
        "metric": "accuracy",
        "ensemble": False,
    }

    output = await call(client, "workflow_compare", arguments)

    assert output["best"]["deployment"] == DEPLOYMENTS["logreg"]
    assert output["best_note"] is None
