"""Routing: send a natural-language or structured request to the right server and tool.

The rules in ``_rules`` route by default. When ``GROQ_API_KEY`` is set, an LLM
on Groq classifies the request into a tool call instead. ``GROQ_BASE_URL``
overrides the API address and ``MLHUB_ROUTE_MODEL`` the model. The rules take
over when the request fails or the response is not a valid tool call.

Nothing runs for an ambiguous request: the rules reject one with several
actions, a negation or an unclear name, and a destructive tool chosen by the
LLM is rejected for several actions or a negation. Before a destructive tool
runs, a read-only call checks that the entry it acts on exists.
"""

import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import jsonschema
import mcp.types as types
from pydantic import BaseModel, ConfigDict, Field

from mlhub_mcp.hub._local_tools import LocalTool, ProgressFn
from mlhub_mcp.hub.workflows._base import (
    Outcome,
    ToolCallFailed,
    WorkflowError,
    call_tool,
    define_tool,
    is_destructive,
)
from mlhub_mcp.hub.workflows._rules import (
    ACTIONS,
    ambiguity,
    match_rules,
    rule_summaries,
    unclear_names,
)

if TYPE_CHECKING:
    from mlhub_mcp.hub.server import Hub

logger = logging.getLogger(__name__)

TOOL_NAME = "workflow_route"
API_KEY_ENV = "GROQ_API_KEY"
BASE_URL_ENV = "GROQ_BASE_URL"
MODEL_ENV = "MLHUB_ROUTE_MODEL"
DEFAULT_MODEL = "llama-3.3-70b-versatile"
LLM_TIMEOUT_SECONDS = 30.0
LLM_MAX_TOKENS = 512
_REQUEST_MAX_CHARS = 4000

Action = Literal[
    "list",
    "get",
    "versions",
    "preview",
    "schema",
    "statistics",
    "register",
    "deploy",
    "run",
    "cancel",
    "predictions",
    "delete",
]
Target = Literal["model", "dataset", "deployment", "execution"]
Method = Literal["structured", "rules", "llm"]

# Read-only lookups that must find the entry before a destructive tool runs:
# the tool, then the lookup tool and the arguments it shares with the tool.
EXISTENCE_CHECKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "delete_model": ("get_model", ("name", "version")),
    "delete_dataset": ("get_dataset", ("name",)),
    "delete_deployment": ("get_deployment", ("name",)),
    "delete_execution": ("get_execution", ("execution_id",)),
    "cancel_execution": ("get_execution", ("execution_id",)),
}


class StructuredRequest(BaseModel):
    """A request given as an action on a kind of entry, with the tool's arguments."""

    model_config = ConfigDict(extra="forbid")

    action: Action = Field(description="What to do, e.g. 'preview'")
    target: Target = Field(description="What to do it to, e.g. 'dataset'")
    arguments: dict[str, Any] = Field(
        default_factory=dict, description="Arguments of the tool, e.g. {'name': 'digits'}"
    )


class RouteInput(BaseModel):
    """Arguments of workflow_route."""

    model_config = ConfigDict(extra="forbid")

    request: str | StructuredRequest = Field(
        description="A request in English, e.g. 'preview 5 rows of dataset digits', or a "
        "structured request {action, target, arguments}"
    )
    mode: Literal["auto", "rules", "llm"] = Field(
        default="auto",
        description="'auto': the LLM when GROQ_API_KEY is set, else the rules; 'rules' or "
        "'llm' forces one (the LLM still falls back to the rules on failure)",
    )
    execute: bool = Field(default=True, description="false: only choose the route")
    allow_destructive: bool = Field(
        default=False,
        description="Allow the routed call to be a delete or another destructive tool",
    )


class RouteOutput(BaseModel):
    """Result of workflow_route."""

    method: Method | None = Field(description="what chose the route; null when nothing matched")
    tool: str | None
    server: str | None = Field(description="downstream server that serves the tool")
    arguments: dict[str, Any] | None
    reason: str = Field(description="why this route was chosen, or why none was")
    llm_error: str | None = Field(description="why the LLM's choice was not used, if it was asked")
    ambiguous: bool = Field(
        default=False,
        description="true when nothing ran because the request is unclear: several actions, "
        "a negation, or a name that may not be what was meant",
    )
    missing_arguments: list[str] = Field(default_factory=list)
    executed: bool
    result: Any = None
    error: str | None = None


