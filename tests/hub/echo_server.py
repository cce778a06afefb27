"""A small downstream server for the hub tests, served through the product's run_server.

Usage: ``python echo_server.py [stdio|http|sse] [port]``. With ``ECHO_DIR``
set, each start writes ``start-<pid>`` there and each cancelled ``sleep``
writes ``cancelled-<pid>``, so tests can count restarts and cancellations.
With ``ECHO_LINGER`` set, the process stays two minutes after serving ends.
"""

import os
import sys
import time
from pathlib import Path

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from mlhub_mcp.server_base import run_server

server = MCPServer("echo", version="1.0", log_level="WARNING")


def _mark(kind: str) -> None:
    folder = os.environ.get("ECHO_DIR")
    if folder:
        (Path(folder) / f"{kind}-{os.getpid()}").touch()


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def pid() -> int:
    """Return the id of this server process."""
    return os.getpid()


@server.tool()
async def sleep(seconds: float) -> str:
    """Wait for the given number of seconds."""
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        _mark("cancelled")
        raise
    return "slept"


@server.tool()
def crash() -> str:
    """Exit the process at once, as a crash would."""
    os._exit(3)


@server.tool()
def fail(message: str) -> str:
    """Fail with the given message."""
    raise ToolError(message)


@server.tool()
async def add_tool(name: str, ctx: Context) -> str:
    """Add a tool called name and announce the change with tools/list_changed."""

    def added() -> str:
        return "added"

    server.add_tool(added, name=name, description="A tool added at run time.")
    await ctx.session.send_tool_list_changed()
    return name


if __name__ == "__main__":
    _mark("start")
    transport = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    try:
        run_server(server, transport, "127.0.0.1", port)
    finally:
        if os.environ.get("ECHO_LINGER"):
            # Stands for a server that outlives the end of its input, e.g. one
            # busy finishing work, so only the parent-death watch can end it.
            time.sleep(120)
