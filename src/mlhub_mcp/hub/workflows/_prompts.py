"""Prompts that explain each workflow tool to an agent, with an example call.

Every argument is optional. A given value replaces the placeholder name in the
example, so an agent can request an example that fits its own entries.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mcp.types as types
from mcp import MCPError
from mcp.types import INVALID_PARAMS

from mlhub_mcp.hub._local_tools import LocalPrompt

if TYPE_CHECKING:
    from mlhub_mcp.hub.server import Hub


@dataclass(frozen=True)
class PromptSpec:
    """A prompt's name, description, arguments with their example defaults, and text builder."""

    name: str
    description: str
    defaults: dict[str, str]
    argument_help: dict[str, str]
    build: Callable[[dict[str, str]], str]


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2)


def _chain_text(a: dict[str, str]) -> str:
    example = {
        "steps": [
            {
                "id": "model",
                "tool": "register_model",
                "arguments": {"name": a["model"], "path": a["model_path"]},
            },
            {
                "id": "deploy",
                "tool": "create_deployment",
                "arguments": {
                    "name": f"{a['model']}-staging",
                    "model_name": {"$ref": "model.name"},
                    "model_version": "${steps.model.result.version}",
                },
            },
            {
                "id": "run",
                "tool": "run_execution",
                "arguments": {
                    "deployment": "${steps.deploy.result.name}",
                    "dataset": a["dataset"],
                    "label_column": a["label_column"],
                },
            },
        ]
    }
    return (
        "Use workflow_chain when several tool calls must run in order and a later call "
        "needs a value from an earlier result, such as a new model version or an execution id.\n\n"
        "- Give each step an id, the tool name and its arguments.\n"
        '- Refer to an earlier result with "${steps.<id>.result.<path>}" inside a string, or '
        'with {"$ref": "<id>.<path>"} as a whole value. A reference that is the whole string '
        "keeps its type, so a version stays a number.\n"
        "- A path is keys and list indices separated by dots: executions.0.id.\n"
        "- The chain checks ids, tools and references before the first call, stops at the "
        "first failed step, and reports which step failed and why. Steps that ran are "
        "not undone.\n\n"
        f"Example: register, deploy and run a model in one call:\n{_dump(example)}"
    )


def _gate_text(a: dict[str, str]) -> str:
    example = {
        "model_name": a["model"],
        "dataset": a["dataset"],
        "label_column": a["label_column"],
        "max_rows": 100000,
        "max_size_bytes": 50_000_000,
        "then": {
            "tool": "run_execution",
            "arguments": {
                "deployment": a["deployment"],
                "dataset": a["dataset"],
                "label_column": a["label_column"],
            },
        },
    }
    return (
        "Use workflow_gate before running a model on data you have not checked. It checks "
        "that the label column exists, that the feature columns exist and are numeric, that "
        "the model's n_features equals the dataset's columns minus the label, and that the "
        "dataset is within max_rows, min_rows and max_size_bytes. Only when every check "
        "passes does it run the 'then' call. The 'then' call must use the checked model, "
        "dataset and label column, and a deployment of the checked model version. A "
        "destructive 'then' tool runs only with \"allow_destructive\": true, so ask the "
        "user first. A failed gate is an error that names each "
        "failed check with the values compared; fix the input (for example pass "
        "feature_columns) instead of retrying.\n\n"
        f"Example:\n{_dump(example)}"
    )


def _promote_text(a: dict[str, str]) -> str:
    example = {
        "model_name": a["model"],
        "dataset": a["dataset"],
        "label_column": a["label_column"],
        "metric": a["metric"],
        "threshold": float(a["threshold"]),
        "deployment_name": f"{a['model']}-production",
    }
    return (
        "Use workflow_promote to put a model version into production only if it is good "
        "enough. It checks the task type, the model/dataset fit and the size limits, "
        "evaluates the model on the labelled dataset (in a temporary staging deployment "
        "unless you pass evaluation_deployment), and creates the production deployment "
        "only when the metric reaches the threshold (mae, mse and rmse must be at most "
        "it). When promotion is refused, report the failed check and its values to the "
        "user; do not lower the threshold on your own.\n\n"
        f"Example:\n{_dump(example)}"
    )


