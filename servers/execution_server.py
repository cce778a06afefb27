"""Launcher of the mlhub-mcp execution server.

Run it with `python servers/execution_server.py` (stdio), or `mcp run servers/execution_server.py`.
Settings come from hub_config.toml and the MLHUB_* environment variables.
"""

from mlhub_mcp.execution.server import create_execution_server
from mlhub_mcp.server_base import configure_logging

mcp = create_execution_server()

if __name__ == "__main__":
    configure_logging()
    mcp.run("stdio")
