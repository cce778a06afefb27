"""Prompt chaining: a declared sequence of tool calls whose arguments use earlier results.

A step's arguments may refer to the structured result of an earlier step in
two forms:

- ``"${steps.<id>.result.<path>}"`` inside a string. When the string is only
  the reference, the value keeps its JSON type (a number stays a number);
  inside longer text the value is written in, as JSON unless it is a string.
- ``{"$ref": "<id>.<path>"}`` as a whole value, which keeps the JSON type.

A path is made of object keys and list indices separated by dots, such as
``models.0.name``; ``models[0].name`` is accepted too. References are checked
before the first step runs, so a chain that refers to an unknown or later step
changes nothing.
"""

import json
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import mcp.types as types
from pydantic import BaseModel, ConfigDict, Field

from mlhub_mcp.hub._local_tools import LocalTool, ProgressFn
from mlhub_mcp.hub.workflows._base import (
    MonotonicProgress,
    Outcome,
    ToolCallFailed,
    WorkflowError,
    call_tool,
    define_tool,
    known_tools,
    tool_exists,
)

if TYPE_CHECKING:
    from mlhub_mcp.hub.server import Hub

TOOL_NAME = "workflow_chain"
MAX_STEPS = 50

_TEMPLATE = re.compile(r"\$\{([^{}]*)\}")
_INDEX = re.compile(r"\[(\d+)\]")
_STEP_ID = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"


class ChainStep(BaseModel):
    """One tool call of a chain."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        pattern=_STEP_ID,
        description="Name of the step, unique in the chain; later steps refer to its result by it",
    )
    tool: str = Field(description="Public name of the tool to call, as listed by tools/list")
    arguments: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Arguments of the tool. Any value may refer to an earlier step's result: "
            '"${steps.<id>.result.<path>}" in a string, or {"$ref": "<id>.<path>"}'
        ),
    )


class ChainInput(BaseModel):
    """Arguments of workflow_chain."""

    model_config = ConfigDict(extra="forbid")

    steps: list[ChainStep] = Field(
        min_length=1,
        max_length=MAX_STEPS,
        description="The tool calls, run one after another in this order",
    )


class StepReport(BaseModel):
    """The outcome of one step."""

    id: str
    tool: str
    status: Literal["succeeded", "failed", "skipped"] = Field(
        description="'skipped' for the steps after a failed one"
    )
    arguments: dict[str, Any] | None = Field(
        description="the arguments sent, with references replaced; null when not sent"
    )
    result: Any = Field(default=None, description="the tool's structured result")
    error: str | None = None
    duration_seconds: float | None = None


class ChainOutput(BaseModel):
    """Result of workflow_chain."""

    status: Literal["succeeded", "failed"]
    failed_step: str | None = Field(description="id of the step that failed, if any")
    error: str | None = Field(description="why that step failed")
    steps: list[StepReport]


class BadReference(WorkflowError):
    """A reference in a step's arguments is malformed or cannot be resolved."""


@dataclass(frozen=True)
class Reference:
    """A parsed reference to an earlier step's result."""

    written: str
    step: str
    path: tuple[str, ...]


def _split_path(path: str) -> tuple[str, ...]:
    path = _INDEX.sub(r".\1", path)
    return tuple(part for part in path.split(".") if part)


def parse_template(inner: str) -> Reference:
    """Parse the inside of ``${...}``: ``steps.<id>.result`` followed by an optional path.

    Raises:
        BadReference: The text has another form.
    """
    written = "${" + inner + "}"
    parts = _split_path(inner.strip())
    if len(parts) < 3 or parts[0] != "steps" or parts[2] != "result":
        raise BadReference(
            f"invalid reference {written}: write ${{steps.<step id>.result.<path>}}, "
            "e.g. ${steps.register.result.version}"
        )
    return Reference(written, parts[1], parts[3:])


def parse_ref(value: Any) -> Reference:
    """Parse the value of ``{"$ref": ...}``: ``<id>`` followed by an optional path.

    Raises:
        BadReference: The value is not a string that starts with a step id.
    """
    written = f'{{"$ref": {value!r}}}'
    parts = _split_path(value.strip()) if isinstance(value, str) else ()
    if not parts:
        raise BadReference(f'invalid reference {written}: write {{"$ref": "<step id>.<path>"}}')
    return Reference(written, parts[0], parts[1:])


def _is_ref(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"$ref"}


def find_references(value: Any) -> list[Reference]:
    """Return every reference in a JSON value.

    Raises:
        BadReference: A reference is malformed.
    """
    if _is_ref(value):
        return [parse_ref(value["$ref"])]
    if isinstance(value, str):
        return [parse_template(inner) for inner in _TEMPLATE.findall(value)]
    if isinstance(value, dict):
        return [ref for item in value.values() for ref in find_references(item)]
    if isinstance(value, list):
        return [ref for item in value for ref in find_references(item)]
    return []


def lookup(reference: Reference, results: dict[str, Any]) -> Any:
    """Return the value a reference points to.

    Raises:
        BadReference: The step has no result or the path does not exist in it.
    """
    if reference.step not in results:
        raise BadReference(f"{reference.written}: step {reference.step!r} has no result")

    value = results[reference.step]
    walked = [reference.step]
    for key in reference.path:
        where = ".".join(walked)
        if isinstance(value, list):
            if not key.isdigit() or int(key) >= len(value):
                raise BadReference(
                    f"{reference.written}: {where} is a list of {len(value)} items, "
                    f"so {key!r} is not a valid index"
                )
            value = value[int(key)]
        elif isinstance(value, dict):
            if key not in value:
                raise BadReference(
                    f"{reference.written}: {where} has no key {key!r}; its keys: {sorted(value)}"
                )
            value = value[key]
        else:
            raise BadReference(
                f"{reference.written}: {where} is {type(value).__name__} {value!r}, "
                f"which has no {key!r}"
            )
        walked.append(key)

    return value