def _route_text(a: dict[str, str]) -> str:
    return (
        "Use workflow_route when you have a request in words and do not know which tool "
        "serves it, or to let the hub pick the tool for a structured request.\n\n"
        f'- Text: {{"request": "{a["request"]}"}}\n'
        '- Structured: {"request": {"action": "preview", "target": "dataset", '
        f'"arguments": {{"name": "{a["dataset"]}", "rows": 5}}}}}}\n'
        "- Rules route by default; with GROQ_API_KEY set an LLM classifies the request and "
        "the rules take over when it fails. The result says which method chose the route, "
        "which tool and server, and why.\n"
        '- Pass "execute": false to see the route without running it. Deletes and other '
        'destructive tools run only with "allow_destructive": true, so ask the user first.\n'
        "- When the route lacks arguments, the error lists them; add them to the request.\n"
        '- A request with several actions, a negation ("don\'t", "not") or an unclear '
        "name is rejected as ambiguous and nothing runs: send one action per request. A "
        "destructive tool runs only after a read-only call finds the entry it acts on."
    )


def _compare_text(a: dict[str, str]) -> str:
    example = {
        "deployments": a["deployments"].split(","),
        "dataset": a["dataset"],
        "label_column": a["label_column"],
        "metric": a["metric"],
    }
    return (
        "Use workflow_compare to choose between deployments: it runs them all on the same "
        "labelled dataset at the same time and returns a table of metrics, the best "
        "deployment by 'metric', and a majority-vote ensemble of the classifiers with its "
        "own metrics. Say whether the ensemble beats the best single model (beats_best), and "
        "mention failed runs from the table.\n\n"
        f"Example:\n{_dump(example)}"
    )


def _sharded_text(a: dict[str, str]) -> str:
    example = {
        "deployment": a["deployment"],
        "dataset": a["dataset"],
        "label_column": a["label_column"],
        "shards": 4,
        "max_attempts": 2,
    }
    return (
        "Use workflow_sharded_run for a large dataset: the hub splits the rows into shards, "
        "runs them on parallel workers with progress per shard, retries a failed shard up "
        "to max_attempts times, and merges the predictions. The merged predictions and "
        "metrics equal a single run_execution's, and the run is recorded as an execution "
        "(engine 'sharded'), so get_predictions and get_execution work on its id. It runs "
        "model files only; use run_execution for hosted LLMs.\n\n"
        f"Example:\n{_dump(example)}"
    )


def _optimize_text(a: dict[str, str]) -> str:
    threshold = {
        "tune": "threshold",
        "deployment": a["deployment"],
        "dataset": a["dataset"],
        "label_column": a["label_column"],
        "metric": "recall",
        "target": 0.95,
    }
    batch = {
        "tune": "batch_size",
        "deployment": a["deployment"],
        "dataset": a["dataset"],
        "metric": "rows_per_second",
        "target": 5000,
    }
    prompt = {
        "tune": "prompt_template",
        "deployment": a["llm_deployment"],
        "dataset": a["text_dataset"],
        "label_column": a["label_column"],
        "metric": "accuracy",
        "target": 0.9,
        "prompt_template": "Review: {text}\nIs this review positive or negative?",
    }
    return (
        "Use workflow_optimize to tune one setting by repeating evaluate-then-adjust until "
        "the target is met or max_iterations is spent. Every iteration is returned, with the "
        "best one and why the loop stopped.\n\n"
        f"- Decision threshold of a binary classifier:\n{_dump(threshold)}\n"
        f"- Batch size for throughput (each iteration is an execution):\n{_dump(batch)}\n"
        "- Prompt template of a hosted LLM deployment (each iteration is an execution; the "
        "prompt first gets the label set, then solved examples from wrong rows):\n"
        f"{_dump(prompt)}\n\n"
        "A missed target is an error; report the best iteration and ask the user before "
        "relaxing the target. The tool does not change the deployment: apply the chosen "
        "threshold to the scores, or pass the batch size or template in later runs."
    )