@dataclass
class Choice:
    """A route: the tool, its arguments and why."""

    method: Method
    tool: str
    arguments: dict[str, Any]
    reason: str
    missing: list[str]


class AmbiguousRequest(Exception):
    """A request that could mean more than one call, so no route is taken."""

    def __init__(self, method: Method, reason: str, choice: Choice | None = None) -> None:
        self.method = method
        self.reason = reason
        self.choice = choice
        # Why the LLM's route was not used, when the rules found the ambiguity after it failed.
        self.llm_error: str | None = None
        super().__init__(reason)


def _scrub(text: str) -> str:
    key = os.environ.get(API_KEY_ENV, "")
    return text.replace(key, "[redacted]") if key else text


def _downstream_tools(hub: "Hub") -> dict[str, types.Tool]:
    return {name: tool for name, (_, tool) in hub.routes.tools.items()}


def _schema_errors(tool: types.Tool, arguments: dict[str, Any]) -> list[str]:
    validator_class = jsonschema.validators.validator_for(tool.input_schema)
    errors = validator_class(tool.input_schema).iter_errors(arguments)
    return [f"{'.'.join(map(str, e.path)) or 'arguments'}: {e.message}" for e in errors]


def _missing_required(tool: types.Tool, arguments: dict[str, Any]) -> list[str]:
    required = tool.input_schema.get("required", [])
    return [name for name in required if name not in arguments]


def route_structured(request: StructuredRequest, tools: dict[str, types.Tool]) -> Choice:
    """Map a structured request to its tool.

    Raises:
        WorkflowError: No tool does that action on that target.
    """
    tool = ACTIONS.get((request.action, request.target))
    if tool is None or tool not in tools:
        pairs = sorted(f"{a} {t}" for a, t in ACTIONS)
        raise WorkflowError(
            f"no tool does {request.action!r} on a {request.target}; the structured requests are: "
            + ", ".join(pairs)
        )
    arguments = dict(request.arguments)
    reason = f"structured request {request.action} {request.target} maps to {tool}"
    return Choice("structured", tool, arguments, reason, _missing_required(tools[tool], arguments))


def route_rules(text: str, tools: dict[str, types.Tool]) -> Choice | None:
    """Return the route of the first matching rule whose tool the hub serves, or None.

    Raises:
        AmbiguousRequest: The request has several actions, a negation, or a
            name that the rule may have misread.
    """
    problem = ambiguity(text)
    if problem is not None:
        raise AmbiguousRequest("rules", problem)

    found = match_rules(text)
    if found is None or found.tool not in tools:
        return None
    missing = sorted(
        set(found.missing) | set(_missing_required(tools[found.tool], found.arguments))
    )
    reason = f"rule '{found.rule}' matched the request"
    choice = Choice("rules", found.tool, found.arguments, reason, missing)

    problem = unclear_names(text, found)
    if problem is not None:
        raise AmbiguousRequest("rules", problem, choice)
    return choice


def _catalogue(tools: dict[str, types.Tool]) -> list[dict[str, Any]]:
    entries = []
    for name, tool in sorted(tools.items()):
        properties = tool.input_schema.get("properties", {})
        required = set(tool.input_schema.get("required", []))
        parameters = {}
        for key, spec in properties.items():
            kind = spec.get("type") or "/".join(
                str(option.get("type")) for option in spec.get("anyOf", []) if option.get("type")
            )
            text = f"{kind}{', required' if key in required else ''}"
            if spec.get("description"):
                text += f": {spec['description']}"
            parameters[key] = text
        summary = (tool.description or "").strip().splitlines()
        entries.append(
            {"name": name, "description": summary[0] if summary else "", "parameters": parameters}
        )
    return entries


SYSTEM_PROMPT = """You route requests for an ML platform to exactly one tool call.
The tools are listed below as JSON: name, description and parameters.
Answer with one JSON object and nothing else:
{"tool": "<tool name>", "arguments": {<arguments>}, "reason": "<one short sentence>"}
Use only the listed tools and parameters, and only values stated in the request.
If no tool fits, answer {"tool": null, "arguments": {}, "reason": "<why>"}.

Tools:
"""


