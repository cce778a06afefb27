"""Reference proxies over stdio that bench_hub.py compares the hub with.

    python benchmarks/_hub_variants.py bare-proxy COMMAND [ARGS...]
    python benchmarks/_hub_variants.py bare-proxy-pipes COMMAND [ARGS...]
    python benchmarks/_hub_variants.py bare-proxy-unvalidated COMMAND [ARGS...]
    python benchmarks/_hub_variants.py bare-proxy-pipes-unvalidated COMMAND [ARGS...]
    python benchmarks/_hub_variants.py hub-without-audit

``bare-proxy`` is the smallest forwarding proxy the official SDK allows: a
low-level ``Server`` over stdio whose tools/list returns the downstream
listing read once at start and whose tools/call awaits ``Client.call_tool``
on one legacy-era session to COMMAND. It has no routing table, audit,
restarts, progress forwarding or timeouts, so the hub's latency above it is
what those features and the hub's own code cost.

``bare-proxy-pipes`` is the same proxy serving its stdio through asyncio
pipe transports instead of the SDK's ``stdio_server``. The SDK reads each
line of stdin, and writes and flushes each line of stdout, in a worker
thread (``anyio.wrap_file``). That makes three thread hand-offs per request
and response, while the pipe transports do the same work on the event loop.

``bare-proxy-unvalidated`` is the bare proxy with the SDK client's check
of each result against the tool's output schema turned off. The SDK's
``ClientSession.validate_tool_result`` runs the ``jsonschema`` library over
every structured result, and the proxy's own client validates it again.
``bare-proxy-pipes-unvalidated`` combines the two changes.

``hub-without-audit`` runs ``mlhub hub`` with the audit trail replaced by a
no-op in this process only, to measure what the audit trail adds per call.
The product code is not changed.
"""

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import mcp.types as types
from mcp import Client, StdioServerParameters
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared._context_streams import create_context_streams
from mcp.shared.message import SessionMessage


@asynccontextmanager
async def pipe_stdio_server() -> AsyncIterator[tuple[Any, Any]]:
    """Serve MCP over fds 0 and 1 with asyncio pipe transports, without worker threads."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    stdin = os.fdopen(os.dup(0), "rb", buffering=0)
    stdout = os.fdopen(os.dup(1), "wb", buffering=0)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
    transport, protocol = await loop.connect_write_pipe(asyncio.Protocol, stdout)

    read_writer, read_stream = create_context_streams[SessionMessage | Exception](0)
    write_stream, write_reader = create_context_streams[SessionMessage](0)

    async def stdin_reader() -> None:
        async with read_writer:
            while line := await reader.readline():
                try:
                    message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                except Exception as exc:
                    await read_writer.send(exc)
                    continue
                await read_writer.send(SessionMessage(message))

    async def stdout_writer() -> None:
        async with write_reader:
            async for session_message in write_reader:
                data = session_message.message.model_dump_json(by_alias=True, exclude_unset=True)
                transport.write(data.encode() + b"\n")

    async with anyio.create_task_group() as group:
        group.start_soon(stdin_reader)
        group.start_soon(stdout_writer)
        yield read_stream, write_stream
        group.cancel_scope.cancel()


async def run_bare_proxy(command: list[str], pipes: bool = False, validate: bool = True) -> None:
    params = StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ))
    async with Client(params, mode="legacy", read_timeout_seconds=120) as downstream:
        tools = (await downstream.list_tools()).tools
        if not validate:
            downstream.session.validate_tool_result = _skip_validation  # type: ignore[method-assign]

        async def list_tools(
            ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            return types.ListToolsResult(tools=tools)

        async def call_tool(
            ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
        ) -> types.CallToolResult:
            return await downstream.call_tool(params.name, params.arguments or {})

        server: Server[Any] = Server("bare-proxy", on_list_tools=list_tools, on_call_tool=call_tool)
        transport = pipe_stdio_server() if pipes else stdio_server()
        async with transport as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())


async def _skip_validation(name: str, result: types.CallToolResult) -> None:
    return None


class _NoRecord:
    def set_result(self, result: Any) -> None:
        return None

    def set_outcome(self, *args: Any, **kwargs: Any) -> None:
        return None


@contextmanager
def _no_track(self: Any, *args: Any, **kwargs: Any) -> Iterator[_NoRecord]:
    yield _NoRecord()


async def _no_writer(self: Any) -> None:
    await anyio.sleep_forever()


def run_hub_without_audit() -> int:
    from mlhub_mcp.cli import main
    from mlhub_mcp.hub import _audit

    _audit.AuditLog.track = _no_track  # type: ignore[assignment]
    _audit.AuditLog.run = _no_writer  # type: ignore[assignment]
    return main(["hub"])


if __name__ == "__main__":
    variant, *rest = sys.argv[1:]
    if variant == "bare-proxy":
        anyio.run(run_bare_proxy, rest)
    elif variant == "bare-proxy-pipes":
        anyio.run(run_bare_proxy, rest, True)
    elif variant == "bare-proxy-unvalidated":
        anyio.run(run_bare_proxy, rest, False, False)
    elif variant == "bare-proxy-pipes-unvalidated":
        anyio.run(run_bare_proxy, rest, True, False)
    elif variant == "hub-without-audit":
        sys.exit(run_hub_without_audit())
    else:
        known = (
            "bare-proxy, bare-proxy-pipes, bare-proxy-unvalidated, "
            "bare-proxy-pipes-unvalidated, hub-without-audit"
        )
        sys.exit(f"unknown variant {variant!r}; use one of {known}")