_COMMON_HELP = {
    "model": "Registered model name used in the example",
    "dataset": "Dataset name used in the example",
    "label_column": "Label column used in the example",
    "deployment": "Deployment name used in the example",
}

SPECS = (
    PromptSpec(
        "workflow_chain",
        "How to chain tool calls whose arguments use earlier results",
        {
            "model": "digits",
            "model_path": "digits.onnx",
            "dataset": "digits-holdout",
            "label_column": "label",
        },
        {**_COMMON_HELP, "model_path": "Model file path used in the example"},
        _chain_text,
    ),
    PromptSpec(
        "workflow_gate",
        "How to check a model and a dataset before running a step",
        {
            "model": "digits",
            "dataset": "digits-holdout",
            "label_column": "label",
            "deployment": "digits-staging",
        },
        _COMMON_HELP,
        _gate_text,
    ),
    PromptSpec(
        "workflow_promote",
        "How to promote a model to production behind metric and data gates",
        {
            "model": "digits",
            "dataset": "digits-holdout",
            "label_column": "label",
            "metric": "accuracy",
            "threshold": "0.9",
        },
        {
            **_COMMON_HELP,
            "metric": "Metric used in the example, e.g. accuracy or f1_macro",
            "threshold": "Threshold used in the example, a number",
        },
        _promote_text,
    ),
    PromptSpec(
        "workflow_route",
        "How to send a request in words to the right tool",
        {"request": "show the schema of dataset digits-holdout", "dataset": "digits-holdout"},
        {
            "request": "Request in words used in the example",
            "dataset": "Dataset name used in the example",
        },
        _route_text,
    ),
    PromptSpec(
        "workflow_compare",
        "How to compare deployments in parallel and build a voting ensemble",
        {
            "deployments": "digits-logreg,digits-forest,digits-tree",
            "dataset": "digits-holdout",
            "label_column": "label",
            "metric": "f1_macro",
        },
        {
            **_COMMON_HELP,
            "deployments": "Deployment names used in the example, separated by commas",
            "metric": "Metric used in the example",
        },
        _compare_text,
    ),
    PromptSpec(
        "workflow_sharded_run",
        "How to run a large execution in parallel shards",
        {"deployment": "digits-staging", "dataset": "digits-holdout", "label_column": "label"},
        _COMMON_HELP,
        _sharded_text,
    ),
    PromptSpec(
        "workflow_optimize",
        "How to tune a threshold, a batch size or an LLM prompt until a target is met",
        {
            "deployment": "digits-staging",
            "dataset": "digits-holdout",
            "label_column": "label",
            "llm_deployment": "sentiment-llm",
            "text_dataset": "reviews",
        },
        {
            **_COMMON_HELP,
            "llm_deployment": "LLM deployment name used in the example",
            "text_dataset": "Text dataset name used in the example",
        },
        _optimize_text,
    ),
)


def _prompt(spec: PromptSpec) -> LocalPrompt:
    arguments = [
        types.PromptArgument(name=name, description=spec.argument_help[name], required=False)
        for name in spec.defaults
    ]
    prompt = types.Prompt(name=spec.name, description=spec.description, arguments=arguments)

    async def handler(hub: "Hub", given: dict[str, str]) -> types.GetPromptResult:
        unknown = sorted(set(given) - set(spec.defaults))
        if unknown:
            raise MCPError(
                INVALID_PARAMS,
                f"prompt {spec.name!r} has no arguments {unknown}; "
                f"its arguments: {sorted(spec.defaults)}",
            )
        values = {**spec.defaults, **{k: v for k, v in given.items() if v}}
        try:
            text = spec.build(values)
        except ValueError as exc:
            raise MCPError(
                INVALID_PARAMS, f"invalid argument for prompt {spec.name!r}: {exc}"
            ) from exc
        message = types.PromptMessage(
            role="user", content=types.TextContent(type="text", text=text)
        )
        return types.GetPromptResult(description=spec.description, messages=[message])

    return LocalPrompt(prompt, handler)


def prompts() -> list[LocalPrompt]:
    return [_prompt(spec) for spec in SPECS]