def extract_json_object(text: str) -> dict[str, Any] | None:
    """Return the first JSON object in ``text``, such as one wrapped in prose or a code fence."""
    decoder = json.JSONDecoder()
    for index, char in enumerate(text):
        if char != "{":
            continue
        try:
            value, _ = decoder.raw_decode(text, index)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


class LLMRouteFailed(Exception):
    """The LLM could not be asked, or its answer is not a valid tool call."""


async def ask_llm(text: str, tools: dict[str, types.Tool]) -> Choice:
    """Ask the LLM to turn ``text`` into a call of one of ``tools``.

    Raises:
        LLMRouteFailed: The request failed or the answer is not a valid tool call.
    """
    try:
        import groq
    except ImportError as exc:
        raise LLMRouteFailed(
            "the groq package is not installed: pip install 'mlhub-mcp[groq]'"
        ) from exc

    model = os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    client = groq.AsyncGroq(
        api_key=os.environ[API_KEY_ENV],
        base_url=os.environ.get(BASE_URL_ENV) or None,
        # One attempt: on any failure the rules route instead of waiting on retries.
        max_retries=0,
        timeout=LLM_TIMEOUT_SECONDS,
    )
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT + json.dumps(_catalogue(tools))},
        {"role": "user", "content": text},
    ]
    try:
        async with client:
            response = await client.chat.completions.create(
                model=model, messages=messages, temperature=0, max_tokens=LLM_MAX_TOKENS
            )
    except groq.APIError as exc:
        raise LLMRouteFailed(f"the request to {model} failed: {_scrub(str(exc))}") from exc

    answer = (response.choices[0].message.content or "") if response.choices else ""
    return _read_answer(answer, model, tools)


def _read_answer(answer: str, model: str, tools: dict[str, types.Tool]) -> Choice:
    parsed = extract_json_object(answer)
    excerpt = answer.strip()[:200]
    if parsed is None:
        raise LLMRouteFailed(f"the response of {model} contains no JSON object: {excerpt!r}")

    tool = parsed.get("tool")
    arguments = parsed.get("arguments", {})
    if tool is None:
        raise LLMRouteFailed(f"{model} found no tool for the request: {parsed.get('reason', '')}")
    if not isinstance(tool, str) or tool not in tools:
        raise LLMRouteFailed(f"{model} chose {tool!r}, which is not a tool of the hub")
    if not isinstance(arguments, dict):
        raise LLMRouteFailed(f"{model} gave arguments that are not an object: {arguments!r}")

    problems = _schema_errors(tools[tool], arguments)
    if problems:
        raise LLMRouteFailed(f"{model} chose {tool} with invalid arguments: {'; '.join(problems)}")

    reason = str(parsed.get("reason") or "no reason given")
    return Choice("llm", tool, arguments, f"{model} chose {tool}: {reason}", [])


async def choose_route(
    params: RouteInput, tools: dict[str, types.Tool]
) -> tuple[Choice | None, str | None]:
    """Return the route and, when the LLM was asked but not used, why.

    Raises:
        WorkflowError: mode 'llm' was asked for without GROQ_API_KEY, or a
            structured request names no tool.
        AmbiguousRequest: The request could mean more than one call.
    """
    if isinstance(params.request, StructuredRequest):
        return route_structured(params.request, tools), None

    text = params.request.strip()[:_REQUEST_MAX_CHARS]
    has_key = bool(os.environ.get(API_KEY_ENV, "").strip())
    if params.mode == "llm" and not has_key:
        raise WorkflowError(f"mode 'llm' needs {API_KEY_ENV}; set it or use mode 'rules'")

    llm_error = None
    if params.mode == "llm" or (params.mode == "auto" and has_key):
        try:
            choice = await ask_llm(text, tools)
        except LLMRouteFailed as exc:
            llm_error = str(exc)
            logger.warning("llm routing failed, using the rules: %s", llm_error)
        else:
            # The LLM may read past a negation or a second action, as the rules
            # would, so a destructive choice needs a request with neither.
            problem = ambiguity(text)
            if problem is not None and is_destructive(tools[choice.tool]):
                raise AmbiguousRequest("llm", problem, choice)
            return choice, None

    try:
        return route_rules(text, tools), llm_error
    except AmbiguousRequest as exc:
        exc.llm_error = llm_error
        raise


