"""The execution server's tools for hosted LLM deployments."""

from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from mlhub_mcp.errors import InvalidInput, NotFound
from mlhub_mcp.execution import _groq
from mlhub_mcp.execution._service import ExecutionService
from mlhub_mcp.server_base import state_of

# A chat request changes nothing in the catalog but reaches an outside service.
CHAT = ToolAnnotations(read_only_hint=True, open_world_hint=True)


class TokenUsage(BaseModel):
    """Tokens counted by the provider for one request."""

    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None


class ChatReply(BaseModel):
    """The LLM's reply to one prompt."""

    deployment: str
    model: str = Field(description="the provider's model id")
    output: str
    usage: TokenUsage
    latency_ms: float = Field(description="duration of the successful request, in milliseconds")


async def chat(
    ctx: Context,
    deployment: Annotated[str, Field(description="Name of a deployment of a hosted LLM")],
    prompt: Annotated[str, Field(min_length=1, description="The user message to send")],
    system_prompt: Annotated[
        str | None, Field(description="System message sent before the prompt")
    ] = None,
    temperature: Annotated[
        float, Field(ge=0, le=2, description="Sampling temperature; 0 is the most repeatable")
    ] = _groq.DEFAULT_TEMPERATURE,
    max_tokens: Annotated[
        int,
        Field(ge=1, le=_groq.MAX_COMPLETION_TOKENS, description="Maximum tokens in the reply"),
    ] = _groq.DEFAULT_MAX_TOKENS,
) -> ChatReply:
    """Send one prompt to an LLM deployment and return its reply with token usage.

    Use it to try a prompt before running a whole dataset with run_execution.
    The deployment must be of a hosted LLM (see register_llm); model-file
    deployments are rejected. The server needs GROQ_API_KEY. Rate limits and
    server errors are retried; a request that still fails returns an error.
    """
    service: ExecutionService = state_of(ctx)
    doc = await service.get_deployment(deployment)
    if doc.get("model_kind") != "llm":
        raise InvalidInput(
            f"deployment {deployment!r} runs {doc['model_name']!r}, which is a model file, "
            "not a hosted LLM; use run_execution for it"
        )

    model = await service.catalog.get("models", doc["model_id"])
    if model is None:
        raise NotFound("model", doc["model_name"], "the deployment's model was deleted")

    reply = await _groq.chat(
        model,
        prompt,
        system_prompt=system_prompt,
        temperature=temperature,
        max_tokens=max_tokens,
    )
    return ChatReply(deployment=deployment, **reply)


def register_llm_tools(server: MCPServer) -> None:
    """Add the LLM tools to an execution server."""
    server.tool(title="Chat with an LLM deployment", annotations=CHAT)(chat)
