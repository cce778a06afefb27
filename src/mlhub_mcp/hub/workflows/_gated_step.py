"""Checks that workflow_gate's 'then' call acts on the model and dataset the gate checked.

A passing gate covers only the model version and the dataset it checked.
These checks reject a 'then' call that names another model, another
model version, another dataset, or a deployment of another model version, and
a destructive 'then' call that the caller did not allow.
"""

from typing import TYPE_CHECKING, Any

from mlhub_mcp.hub.workflows._base import (
    ToolCallFailed,
    WorkflowError,
    call_tool,
    is_destructive,
    known_tools,
    tool_definition,
    tool_exists,
)

if TYPE_CHECKING:
    from mlhub_mcp.hub.server import Hub

# Arguments that name an entry under the same key in every tool.
_ENTRY_ARGUMENTS = {
    "model_name": "model",
    "dataset": "dataset",
    "deployment": "deployment",
    "evaluation_deployment": "deployment",
    "deployments": "deployment",
}

# Tools whose 'name' argument names an existing entry of this kind. The 'name'
# of create_deployment is the new deployment, so it is not listed.
_NAME_KIND = {
    "get_model": "model",
    "list_model_versions": "model",
    "delete_model": "model",
    "register_model": "model",
    "register_llm": "model",
    "get_dataset": "dataset",
    "preview_dataset": "dataset",
    "get_dataset_schema": "dataset",
    "get_dataset_statistics": "dataset",
    "delete_dataset": "dataset",
    "register_dataset": "dataset",
    "get_deployment": "deployment",
    "delete_deployment": "deployment",
}


def check_step_allowed(hub: "Hub", tool: str, allow_destructive: bool) -> None:
    """Reject a 'then' tool that is unknown, or destructive without ``allow_destructive``.

    Raises:
        WorkflowError: The tool is unknown or not allowed.
    """
    if not tool_exists(hub, tool):
        raise WorkflowError(f"'then' calls unknown tool {tool!r}; known tools: {known_tools(hub)}")
    if is_destructive(tool_definition(hub, tool)) and not allow_destructive:
        raise WorkflowError(
            f"'then' calls {tool}, which is destructive. Pass allow_destructive=true to run it "
            "after the gate"
        )


def named_entries(tool: str, arguments: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """Return (argument, kind, value) for each argument of a call that names an entry."""
    entries = []
    for argument, kind in _ENTRY_ARGUMENTS.items():
        value = arguments.get(argument)
        if isinstance(value, list):
            entries += [(f"{argument}[{i}]", kind, item) for i, item in enumerate(value)]
        elif value is not None:
            entries.append((argument, kind, value))

    kind = _NAME_KIND.get(tool)
    if kind is not None and arguments.get("name") is not None:
        entries.append(("name", kind, arguments["name"]))
    return entries


def _requested_version(tool: str, arguments: dict[str, Any]) -> Any:
    if "model_version" in arguments:
        return arguments["model_version"]
    if _NAME_KIND.get(tool) == "model":
        return arguments.get("version")
    return None


async def _deployment_mismatch(
    hub: "Hub", argument: str, name: Any, model: dict[str, Any]
) -> str | None:
    try:
        deployment = await call_tool(hub, "get_deployment", {"name": name})
    except ToolCallFailed as exc:
        return f"then.arguments.{argument}: {exc.reason}"

    served = (deployment["model_name"], deployment["model_version"])
    if served == (model["name"], model["version"]):
        return None
    return (
        f"then.arguments.{argument} is deployment {name!r} of model {served[0]!r} "
        f"v{served[1]}, but the gate checked model {model['name']!r} v{model['version']}"
    )


async def step_mismatches(
    hub: "Hub",
    tool: str,
    arguments: dict[str, Any],
    model: dict[str, Any],
    dataset: dict[str, Any],
    label_column: str | None,
    feature_columns: list[str] | None,
) -> list[str]:
    """Return one message per argument of the 'then' call that disagrees with the gate.

    ``model`` and ``dataset`` are the get_model and get_dataset results the
    gate checked. A deployment is looked up with get_deployment and must serve
    the checked model version.
    """
    problems = []
    for argument, kind, value in named_entries(tool, arguments):
        if kind == "model" and value != model["name"]:
            problems.append(
                f"then.arguments.{argument} is model {value!r}, but the gate checked model "
                f"{model['name']!r}"
            )
        elif kind == "dataset" and value != dataset["name"]:
            problems.append(
                f"then.arguments.{argument} is dataset {value!r}, but the gate checked dataset "
                f"{dataset['name']!r}"
            )
        elif kind == "deployment":
            problem = await _deployment_mismatch(hub, argument, value, model)
            if problem is not None:
                problems.append(problem)

    version = _requested_version(tool, arguments)
    if version is not None and version != model["version"]:
        problems.append(
            f"then.arguments asks for model version {version!r}, but the gate checked "
            f"v{model['version']}"
        )

    requested_label = arguments.get("label_column")
    if label_column is not None and requested_label not in (None, label_column):
        problems.append(
            f"then.arguments.label_column is {requested_label!r}, but the gate checked "
            f"label column {label_column!r}"
        )

    requested_features = arguments.get("feature_columns")
    if feature_columns is not None and requested_features not in (None, feature_columns):
        problems.append(
            f"then.arguments.feature_columns is {requested_features!r}, but the gate checked "
            f"feature columns {feature_columns!r}"
        )
    return problems
