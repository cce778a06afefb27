"""Workflow tools served by the hub: six patterns built on the downstream tools.

- ``workflow_chain``: a declared sequence of tool calls using earlier results.
- ``workflow_gate`` and ``workflow_promote``: checks that must pass before a step.
- ``workflow_route``: a request in words or a structured request sent to the right tool.
- ``workflow_compare``: deployments run in parallel, compared, and combined by vote.
- ``workflow_sharded_run``: one execution split into shards run by parallel workers.
- ``workflow_optimize``: evaluate-then-adjust until a target metric is met.

Each tool has a prompt of the same name that explains it to an agent. Pass
both lists to ``create_hub_server(settings, local_tools=workflow_tools(),
local_prompts=workflow_prompts())``.
"""

from mlhub_mcp.hub._local_tools import LocalPrompt, LocalTool


def workflow_tools() -> list[LocalTool]:
    """Return the workflow tools, to serve from the hub."""
    from mlhub_mcp.hub.workflows._chain import chain_tool
    from mlhub_mcp.hub.workflows._compare import compare_tool
    from mlhub_mcp.hub.workflows._gates import gate_tool, promote_tool
    from mlhub_mcp.hub.workflows._optimize import optimize_tool
    from mlhub_mcp.hub.workflows._route import route_tool
    from mlhub_mcp.hub.workflows._sharded import sharded_tool

    return [
        chain_tool(),
        gate_tool(),
        promote_tool(),
        route_tool(),
        compare_tool(),
        sharded_tool(),
        optimize_tool(),
    ]


def workflow_prompts() -> list[LocalPrompt]:
    """Return the prompts that explain the workflow tools, one per tool."""
    from mlhub_mcp.hub.workflows._prompts import prompts

    return prompts()


__all__ = ["workflow_prompts", "workflow_tools"]
