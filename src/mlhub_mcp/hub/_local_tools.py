"""Tools and prompts served by the hub itself rather than by a downstream server."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mcp.types as types

if TYPE_CHECKING:
    from mlhub_mcp.hub.server import Hub

ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]
ToolHandler = Callable[["Hub", dict[str, Any], ProgressFn], Awaitable[types.CallToolResult]]
PromptHandler = Callable[["Hub", dict[str, str]], Awaitable[types.GetPromptResult]]


@dataclass
class LocalTool:
    """A tool implemented in the hub process."""

    tool: types.Tool
    handler: ToolHandler


@dataclass
class LocalPrompt:
    """A prompt implemented in the hub process."""

    prompt: types.Prompt
    handler: PromptHandler
