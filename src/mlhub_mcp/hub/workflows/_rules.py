"""Rule-based routing: regular expressions that map a request to a tool and its arguments.

Rules are tried in order and the first match wins, so the more specific rules
(running, deploying, cancelling) come before the general ones (describing,
listing). Names follow the platform's rule for model, dataset and deployment
names: letters, digits, '.', '_' and '-', starting with a letter or digit.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_NAME = r"[`'\"]?(?P<{group}>[A-Za-z0-9][A-Za-z0-9._-]*?)[`'\"]?(?=[\s,;:!?)]|\.(?:\s|$)|$)"
_FLAGS = re.IGNORECASE


def _name(group: str) -> str:
    return _NAME.format(group=group)


def _search(pattern: str, text: str) -> re.Match[str] | None:
    return re.search(pattern, text, _FLAGS)


def _named(noun: str, group: str) -> str:
    """Match '<noun> [named|called] NAME', e.g. "dataset 'digits'"."""
    return rf"\b{noun}\s+(?:named\s+|called\s+)?" + _name(group)


def _number(pattern: str, text: str) -> int | None:
    found = _search(pattern, text)
    return int(found.group(1)) if found else None


@dataclass(frozen=True)
class RuleMatch:
    """The tool a rule chose and the arguments it read from the request."""

    tool: str
    arguments: dict[str, Any]
    rule: str
    missing: list[str]


@dataclass(frozen=True)
class Rule:
    """A named rule: a trigger pattern and a function that extracts the arguments."""

    name: str
    tool: str
    trigger: str
    extract: Callable[[str], dict[str, Any]]
    required: tuple[str, ...] = ()

    def match(self, text: str) -> RuleMatch | None:
        if not _search(self.trigger, text):
            return None
        arguments = {k: v for k, v in self.extract(text).items() if v is not None}
        missing = [name for name in self.required if name not in arguments]
        return RuleMatch(self.tool, arguments, self.name, missing)


def _group(pattern: str, text: str, group: str) -> str | None:
    found = _search(pattern, text)
    return found.group(group) if found else None


def _environment(text: str) -> str | None:
    found = _search(r"\b(production|staging|development)\b", text)
    return found.group(1).lower() if found else None


def _run_arguments(text: str) -> dict[str, Any]:
    return {
        "deployment": _group(_named("deployment", "d"), text, "d"),
        "dataset": _group(_named("dataset", "s"), text, "s"),
        "label_column": _group(r"\blabel(?:\s+column)?\s+" + _name("l"), text, "l"),
        "batch_size": _number(r"\bbatch(?:\s+size|es\s+of)?\s+(\d+)", text),
    }


def _deploy_arguments(text: str) -> dict[str, Any]:
    return {
        "model_name": _group(_named("model", "m"), text, "m"),
        "model_version": _number(r"\bversion\s+(\d+)", text),
        "name": _group(r"\bas\s+(?:deployment\s+)?" + _name("n"), text, "n"),
        "environment": _environment(text),
    }


def _execution_id(text: str) -> str | None:
    return _group(r"\bexecution\s+(?:id\s+)?[`'\"]?(?P<e>[0-9a-f]{24})\b", text, "e")


def _model_arguments(text: str) -> dict[str, Any]:
    return {
        "name": _group(_named("model", "m"), text, "m"),
        "version": _number(r"\bversion\s+(\d+)", text),
    }


def _dataset_name(text: str) -> dict[str, Any]:
    return {"name": _group(_named("dataset", "s"), text, "s")}


def _deployment_name(text: str) -> dict[str, Any]:
    return {"name": _group(_named("deployment", "d"), text, "d")}


def _rows(text: str) -> int | None:
    return _number(r"\b(\d+)\s+rows\b", text) or _number(r"\b(?:first|top)\s+(\d+)\b", text)


def _status(text: str) -> str | None:
    found = _search(r"\b(queued|running|succeeded|failed|cancelled)\b", text)
    return found.group(1).lower() if found else None


RULES: tuple[Rule, ...] = (
    Rule(
        "run a deployment on a dataset",
        "run_execution",
        r"\b(run|execute|evaluate|score|predict|test)\b.*\bdeployment\b.*\bdataset\b",
        _run_arguments,
        ("deployment", "dataset"),
    ),
    Rule(
        "deploy a model",
        "create_deployment",
        r"\bdeploy\b.*\bmodel\b",
        _deploy_arguments,
        ("model_name", "name"),
    ),
    Rule(
        "cancel an execution",
        "cancel_execution",
        r"\b(cancel|stop|abort)\b.*\bexecution\b",
        lambda t: {"execution_id": _execution_id(t)},
        ("execution_id",),
    ),
    Rule(
        "read an execution's predictions",
        "get_predictions",
        r"\bpredictions\b.*\bexecution\b|\bexecution\b.*\bpredictions\b",
        lambda t: {
            "execution_id": _execution_id(t),
            "rows": _rows(t),
            "offset": _number(r"\boffset\s+(\d+)", t),
        },
        ("execution_id",),
    ),
    Rule(
        "list executions",
        "list_executions",
        r"\bexecutions\b",
        lambda t: {
            "deployment": _group(_named("deployment", "d"), t, "d"),
            "status": _status(t),
        },
    ),
    Rule(
        "describe an execution",
        "get_execution",
        r"\bexecution\s+(?:id\s+)?[`'\"]?[0-9a-f]{24}\b",
        lambda t: {"execution_id": _execution_id(t)},
        ("execution_id",),
    ),
    Rule(
        "delete a model",
        "delete_model",
        r"\b(delete|remove)\b.*\bmodel\b",
        _model_arguments,
        ("name",),
    ),
    Rule(
        "delete a dataset",
        "delete_dataset",
        r"\b(delete|remove)\b.*\bdataset\b",
        _dataset_name,
        ("name",),
    ),
    Rule(
        "delete a deployment",
        "delete_deployment",
        r"\b(delete|remove)\b.*\bdeployment\b",
        _deployment_name,
        ("name",),
    ),
    Rule(
        "show a dataset's schema",
        "get_dataset_schema",
        r"\b(schema|columns)\b.*\bdataset\b|\bdataset\b.*\b(schema|columns)\b",
        _dataset_name,
        ("name",),
    ),
    Rule(
        "show a dataset's statistics",
        "get_dataset_statistics",
        r"\b(statistics|stats)\b.*\bdataset\b|\bdataset\b.*\b(statistics|stats)\b",
        _dataset_name,
        ("name",),
    ),
    Rule(
        "preview a dataset",
        "preview_dataset",
        r"\b(preview|head|sample|first|top)\b.*\bdataset\b|\bdataset\b.*\b(preview|head)\b",
        lambda t: {**_dataset_name(t), "rows": _rows(t)},
        ("name",),
    ),
    Rule(
        "list a model's versions",
        "list_model_versions",
        r"\bversions\b.*\bmodel\b|\bmodel\b.*\bversions\b",
        lambda t: {"name": _model_arguments(t)["name"]},
        ("name",),
    ),
    Rule(
        "list models",
        "list_models",
        r"\bmodels\b",
        lambda t: {"task_type": _group(r"\b(?P<t>classification|regression)\b", t, "t")},
    ),
    Rule(
        "list datasets",
        "list_datasets",
        r"\bdatasets\b",
        lambda t: {},
    ),
    Rule(
        "list deployments",
        "list_deployments",
        r"\bdeployments\b",
        lambda t: {"environment": _environment(t)},
    ),
    Rule(
        "describe a model",
        "get_model",
        _named("model", "m"),
        _model_arguments,
        ("name",),
    ),
    Rule(
        "describe a dataset",
        "get_dataset",
        _named("dataset", "s"),
        _dataset_name,
        ("name",),
    ),
    Rule(
        "describe a deployment",
        "get_deployment",
        _named("deployment", "d"),
        _deployment_name,
        ("name",),
    ),
)

# Structured requests: (action, target) to tool.
ACTIONS: dict[tuple[str, str], str] = {
    ("list", "model"): "list_models",
    ("list", "dataset"): "list_datasets",
    ("list", "deployment"): "list_deployments",
    ("list", "execution"): "list_executions",
    ("get", "model"): "get_model",
    ("get", "dataset"): "get_dataset",
    ("get", "deployment"): "get_deployment",
    ("get", "execution"): "get_execution",
    ("versions", "model"): "list_model_versions",
    ("preview", "dataset"): "preview_dataset",
    ("schema", "dataset"): "get_dataset_schema",
    ("statistics", "dataset"): "get_dataset_statistics",
    ("register", "model"): "register_model",
    ("register", "dataset"): "register_dataset",
    ("deploy", "model"): "create_deployment",
    ("run", "deployment"): "run_execution",
    ("cancel", "execution"): "cancel_execution",
    ("predictions", "execution"): "get_predictions",
    ("delete", "model"): "delete_model",
    ("delete", "dataset"): "delete_dataset",
    ("delete", "deployment"): "delete_deployment",
    ("delete", "execution"): "delete_execution",
}


def match_rules(text: str) -> RuleMatch | None:
    """Return the first rule that matches ``text``, or None."""
    for rule in RULES:
        found = rule.match(text)
        if found is not None:
            return found
    return None


def rule_summaries() -> list[str]:
    """Return one line per rule, for the error that lists the requests the rules route."""
    return [f"{rule.name} ({rule.tool})" for rule in RULES]
