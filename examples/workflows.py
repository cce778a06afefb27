"""The hub's workflow tools, one subcommand per pattern, as an MCP client over stdio.

The script trains three digits classifiers (logistic regression, random
forest, decision tree) and a binary "is it a 9?" classifier and exports them
to ONNX. It starts the hub with `python -m mlhub_mcp hub`, which starts the
model, data and execution servers, registers everything with one
workflow_chain call, and then runs the chosen pattern:

    python examples/workflows.py chain      # a chain with references, and one that fails
    python examples/workflows.py gate       # gates before a run, and promotion to production
    python examples/workflows.py route      # requests in words routed to tools
    python examples/workflows.py compare    # three deployments at once, and a voting ensemble
    python examples/workflows.py sharded    # one execution in four parallel shards
    python examples/workflows.py optimize   # a decision threshold and a batch size tuned
    python examples/workflows.py all

Run it from the repository root after `pip install -e .`. Data goes to a new
temporary directory unless --home is given. With GROQ_API_KEY set, `route`
asks an LLM on Groq first and `optimize` also tunes a prompt template of a
hosted LLM, which sends requests to Groq (GROQ_BASE_URL overrides the address).
"""

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from mcp import Client, StdioServerParameters

CLASSIFIERS = {"logreg": "digits-logreg", "forest": "digits-forest", "tree": "digits-tree"}
DEPLOYMENTS = {key: f"{key}-staging" for key in CLASSIFIERS}
HOLDOUT = "digits-holdout"
NINE = "digits-nine"
REVIEWS = [
    ("I love this phone", "positive"),
    ("great battery life", "positive"),
    ("terrible screen", "negative"),
    ("broke after a day", "negative"),
    ("works fine, love it", "positive"),
    ("the worst purchase this year", "negative"),
]


def make_files(folder: Path) -> None:
    """Train the classifiers and write the ONNX models and the held-out CSV files."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.tree import DecisionTreeClassifier
    from threadpoolctl import threadpool_limits

    features, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        features.astype(np.float32), labels, test_size=0.3, random_state=0, stratify=labels
    )
    models = {
        "logreg": LogisticRegression(max_iter=3000),
        "forest": RandomForestClassifier(n_estimators=50, random_state=0),
        "tree": DecisionTreeClassifier(max_depth=6, random_state=0),
        "nine": LogisticRegression(max_iter=3000),
    }
    # One BLAS thread: lbfgs runs many times slower when threads compete for few cores.
    with threadpool_limits(1):
        for key, model in models.items():
            model.fit(x_train, (y_train == 9).astype(np.int64) if key == "nine" else y_train)
    for key, model in models.items():
        onnx = to_onnx(model, x_train[:1], options={"zipmap": False})
        (folder / f"{key}.onnx").write_bytes(onnx.SerializeToString())

    pixels: dict[str, Any] = {f"pixel_{i}": x_test[:, i] for i in range(64)}
    pa_csv.write_csv(pa.table({**pixels, "label": y_test}), folder / "holdout.csv")
    pa_csv.write_csv(
        pa.table({**pixels, "label": (y_test == 9).astype(np.int64)}), folder / "nine.csv"
    )
    narrow = {f"pixel_{i}": x_test[:, i] for i in range(10)}
    pa_csv.write_csv(pa.table({**narrow, "label": y_test}), folder / "narrow.csv")
    texts, sentiments = zip(*REVIEWS, strict=True)
    pa_csv.write_csv(pa.table({"text": texts, "label": sentiments}), folder / "reviews.csv")


def show(title: str, data: Any, limit: int = 1500) -> None:
    print(f"\n== {title}")
    text = json.dumps(data, indent=2)
    print(text if len(text) <= limit else text[:limit] + "\n  ...")


async def run_tool(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Call a tool; print the reason and return the structured result, also on failure."""
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        print(f"\n!! {tool} returned an error: {result.content[0].text}")
    return result.structured_content or {}


