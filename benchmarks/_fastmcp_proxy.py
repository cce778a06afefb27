"""Serve a fastmcp proxy over stdio in front of one stdio MCP server.

bench_hub.py runs this with the Python of a separate virtual environment
that has fastmcp installed, because fastmcp may pin other versions of the
packages this project uses:

    FASTMCP_PYTHON benchmarks/_fastmcp_proxy.py COMMAND [ARGS...]

The proxy keeps one session to the server open (``keep_alive``), as a
long-running proxy would. For some targets fastmcp's default is a new
session, and so a new server process, per request.
"""

import os
import sys

from fastmcp.client.transports import StdioTransport
from fastmcp.server import create_proxy


def main() -> None:
    command, *args = sys.argv[1:]
    transport = StdioTransport(command, args, env=dict(os.environ), keep_alive=True)
    proxy = create_proxy(transport, name="fastmcp-proxy")
    proxy.run("stdio", show_banner=False)


if __name__ == "__main__":
    main()
