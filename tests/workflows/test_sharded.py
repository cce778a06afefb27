"""workflow_sharded_run: one execution split into shards run by parallel workers."""

import threading
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from mcp import Client

from mlhub_mcp.hub.workflows import _shard_worker
from mlhub_mcp.hub.workflows._shard_worker import plan_shards
from tests.workflows.conftest import (
    DEPLOYMENTS,
    HOLDOUT,
    HOLDOUT_ROWS,
    NARROW,
    call,
    call_failing,
    text_of,
)

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


def _fail_shard(monkeypatch: pytest.MonkeyPatch, start_row: int, failures: int) -> list[int]:
    """Make the shard starting at ``start_row`` raise on its first ``failures`` attempts."""
    real = _shard_worker.run_shard
    attempts: list[int] = []

    def flaky(job: Any, start: int, stop: int, path: Path, report: Any) -> Any:
        if start == start_row:
            attempts.append(start)
            if len(attempts) <= failures:
                raise RuntimeError("worker lost its disk")
        return real(job, start, stop, path, report)

    monkeypatch.setattr(_shard_worker, "run_shard", flaky)
    return attempts


def test_plan_shards_covers_every_row_once() -> None:
    assert plan_shards(540, 4) == [(0, 135), (135, 270), (270, 405), (405, 540)]
    assert plan_shards(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert plan_shards(2, 5) == [(0, 1), (1, 2)]
    assert plan_shards(0, 4) == [(0, 0)]


async def test_sharded_run_equals_a_single_run(client: Client) -> None:
    messages: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    arguments = {
        "deployment": DEPLOYMENTS["logreg"],
        "dataset": HOLDOUT,
        "label_column": "label",
        "shards": 4,
        "workers": 4,
        "batch_size": 32,
    }
    result = await client.call_tool(
        "workflow_sharded_run", arguments, progress_callback=on_progress
    )
    assert not result.is_error, text_of(result)
    output = result.structured_content
    assert output is not None
    single = await call(
        client,
        "run_execution",
        {
            "deployment": DEPLOYMENTS["logreg"],
            "dataset": HOLDOUT,
            "label_column": "label",
            "batch_size": 32,
        },
    )
    sharded = output["execution"]

    assert sharded["engine"] == "sharded"
    assert sharded["status"] == "succeeded"
    assert sharded["rows_processed"] == HOLDOUT_ROWS
    assert sharded["metrics"] == single["metrics"]
    assert [(s["start_row"], s["stop_row"], s["status"]) for s in output["shards"]] == [
        (0, 135, "succeeded"),
        (135, 270, "succeeded"),
        (270, 405, "succeeded"),
        (405, 540, "succeeded"),
    ]
    assert messages[-1] == "shard 1 done; shard 2 done; shard 3 done; shard 4 done"

    merged = await _predictions(client, sharded["id"])
    reference = await _predictions(client, single["id"])
    assert [(r["row"], r["prediction"], r["label"]) for r in merged] == [
        (r["row"], r["prediction"], r["label"]) for r in reference
    ]
    np.testing.assert_allclose(
        [r["score"] for r in merged], [r["score"] for r in reference], atol=1e-6
    )


async def test_sharded_run_is_an_execution_of_the_server(client: Client) -> None:
    output = await call(
        client,
        "workflow_sharded_run",
        {
            "deployment": DEPLOYMENTS["tree"],
            "dataset": HOLDOUT,
            "feature_columns": [f"pixel_{i}" for i in range(64)],
            "shards": 3,
        },
    )
    execution_id = output["execution"]["id"]

    listed = await call(
        client, "list_executions", {"deployment": DEPLOYMENTS["tree"], "limit": 500}
    )
    fetched = await call(
        client, "get_execution", {"execution_id": execution_id, "include_plot": False}
    )
    deleted = await call(client, "delete_execution", {"execution_id": execution_id})

    assert execution_id in {e["id"] for e in listed["executions"]}
    assert fetched["parameters"]["shards"] == 3
    assert fetched["metrics"] is None
    assert fetched["predictions_url"] is not None
    assert deleted["deleted"] is True


async def test_sharded_run_retries_a_failed_shard(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = _fail_shard(monkeypatch, start_row=135, failures=1)

    output = await call(
        client,
        "workflow_sharded_run",
        {
            "deployment": DEPLOYMENTS["forest"],
            "dataset": HOLDOUT,
            "label_column": "label",
            "shards": 4,
        },
    )
    single = await call(
        client,
        "run_execution",
        {"deployment": DEPLOYMENTS["forest"], "dataset": HOLDOUT, "label_column": "label"},
    )
    retried = output["shards"][1]

    assert attempts == [135, 135]
    assert retried["attempts"] == 2
    assert retried["errors"] == ["RuntimeError: worker lost its disk"]
    assert retried["status"] == "succeeded"
    assert [s["attempts"] for s in output["shards"]] == [1, 2, 1, 1]
    assert output["execution"]["metrics"] == single["metrics"]


async def test_sharded_run_fails_after_retries(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_shard(monkeypatch, start_row=270, failures=5)

    result = await call_failing(
        client,
        "workflow_sharded_run",
        {
            "deployment": DEPLOYMENTS["logreg"],
            "dataset": HOLDOUT,
            "label_column": "label",
            "shards": 4,
            "workers": 1,
            "max_attempts": 3,
        },
    )
    output = result.structured_content
    assert output is not None
    recorded = await call(client, "get_execution", {"execution_id": output["execution"]["id"]})

    assert output["shards"][2]["status"] == "failed"
    assert output["shards"][2]["attempts"] == 3
    assert [s["status"] for s in output["shards"]] == [
        "succeeded",
        "succeeded",
        "failed",
        "stopped",
    ]
    assert output["shards"][3]["attempts"] == 0
    assert recorded["status"] == "failed"
    assert recorded["error"] == (
        "shard 2 (rows 270-404) failed after 3 attempts: RuntimeError: worker lost its disk"
    )
    assert recorded["predictions_key"] is None
    assert "shard 2 (rows 270-404) failed after 3 attempts" in text_of(result)


async def test_sharded_run_rejects_unfit_dataset(client: Client) -> None:
    result = await call_failing(
        client,
        "workflow_sharded_run",
        {"deployment": DEPLOYMENTS["logreg"], "dataset": NARROW, "label_column": "label"},
    )

    assert "the model does not fit the dataset" in text_of(result)
    assert "expects 64 features" in text_of(result)


async def test_cancel_execution_stops_a_sharded_run(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = threading.Event()

    def wait_for_stop(job: Any, start: int, stop: int, path: Path, report: Any) -> Any:
        started.set()
        if not job.stop.wait(timeout=20):
            raise RuntimeError("the run was not stopped within 20 s")
        raise _shard_worker.ShardStopped("stopped by the test")

    monkeypatch.setattr(_shard_worker, "run_shard", wait_for_stop)
    outcome: dict[str, Any] = {}
    arguments = {
        "deployment": DEPLOYMENTS["tree"],
        "dataset": HOLDOUT,
        "label_column": "label",
        "shards": 2,
    }

    async def run() -> None:
        outcome["result"] = await client.call_tool("workflow_sharded_run", arguments)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(run)
            assert await anyio.to_thread.run_sync(started.wait, 10)
            running = await call(
                client, "list_executions", {"deployment": DEPLOYMENTS["tree"], "status": "running"}
            )
            execution_id = running["executions"][0]["id"]
            await call(client, "cancel_execution", {"execution_id": execution_id})

    result = outcome["result"]
    recorded = await call(
        client, "get_execution", {"execution_id": execution_id, "include_plot": False}
    )

    assert result.is_error
    assert recorded["status"] == "cancelled"
    assert recorded["error"] == "cancelled while running"
    assert [s["status"] for s in result.structured_content["shards"]] == ["stopped", "stopped"]
    assert f"execution {execution_id} cancelled: cancelled while running" in text_of(result)