async def setup(client: Client, folder: Path) -> None:
    """Register the models and datasets and deploy the models, in one chain."""
    steps: list[dict[str, Any]] = []
    for key, name in [*CLASSIFIERS.items(), ("nine", NINE)]:
        steps.append(
            {
                "id": key,
                "tool": "register_model",
                "arguments": {"name": name, "path": str(folder / f"{key}.onnx")},
            }
        )
        steps.append(
            {
                "id": f"deploy_{key}",
                "tool": "create_deployment",
                "arguments": {"name": f"{key}-staging", "model_name": {"$ref": f"{key}.name"}},
            }
        )
    for name, file in (
        (HOLDOUT, "holdout.csv"),
        (NINE, "nine.csv"),
        ("digits-narrow", "narrow.csv"),
        ("reviews", "reviews.csv"),
    ):
        steps.append(
            {
                "id": f"data_{len(steps)}",
                "tool": "register_dataset",
                "arguments": {"name": name, "path": str(folder / file)},
            }
        )
    output = await run_tool(client, "workflow_chain", {"steps": steps})
    if output.get("status") != "succeeded":
        sys.exit(f"setup failed at step {output.get('failed_step')}: {output.get('error')}")
    print(
        f"set up {len(steps)} steps with workflow_chain: 4 models deployed, 4 datasets registered"
    )


async def demo_chain(client: Client, folder: Path) -> None:
    steps = [
        {
            "id": "model",
            "tool": "register_model",
            "arguments": {"name": "chained", "path": str(folder / "tree.onnx")},
        },
        {
            "id": "deploy",
            "tool": "create_deployment",
            "arguments": {
                "name": "chained-v${steps.model.result.version}",
                "model_name": {"$ref": "model.name"},
            },
        },
        {
            "id": "run",
            "tool": "run_execution",
            "arguments": {
                "deployment": "${steps.deploy.result.name}",
                "dataset": HOLDOUT,
                "label_column": "label",
            },
        },
    ]
    output = await run_tool(client, "workflow_chain", {"steps": steps})
    run = output["steps"][2]
    show(
        "chain: register, deploy, run",
        {
            "status": output["status"],
            "deployment": run["arguments"]["deployment"],
            "accuracy": run["result"]["metrics"]["accuracy"],
        },
    )

    broken = [
        steps[0] | {"arguments": {"name": "chained", "path": str(folder / "missing.onnx")}},
        *steps[1:],
    ]
    output = await run_tool(client, "workflow_chain", {"steps": broken})
    show(
        "chain that fails",
        {"failed_step": output["failed_step"], "statuses": [s["status"] for s in output["steps"]]},
    )


async def demo_gate(client: Client, folder: Path) -> None:
    run = {
        "tool": "run_execution",
        "arguments": {"deployment": DEPLOYMENTS["logreg"], "dataset": "digits-narrow"},
    }
    gate = {
        "model_name": CLASSIFIERS["logreg"],
        "dataset": "digits-narrow",
        "label_column": "label",
        "then": run,
    }
    output = await run_tool(client, "workflow_gate", gate)
    show(
        "gate on a dataset with too few columns",
        {"passed": output["passed"], "failed": output["failed_checks"]},
    )

    for model, threshold in ((CLASSIFIERS["logreg"], 0.9), (CLASSIFIERS["tree"], 0.95)):
        arguments = {
            "model_name": model,
            "dataset": HOLDOUT,
            "label_column": "label",
            "metric": "accuracy",
            "threshold": threshold,
            "deployment_name": f"{model}-production",
        }
        output = await run_tool(client, "workflow_promote", arguments)
        show(
            f"promote {model} at accuracy >= {threshold}",
            {"promoted": output["promoted"], "evaluation": output["evaluation"]},
        )


async def demo_route(client: Client, folder: Path) -> None:
    requests = [
        f"show the first 3 rows of dataset {HOLDOUT}",
        "which classification models are there",
        f"run deployment {DEPLOYMENTS['forest']} on dataset {HOLDOUT} with label column label",
        "delete dataset digits-narrow",
    ]
    for request in requests:
        output = await run_tool(client, "workflow_route", {"request": request})
        show(
            request,
            {
                key: output.get(key)
                for key in ("method", "tool", "server", "arguments", "reason", "executed")
            },
        )


async def demo_compare(client: Client, folder: Path) -> None:
    arguments = {
        "deployments": list(DEPLOYMENTS.values()),
        "dataset": HOLDOUT,
        "label_column": "label",
    }
    output = await run_tool(client, "workflow_compare", arguments)
    table = {row["deployment"]: round(row["metrics"]["f1_macro"], 4) for row in output["table"]}
    ensemble = output["ensemble"]
    show(
        "compare: f1_macro per deployment",
        {
            "table": table,
            "best": output["best"],
            "ensemble_f1_macro": ensemble["value"],
            "beats_best": ensemble["beats_best"],
        },
    )