def _ambiguous_outcome(hub: "Hub", exc: AmbiguousRequest) -> Outcome:
    logger.info("route rejected an ambiguous request (%s): %s", exc.method, exc.reason)
    choice = exc.choice
    server = hub.routes.tools[choice.tool][0].name if choice else None
    output = RouteOutput(
        method=exc.method,
        tool=choice.tool if choice else None,
        server=server,
        arguments=choice.arguments if choice else None,
        reason=f"ambiguous: {exc.reason}",
        llm_error=exc.llm_error,
        ambiguous=True,
        executed=False,
    )
    return Outcome(
        output,
        error=f"ambiguous request, so nothing was run: {exc.reason}. Ask for one action "
        "per request, without negations, and name each model, dataset or deployment once, "
        "or pass a structured request",
    )


async def _check_exists(hub: "Hub", choice: Choice) -> str | None:
    """Look up the entry that a destructive tool acts on.

    Returns why the tool cannot run, or None when the entry exists or the tool
    names no entry.
    """
    lookup = EXISTENCE_CHECKS.get(choice.tool)
    if lookup is None:
        return None

    getter, keys = lookup
    arguments = {key: choice.arguments[key] for key in keys if key in choice.arguments}
    try:
        await call_tool(hub, getter, arguments)
    except ToolCallFailed as exc:
        return f"{getter} found no entry to act on: {exc.reason}"
    return None


async def run_route(hub: "Hub", params: RouteInput, progress: ProgressFn) -> Outcome:
    tools = _downstream_tools(hub)
    try:
        choice, llm_error = await choose_route(params, tools)
    except AmbiguousRequest as exc:
        return _ambiguous_outcome(hub, exc)

    if choice is None:
        output = RouteOutput(
            method=None,
            tool=None,
            server=None,
            arguments=None,
            reason="no rule matched the request",
            llm_error=llm_error,
            executed=False,
        )
        understood = "; ".join(rule_summaries())
        return Outcome(
            output, error=f"no route for the request; the rules understand: {understood}"
        )

    server, tool = hub.routes.tools[choice.tool]
    output = RouteOutput(
        method=choice.method,
        tool=choice.tool,
        server=server.name,
        arguments=choice.arguments,
        reason=choice.reason,
        llm_error=llm_error,
        missing_arguments=choice.missing,
        executed=False,
    )
    if choice.missing:
        return Outcome(
            output,
            error=f"routed to {choice.tool}, but the request lacks {choice.missing}; "
            "name them in the request or pass a structured request",
        )
    if not params.execute:
        return Outcome(output)

    destructive = is_destructive(tool)
    if destructive and not params.allow_destructive:
        output.reason += (
            f"; not run because {choice.tool} is destructive and allow_destructive is false"
        )
        return Outcome(output)

    if destructive:
        problem = await _check_exists(hub, choice)
        if problem is not None:
            logger.info("route did not run %s: %s", choice.tool, problem)
            output.error = problem
            return Outcome(
                output, error=f"routed to {choice.tool}, which was not run because {problem}"
            )

    try:
        output.result = await call_tool(hub, choice.tool, choice.arguments, progress)
    except ToolCallFailed as exc:
        output.error = exc.reason
        return Outcome(output, error=f"routed to {choice.tool} ({choice.reason}), which {exc}")
    output.executed = True
    return Outcome(output)


def route_tool() -> LocalTool:
    return define_tool(
        name=TOOL_NAME,
        title="Route a request to the right tool",
        description=(
            "Send a request in English (e.g. 'run deployment digits-prod on dataset digits "
            "with label column label') or a structured request {action, target, arguments} "
            "to the right server and tool, and run it. Rules route by default; when "
            "GROQ_API_KEY is set an LLM classifies the request and the rules take over if "
            "it fails. The result names the tool, its server, the arguments and why it was "
            "chosen. Destructive tools run only with allow_destructive=true, and only "
            "after a read-only call finds the entry they act on; execute=false only "
            "chooses the route. A request with several actions, a negation or an unclear "
            "name is rejected as ambiguous and nothing runs."
        ),
        input_model=RouteInput,
        output_model=RouteOutput,
        annotations=types.ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=True
        ),
        run=run_route,
    )