def resolve(value: Any, results: dict[str, Any]) -> Any:
    """Return ``value`` with every reference replaced by what it points to.

    Raises:
        BadReference: A reference cannot be resolved.
    """
    if _is_ref(value):
        return lookup(parse_ref(value["$ref"]), results)
    if isinstance(value, str):
        whole = _TEMPLATE.fullmatch(value)
        if whole:
            return lookup(parse_template(whole.group(1)), results)

        def substitute(match: re.Match[str]) -> str:
            found = lookup(parse_template(match.group(1)), results)
            return found if isinstance(found, str) else json.dumps(found)

        return _TEMPLATE.sub(substitute, value)
    if isinstance(value, dict):
        return {key: resolve(item, results) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, results) for item in value]
    return value


def check_chain(hub: "Hub", steps: list[ChainStep]) -> None:
    """Check step ids, tool names and references before anything runs.

    Raises:
        WorkflowError: A step id repeats, a tool is unknown, or a reference is
            malformed or points to a step that has not run before it.
    """
    earlier: set[str] = set()
    for step in steps:
        if step.id in earlier:
            raise WorkflowError(f"step id {step.id!r} is used twice; give each step its own id")
        if not tool_exists(hub, step.tool):
            raise WorkflowError(
                f"step {step.id!r} calls unknown tool {step.tool!r}; "
                f"known tools: {known_tools(hub)}"
            )
        for reference in find_references(step.arguments):
            if reference.step not in earlier:
                position = (
                    "runs later" if reference.step in {s.id for s in steps} else "does not exist"
                )
                raise WorkflowError(
                    f"step {step.id!r} refers to step {reference.step!r} in {reference.written}, "
                    f"which {position}; a step can only use the results of the steps before it"
                )
        earlier.add(step.id)


def _scaled(progress: MonotonicProgress, index: int, count: int, step: ChainStep) -> ProgressFn:
    async def forward(value: float, total: float | None, message: str | None) -> None:
        share = min(value / total, 1.0) if total else 0.0
        text = f"step {step.id} ({step.tool}): {message}" if message else f"step {step.id}"
        await progress(index + share, count, text)

    return forward


async def run_chain(hub: "Hub", params: ChainInput, progress: ProgressFn) -> Outcome:
    check_chain(hub, params.steps)
    monotonic = MonotonicProgress(progress)
    count = len(params.steps)
    results: dict[str, Any] = {}
    reports: list[StepReport] = []
    failure: tuple[str, str] | None = None

    for index, step in enumerate(params.steps):
        if failure is not None:
            reports.append(StepReport(id=step.id, tool=step.tool, status="skipped", arguments=None))
            continue

        await monotonic(index, count, f"step {step.id}: calling {step.tool}")
        started = time.perf_counter()
        arguments: dict[str, Any] | None = None
        try:
            arguments = resolve(step.arguments, results)
            data = await call_tool(
                hub, step.tool, arguments, _scaled(monotonic, index, count, step)
            )
        except (BadReference, ToolCallFailed) as exc:
            reason = exc.reason if isinstance(exc, ToolCallFailed) else str(exc)
            failure = (step.id, reason)
            reports.append(
                StepReport(
                    id=step.id,
                    tool=step.tool,
                    status="failed",
                    arguments=arguments,
                    error=reason,
                    duration_seconds=round(time.perf_counter() - started, 3),
                )
            )
            continue

        results[step.id] = data
        reports.append(
            StepReport(
                id=step.id,
                tool=step.tool,
                status="succeeded",
                arguments=arguments,
                result=data,
                duration_seconds=round(time.perf_counter() - started, 3),
            )
        )

    if failure is None:
        await monotonic(count, count, f"all {count} steps succeeded")
        output = ChainOutput(status="succeeded", failed_step=None, error=None, steps=reports)
        return Outcome(output)

    step_id, reason = failure
    output = ChainOutput(status="failed", failed_step=step_id, error=reason, steps=reports)
    return Outcome(output, error=f"step {step_id!r} failed: {reason}")


def chain_tool() -> LocalTool:
    return define_tool(
        name=TOOL_NAME,
        title="Run a chain of tool calls",
        description=(
            "Run a declared sequence of tool calls in order, where later arguments use "
            "earlier results, and stop at the first failure. Reference an earlier result "
            'with "${steps.<id>.result.<path>}" inside a string or {"$ref": "<id>.<path>"} '
            "as a whole value; a path is keys and list indices separated by dots, e.g. "
            '"${steps.register.result.version}" or {"$ref": "runs.executions.0.id"}. '
            "Ids, tool names and references are checked before the first call. Returns "
            "every step's arguments and structured result; on failure, which step failed "
            "and why, with the later steps marked 'skipped'. Steps that already ran are "
            "not undone."
        ),
        input_model=ChainInput,
        output_model=ChainOutput,
        # The steps may call any tool, including ones that delete or reach the LLM provider.
        annotations=types.ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=True
        ),
        run=run_chain,
    )
