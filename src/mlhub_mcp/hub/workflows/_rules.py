"""Rule-based routing: regular expressions that map a request to a tool and its arguments.

Rules are tried in order and the first match wins, so the more specific rules
(running, deploying, cancelling) come before the general ones (describing,
listing). Names follow the platform's rule for model, dataset and deployment
names: letters, digits, '.', '_' and '-', starting with a letter or digit.

The rules read one action and the first name after each noun.
``ambiguity`` and ``unclear_names`` find the requests they would misread:
several actions, a negation, a name the route does not use, or a common word
read as a name.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_EVERY = r"\b(?:every|all|each|any)\s+(?:of\s+)?(?:the\s+|my\s+)?"
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
        r"\bexecutions\b|" + _EVERY + r"execution\b",
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
        r"\bmodels\b|" + _EVERY + r"model\b",
        lambda t: {"task_type": _group(r"\b(?P<t>classification|regression)\b", t, "t")},
    ),
    Rule(
        "list datasets",
        "list_datasets",
        r"\bdatasets\b|" + _EVERY + r"dataset\b",
        lambda t: {},
    ),
    Rule(
        "list deployments",
        "list_deployments",
        r"\bdeployments\b|" + _EVERY + r"deployment\b",
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


# Words that start an action, by kind of action. Words that are also common
# nouns in this field ("test", "score") are left out.
_ACTION_WORDS = {
    "read": r"describe|show|list|get|display|preview|view",
    "run": r"run|execute|evaluate|predict",
    "deploy": r"deploy",
    "cancel": r"cancel|stop|abort",
    "delete": r"delete|remove|drop|erase|purge|destroy",
    "register": r"register|upload|add|create",
}
_NEGATION = r"\b(?:not|never|without|dont|\w+n['’]t)\b"
_SEPARATOR = r";|\n|\b(?:then|also|afterwards|after\s+that|as\s+well\s+as)\b"
_NOUNS = ("model", "dataset", "deployment", "execution")

# Words that the name pattern reads after a noun but that no one would name an
# entry, e.g. "please" in "show me every model please".
_NOT_NAMES = frozenset(
    """a all an and any called each every first for here it its me my named now of on or
    our please some that the then there these this those to too version versions what
    which with your""".split()
)


def _mentions(text: str) -> list[tuple[str, str]]:
    """Return (noun, name) for each entry the request names, such as ("model", "digits")."""
    mentions = []
    for noun in _NOUNS:
        for found in re.finditer(_named(noun, "n"), text, _FLAGS):
            if found.group("n").lower() not in _NOT_NAMES:
                mentions.append((noun, found.group("n")))
    return mentions


def _without_names(text: str) -> str:
    """Drop the names of entries, labels and new deployments, which may contain any word."""
    text = re.sub(r"\b(" + "|".join(_NOUNS) + r")\s+" + _name("n"), r"\1", text, flags=_FLAGS)
    text = re.sub(r"\blabel(?:\s+column)?\s+" + _name("n"), "label", text, flags=_FLAGS)
    return re.sub(r"\bas\s+(?:deployment\s+)?" + _name("n"), "as", text, flags=_FLAGS)


def ambiguity(text: str) -> str | None:
    """Return why the rules cannot route ``text`` as one action, or None when they can.

    The rules read one action and cannot tell what a negation excludes, so a
    request with a negation, a separator such as ';' or 'then', or action
    words of two kinds is ambiguous.
    """
    negation = _search(_NEGATION, text)
    if negation:
        return f"the request contains the negation {negation.group(0)!r}"

    separator = _search(_SEPARATOR, text)
    if separator:
        return f"the request joins several actions with {separator.group(0).strip()!r}"

    words = _without_names(text)
    kinds = [kind for kind, verbs in _ACTION_WORDS.items() if _search(rf"\b(?:{verbs})\b", words)]
    if len(kinds) > 1:
        return f"the request asks for several kinds of action: {', '.join(kinds)}"
    return None


def unclear_names(text: str, found: RuleMatch) -> str | None:
    """Return why the names in ``found`` may not be what ``text`` means, or None.

    A name argument must not be a common word such as 'please', and every
    entry the request names must be an argument of the route: a second model
    name, for example, would otherwise be dropped without notice.
    """
    for key, value in found.arguments.items():
        if isinstance(value, str) and value.lower() in _NOT_NAMES:
            return f"{key} {value!r} is a common word, not a plausible name"

    used = {str(value) for value in found.arguments.values()}
    unused = [f"{noun} {name!r}" for noun, name in _mentions(text) if name not in used]
    if unused:
        return f"the request also names {', '.join(unused)}, which {found.tool} does not take"
    return None


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