async def demo_sharded(client: Client, folder: Path) -> None:
    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        print(f"  {int(done)}/{int(total or 0)} rows: {message}")

    arguments = {
        "deployment": DEPLOYMENTS["forest"],
        "dataset": HOLDOUT,
        "label_column": "label",
        "shards": 4,
    }
    result = await client.call_tool(
        "workflow_sharded_run", arguments, progress_callback=on_progress
    )
    output = result.structured_content or {}
    execution = output.get("execution", {})
    show(
        "sharded run",
        {
            "execution": execution.get("id"),
            "status": execution.get("status"),
            "accuracy": (execution.get("metrics") or {}).get("accuracy"),
            "shards": output.get("shards"),
        },
    )


async def demo_optimize(client: Client, folder: Path) -> None:
    threshold = {
        "tune": "threshold",
        "deployment": "nine-staging",
        "dataset": NINE,
        "label_column": "label",
        "metric": "recall",
        "target": 0.98,
    }
    output = await run_tool(client, "workflow_optimize", threshold)
    show(
        "threshold for recall >= 0.98",
        {
            "met": output["met"],
            "tried": [(i["setting"], round(i["value"], 4)) for i in output["iterations"]],
        },
    )

    batch = {
        "tune": "batch_size",
        "deployment": DEPLOYMENTS["forest"],
        "dataset": HOLDOUT,
        "label_column": "label",
        "metric": "rows_per_second",
        "target": 2000,
        "start_batch_size": 8,
        "max_iterations": 5,
    }
    output = await run_tool(client, "workflow_optimize", batch)
    show(
        "batch size for 2000 rows/s",
        {
            "met": output["met"],
            "tried": [(i["setting"], i["value"]) for i in output["iterations"]],
            "stopped_because": output["stopped_because"],
        },
    )

    if not os.environ.get("GROQ_API_KEY"):
        print("\nGROQ_API_KEY is not set, so the prompt-template example is skipped")
        return
    await run_tool(
        client, "register_llm", {"name": "reviewer", "provider_model": "llama-3.1-8b-instant"}
    )
    await run_tool(client, "create_deployment", {"name": "reviewer", "model_name": "reviewer"})
    prompt = {
        "tune": "prompt_template",
        "deployment": "reviewer",
        "dataset": "reviews",
        "label_column": "label",
        "metric": "accuracy",
        "target": 0.9,
        "prompt_template": "Review: {text}\nWhat is the sentiment of this review?",
        "max_iterations": 3,
    }
    output = await run_tool(client, "workflow_optimize", prompt)
    show(
        "prompt template for accuracy >= 0.9",
        {"met": output.get("met"), "scores": [i["value"] for i in output.get("iterations", [])]},
    )


DEMOS: dict[str, Callable[[Client, Path], Awaitable[None]]] = {
    "chain": demo_chain,
    "gate": demo_gate,
    "route": demo_route,
    "compare": demo_compare,
    "sharded": demo_sharded,
    "optimize": demo_optimize,
}


async def main(pattern: str, home: Path) -> None:
    folder = home / "imports"
    folder.mkdir(parents=True, exist_ok=True)
    make_files(folder)
    env = {"MLHUB_HOME": str(home), "MLHUB_IMPORT_DIRS": str(folder), "MLHUB_LOG_LEVEL": "WARNING"}
    for name in ("PYTHONPATH", "GROQ_API_KEY", "GROQ_BASE_URL", "MLHUB_ROUTE_MODEL"):
        if name in os.environ:
            env[name] = os.environ[name]
    hub = StdioServerParameters(command=sys.executable, args=["-m", "mlhub_mcp", "hub"], env=env)

    async with Client(hub, read_timeout_seconds=600) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        if "workflow_chain" not in tools:
            sys.exit("this hub serves no workflow tools; update mlhub-mcp")
        await setup(client, folder)
        for name, demo in DEMOS.items():
            if pattern in (name, "all"):
                await demo(client, folder)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pattern", choices=[*DEMOS, "all"])
    parser.add_argument(
        "--home", type=Path, help="data directory (default: a new temporary directory)"
    )
    args = parser.parse_args()
    anyio.run(
        main,
        args.pattern,
        (args.home or Path(tempfile.mkdtemp(prefix="mlhub-workflows-"))).resolve(),
    )
