"""Launcher of the mlhub-mcp model server.

Run it with `python servers/model_server.py` (stdio), or `mcp run servers/model_server.py`.
Settings come from hub_config.toml and the MLHUB_* environment variables.
"""

from mlhub_mcp.models.server import create_model_server
from mlhub_mcp.server_base import configure_logging

mcp = create_model_server()

if __name__ == "__main__":
    configure_logging()
    mcp.run("stdio")
