"""Pieces shared by the workflow tools: tool definitions, downstream calls and results.

A workflow calls the downstream tools through ``Hub.call``, as a client of the
hub would. A protocol error (``MCPError``) from such a call is reported as a
failed step of the workflow, not raised to the workflow's caller, because that
caller did not send the request that failed.
"""

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mcp.types as types
from mcp import MCPError
from pydantic import BaseModel, ValidationError

from mlhub_mcp.hub._local_tools import LocalTool, ProgressFn

if TYPE_CHECKING:
    from mlhub_mcp.hub.server import Hub

logger = logging.getLogger(__name__)

# get_predictions returns at most this many rows per call.
MAX_PREDICTION_PAGE = 1000


class WorkflowError(Exception):
    """A workflow failed before finishing its job. The message gives the reason and the fix."""


class ToolCallFailed(WorkflowError):
    """A tool called by a workflow returned an error result or a protocol error."""

    def __init__(self, tool: str, reason: str) -> None:
        self.tool = tool
        self.reason = reason
        super().__init__(f"{tool} failed: {reason}")


@dataclass
class Outcome:
    """The structured output of a workflow, and the error text when it did not finish its job."""

    output: BaseModel
    error: str | None = None

    def to_result(self) -> types.CallToolResult:
        structured = self.output.model_dump(mode="json")
        text = json.dumps(structured)
        content: list[types.ContentBlock] = [types.TextContent(type="text", text=text)]
        if self.error is not None:
            # The reason comes first in an error result, and the details follow it.
            content.insert(0, types.TextContent(type="text", text=self.error))
        return types.CallToolResult(
            content=content, structured_content=structured, is_error=self.error is not None
        )


Runner = Callable[["Hub", Any, ProgressFn], Awaitable[Outcome]]


def error_result(message: str) -> types.CallToolResult:
    """Return a tool error result that carries only ``message``."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=message)], is_error=True
    )


def _validation_text(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "arguments"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def define_tool(
    *,
    name: str,
    title: str,
    description: str,
    input_model: type[BaseModel],
    output_model: type[BaseModel],
    annotations: types.ToolAnnotations,
    run: Runner,
) -> LocalTool:
    """Build a hub tool whose arguments and structured output are pydantic models.

    The hub does not check arguments against a local tool's input schema, so
    the handler validates them with ``input_model`` and returns a tool error
    that names each invalid argument.
    """
    tool = types.Tool(
        name=name,
        title=title,
        description=description,
        input_schema=input_model.model_json_schema(),
        output_schema=output_model.model_json_schema(),
        annotations=annotations,
    )

    async def handler(
        hub: "Hub", arguments: dict[str, Any], progress: ProgressFn
    ) -> types.CallToolResult:
        try:
            params = input_model.model_validate(arguments)
        except ValidationError as exc:
            return error_result(f"invalid arguments for {name}: {_validation_text(exc)}")

        started = time.perf_counter()
        try:
            outcome = await run(hub, params, progress)
        except WorkflowError as exc:
            logger.info("workflow %s failed: %s", name, exc)
            return error_result(f"{name} failed: {exc}")
        except MCPError:
            # call_tool turns downstream protocol errors into ToolCallFailed, so an
            # MCPError here is a protocol error of this call and passes on unchanged.
            raise
        except Exception as exc:
            logger.exception("workflow %s crashed", name)
            return error_result(f"{name} failed on an internal error: {type(exc).__name__}: {exc}")

        elapsed = time.perf_counter() - started
        state = "failed" if outcome.error else "succeeded"
        logger.info("workflow %s %s in %.2f s", name, state, elapsed)
        return outcome.to_result()

    return LocalTool(tool, handler)


def result_text(result: types.CallToolResult) -> str:
    """Join the text blocks of a tool result."""
    texts = [block.text for block in result.content if isinstance(block, types.TextContent)]
    return " ".join(texts) or "(no text)"


def result_data(result: types.CallToolResult) -> Any:
    """Return a tool result's structured content, else its text parsed as JSON, else the text."""
    if result.structured_content is not None:
        return result.structured_content
    text = result_text(result)
    try:
        return json.loads(text)
    except ValueError:
        return {"text": text}


async def call_tool(
    hub: "Hub",
    tool: str,
    arguments: dict[str, Any],
    progress: ProgressFn | None = None,
) -> Any:
    """Call ``tool`` through the hub and return its structured result.

    Raises:
        ToolCallFailed: The tool returned an error result or a protocol error.
    """
    try:
        result = await hub.call(tool, arguments, progress)
    except MCPError as exc:
        raise ToolCallFailed(tool, f"protocol error {exc.code}: {exc.message}") from exc
    if result.is_error:
        # MCPServer puts this prefix before a tool error; the workflow names the tool itself.
        reason = result_text(result).removeprefix(f"Error executing tool {tool}: ")
        raise ToolCallFailed(tool, reason)
    return result_data(result)


async def read_predictions(
    hub: "Hub", execution_id: str, page_size: int = MAX_PREDICTION_PAGE
) -> list[dict[str, Any]]:
    """Read every prediction row of an execution through get_predictions, page by page.

    Raises:
        ToolCallFailed: get_predictions failed.
    """
    rows: list[dict[str, Any]] = []
    while True:
        page = await call_tool(
            hub,
            "get_predictions",
            {"execution_id": execution_id, "rows": page_size, "offset": len(rows)},
        )
        batch = page["rows"]
        rows.extend(batch)
        if len(batch) < page_size:
            return rows


def tool_exists(hub: "Hub", name: str) -> bool:
    return name in hub.local_tools or name in hub.routes.tools


def known_tools(hub: "Hub") -> list[str]:
    return sorted([*hub.local_tools, *hub.routes.tools])


def is_destructive(tool: types.Tool) -> bool:
    """Return whether ``tool`` may delete or overwrite data, by its annotations.

    MCP's defaults apply: a tool without annotations, or one that is not
    read-only and leaves ``destructive_hint`` unset, counts as destructive.
    """
    annotations = tool.annotations
    if annotations is None:
        return True
    if annotations.read_only_hint:
        return False
    return annotations.destructive_hint is not False


def tool_definition(hub: "Hub", name: str) -> types.Tool:
    """Return the definition of a hub tool or a downstream tool by its public name."""
    local = hub.local_tools.get(name)
    if local is not None:
        return local.tool
    return hub.routes.tools[name][1]


async def no_progress(progress: float, total: float | None, message: str | None) -> None:
    return None


class MonotonicProgress:
    """Forwards progress notifications whose value is above the last one sent.

    MCP requires the progress value to increase with each notification, and a
    workflow that retries or nests calls could otherwise send a lower value.
    """

    def __init__(self, forward: ProgressFn) -> None:
        self._forward = forward
        self._last: float | None = None

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        if self._last is not None and progress <= self._last:
            return
        self._last = progress
        await self._forward(progress, total, message)
