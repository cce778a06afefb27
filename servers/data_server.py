"""Launcher of the mlhub-mcp data server.

Run it with `python servers/data_server.py` (stdio), or `mcp run servers/data_server.py`.
Settings come from hub_config.toml and the MLHUB_* environment variables.
"""

from mlhub_mcp.datasets.server import create_data_server
from mlhub_mcp.server_base import configure_logging

mcp = create_data_server()

if __name__ == "__main__":
    configure_logging()
    mcp.run("stdio")
