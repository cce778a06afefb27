"""Latency that the hub adds to a tool call, over stdio and streamable HTTP.

Usage: python benchmarks/bench_hub.py [--quick] [--rounds N] [--calls N]
       [--modes legacy,auto] [--fastmcp-python PATH] [--no-profile]

Every path calls ``list_models`` with ``limit=1`` on an empty catalog: a
tool of the model server that does one indexed SQLite query, so the figures
are dominated by the protocol path. The paths, all open at once:

- stdio direct: this process -> ``mlhub serve model`` over stdio;
- stdio hub: this process -> ``mlhub hub`` over stdio -> model server over stdio;
- stdio hub without audit: the same, with the audit trail made a no-op in
  the hub process (see _hub_variants.py);
- stdio bare SDK proxy: the smallest forwarding proxy the SDK allows, in
  front of the model server (see _hub_variants.py), as the floor for a
  proxy built on the SDK's stdio transport;
- stdio bare proxy, asyncio pipes: that proxy with its stdio served by
  asyncio pipe transports instead of worker threads (see _hub_variants.py);
- stdio bare proxy, no output check: that proxy without the SDK client's
  jsonschema check of each result (see _hub_variants.py);
- stdio bare proxy, pipes, no output check: both changes together;
- http direct: this process -> ``mlhub serve model --transport http``;
- http hub: this process -> ``mlhub hub --transport http`` -> model server over stdio;
- http hub, http server: the same hub, configured to reach the HTTP model
  server above over streamable HTTP;
- stdio fastmcp: this process -> a fastmcp proxy over stdio -> model server
  over stdio, when ``--fastmcp-python`` names a Python with fastmcp
  (default /tmp/fmcp-venv/bin/python; skipped when missing).

Each client runs in the ``legacy`` era (initialize handshake) and in the
``auto`` era (the SDK probes and picks 2026-07-28). The hub itself talks to
its servers in the legacy era. After warm-up, the paths take turns in rounds
of ``--calls`` sequential calls, so a burst of load from other processes
hits every path alike. The CPU time each routing process and server used
per call comes from /proc/PID/stat (all threads; 10 ms clock ticks, so
only the mean over many calls is meaningful).

Unless ``--no-profile`` is given, one more stdio hub runs under cProfile,
switched on only around the same number of calls, and the hub's
main-thread time per call is broken down by package.

Then 50 models are added to the catalog and some paths are timed again
with ``limit=50`` (about 48 kB of JSON per result), to show how the cost of
each hop grows with the size of the result. The script prints figures only.
"""

import argparse
import os
import pstats
import signal
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from _common import (
    REPO,
    child_pids,
    free_port,
    mlhub_command,
    mlhub_environment,
    print_header,
    print_table,
    start_process,
    stop_process,
    summarize_ms,
    wait_for_port,
    wait_for_tool,
)
from bench_catalog import fill_embedded, model_documents
from mcp import Client, StdioServerParameters

TOOL = "list_models"
ARGUMENTS = {"limit": 1}
TARGET_OVERHEAD_MS = 0.8
LARGE_PAGE = 50
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
FASTMCP_PYTHON = "/tmp/fmcp-venv/bin/python"

# Runs the hub under cProfile. SIGUSR1 starts the profiler, and SIGUSR2
# stops it and writes the statistics to the file named by the first argument.
PROFILED_HUB = """
import cProfile, signal, sys
from mlhub_mcp.cli import main
output = sys.argv[1]
sys.argv = ["mlhub", "hub"]
profiler = cProfile.Profile()
def start(*_): profiler.enable()
def stop(*_):
    profiler.disable()
    profiler.dump_stats(output)
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
sys.exit(main())
"""


@dataclass
class CallPath:
    """One open client session and the processes that serve its calls."""

    label: str
    mode: str
    client: Client
    router_pid: int | None = None
    server_pid: int | None = None
    durations: list[float] = field(default_factory=list)
    router_ticks: int = 0
    server_ticks: int = 0

    @property
    def transport(self) -> str:
        return self.label.split()[0]


def cpu_ticks(pid: int | None) -> int:
    """Return the user plus system clock ticks ``pid`` has used, all threads included."""
    if pid is None:
        return 0

    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def pid_running(parent: int, *words: str) -> int | None:
    """Return a child of ``parent`` whose command line contains every word, if any."""
    for pid in child_pids(parent):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if all(word in command for word in words):
            return pid

    return None


async def call_once(client: Client, arguments: dict[str, Any] = ARGUMENTS) -> None:
    result = await client.call_tool(TOOL, arguments)
    if result.is_error:
        text = " ".join(getattr(c, "text", "") for c in result.content)
        raise RuntimeError(f"{TOOL} failed: {text}")


class Harness:
    """Servers, hubs and one open client per path and era, closed with ``stack``."""

    def __init__(self, stack: AsyncExitStack, folder: Path, fastmcp_python: str | None) -> None:
        self.stack = stack
        self.folder = folder
        self.fastmcp_python = fastmcp_python
        imports = folder / "imports"
        imports.mkdir()
        self.env = mlhub_environment(folder / "home", imports)
        self.paths: list[CallPath] = []
        self.notes: list[str] = []

    def stdio_params(self, command: list[str]) -> StdioServerParameters:
        # fastmcp logs a banner line at INFO on start; WARNING keeps the output to figures.
        env = {**self.env, "FASTMCP_LOG_LEVEL": "WARNING"}
        return StdioServerParameters(
            command=command[0], args=command[1:], env=env, cwd=str(self.folder)
        )

    async def open_stdio(self, label: str, mode: str, command: list[str]) -> CallPath:
        before = set(child_pids())
        client = Client(self.stdio_params(command), mode=mode, read_timeout_seconds=120)
        await self.stack.enter_async_context(client)
        new = [pid for pid in child_pids() if pid not in before]
        process = new[0] if new else None
        path = CallPath(label, mode, client)
        if label.endswith("direct"):
            path.server_pid = process
        elif process is not None:
            path.router_pid = process
            path.server_pid = pid_running(process, "serve", "model")
        return path

    async def open_http(
        self, label: str, mode: str, port: int, router: int | None, server: int | None
    ) -> CallPath:
        client = Client(f"http://127.0.0.1:{port}/mcp", mode=mode, read_timeout_seconds=120)
        await self.stack.enter_async_context(client)
        return CallPath(label, mode, client, router, server)

    def start_http(self, name: str, command: list[str]) -> tuple[int, int]:
        """Start an HTTP server or hub, and return its port and process id."""
        port = free_port()
        log = (self.folder / f"{name}.log").open("wb")
        self.stack.callback(log.close)
        process = start_process([*command, "--port", str(port)], self.env, log)
        self.stack.callback(stop_process, process)
        wait_for_port(port, process, timeout=120)
        return port, process.pid

    def write_http_hub_config(self, server_port: int) -> Path:
        config = self.folder / "hub_http_server.toml"
        config.write_text(
            "[servers.model]\n"
            'transport = "http"\n'
            f'url = "http://127.0.0.1:{server_port}/mcp"\n'
            "[servers.data]\nenabled = false\n"
            "[servers.execution]\nenabled = false\n"
        )
        return config

    async def open_all(self, modes: list[str]) -> None:
        server_port, server_pid = self.start_http(
            "model-http", mlhub_command("serve", "model", "--transport", "http")
        )
        hub_port, hub_pid = self.start_http("hub-http", mlhub_command("hub", "--transport", "http"))
        config = self.write_http_hub_config(server_port)
        hub2_command = mlhub_command("--config", str(config), "hub", "--transport", "http")
        hub2_port, hub2_pid = self.start_http("hub-http-http", hub2_command)
        await wait_for_tool(f"http://127.0.0.1:{hub_port}/mcp", TOOL)
        await wait_for_tool(f"http://127.0.0.1:{hub2_port}/mcp", TOOL)
        hub_server = pid_running(hub_pid, "serve", "model")

        fastmcp = self.fastmcp_command()
        variants = [sys.executable, str(REPO / "benchmarks" / "_hub_variants.py")]
        bare = [*variants, "bare-proxy", *mlhub_command("serve", "model")]
        pipes = [*variants, "bare-proxy-pipes", *mlhub_command("serve", "model")]
        unvalidated = [*variants, "bare-proxy-unvalidated", *mlhub_command("serve", "model")]
        both = [*variants, "bare-proxy-pipes-unvalidated", *mlhub_command("serve", "model")]
        no_audit = [*variants, "hub-without-audit"]
        for mode in modes:
            direct = mlhub_command("serve", "model")
            self.paths.append(await self.open_stdio("stdio direct", mode, direct))
            self.paths.append(await self.open_stdio("stdio hub", mode, mlhub_command("hub")))
            self.paths.append(await self.open_stdio("stdio hub without audit", mode, no_audit))
            self.paths.append(await self.open_stdio("stdio bare SDK proxy", mode, bare))
            self.paths.append(await self.open_stdio("stdio bare proxy, asyncio pipes", mode, pipes))
            self.paths.append(
                await self.open_stdio("stdio bare proxy, no output check", mode, unvalidated)
            )
            self.paths.append(
                await self.open_stdio("stdio bare proxy, pipes, no output check", mode, both)
            )
            if fastmcp is not None:
                self.paths.append(await self.open_stdio("stdio fastmcp proxy", mode, fastmcp))
            self.paths.append(
                await self.open_http("http direct", mode, server_port, None, server_pid)
            )
            self.paths.append(await self.open_http("http hub", mode, hub_port, hub_pid, hub_server))
            self.paths.append(
                await self.open_http("http hub, http server", mode, hub2_port, hub2_pid, server_pid)
            )

    def fastmcp_command(self) -> list[str] | None:
        if not self.fastmcp_python or not Path(self.fastmcp_python).exists():
            self.notes.append(
                f"fastmcp proxy skipped: no Python with fastmcp at {self.fastmcp_python}"
            )
            return None

        script = REPO / "benchmarks" / "_fastmcp_proxy.py"
        return [self.fastmcp_python, str(script), *mlhub_command("serve", "model")]


async def measure(
    paths: list[CallPath],
    rounds: int,
    calls: int,
    warmup: int,
    arguments: dict[str, Any] = ARGUMENTS,
) -> None:
    for path in paths:
        for _ in range(warmup):
            await call_once(path.client, arguments)

    for _ in range(rounds):
        for path in paths:
            router, server = cpu_ticks(path.router_pid), cpu_ticks(path.server_pid)
            for _ in range(calls):
                started = time.perf_counter()
                await call_once(path.client, arguments)
                path.durations.append(time.perf_counter() - started)
            path.router_ticks += cpu_ticks(path.router_pid) - router
            path.server_ticks += cpu_ticks(path.server_pid) - server


def report(paths: list[CallPath], rounds: int, calls: int) -> None:
    direct = {(p.transport, p.mode): p for p in paths if p.label in ("stdio direct", "http direct")}
    rows = []
    for path in paths:
        stats = summarize_ms(path.durations)
        baseline = direct[(path.transport, path.mode)]
        added = added_ms(path, baseline, rounds, calls)
        count = len(path.durations)
        router_cpu = path.router_ticks / CLOCK_TICKS * 1000 / count if path.router_pid else None
        server_cpu = path.server_ticks / CLOCK_TICKS * 1000 / count if path.server_pid else None
        rows.append(
            [
                path.label,
                path.mode,
                stats["p50"],
                stats["p95"],
                stats["mean"],
                "" if path is baseline else added,
                "" if path is baseline else stats["p50"] / summarize_ms(baseline.durations)["p50"],
                "" if router_cpu is None else router_cpu,
                "" if server_cpu is None else server_cpu,
            ]
        )

    headers = [
        "path",
        "client era",
        "p50 ms",
        "p95 ms",
        "mean ms",
        "added p50 ms",
        "p50 / direct",
        "router CPU ms/call",
        "server CPU ms/call",
    ]
    print_table(headers, rows)
    print(
        "added p50 ms: median over rounds of (p50 of the path - p50 of the direct path of the "
        f"same transport and era) in that round; target for the stdio hub: at most "
        f"{TARGET_OVERHEAD_MS} ms"
    )
    print()


def added_ms(path: CallPath, baseline: CallPath, rounds: int, calls: int) -> float:
    differences = []
    for index in range(rounds):
        window = slice(index * calls, (index + 1) * calls)
        own = statistics.median(path.durations[window])
        base = statistics.median(baseline.durations[window])
        differences.append((own - base) * 1000)

    return statistics.median(differences)


LARGE_RESULT_PATHS = (
    "stdio direct",
    "stdio hub",
    "stdio hub without audit",
    "stdio bare SDK proxy",
    "stdio bare proxy, asyncio pipes",
    "stdio bare proxy, no output check",
    "stdio bare proxy, pipes, no output check",
    "http direct",
    "http hub",
)


async def measure_large_results(harness: "Harness", rounds: int, calls: int) -> None:
    """Time ``list_models`` returning 50 models (about 48 kB of JSON) on some paths."""
    home = harness.folder / "home"
    fill_embedded(home / "catalog.sqlite3", list(model_documents(LARGE_PAGE)))
    paths = [
        CallPath(p.label, p.mode, p.client, p.router_pid, p.server_pid)
        for p in harness.paths
        if p.mode == "legacy" and p.label in LARGE_RESULT_PATHS
    ]
    if not paths:
        return

    rounds, calls = max(2, rounds // 2), max(10, calls // 2)
    arguments = {"limit": LARGE_PAGE}
    await measure(paths, rounds, calls, warmup=10, arguments=arguments)
    print(f"{TOOL} with limit={LARGE_PAGE} on a catalog of {LARGE_PAGE} models (legacy era):")
    report(paths, rounds, calls)


async def profile_hub(folder: Path, env: dict[str, str], calls: int) -> None:
    """Run a stdio hub under cProfile and break its main-thread time per call down."""
    output = folder / "hub.prof"
    command = [sys.executable, "-c", PROFILED_HUB, str(output)]
    params = StdioServerParameters(command=command[0], args=command[1:], env=env, cwd=str(folder))
    before = set(child_pids())
    async with Client(params, mode="legacy", read_timeout_seconds=120) as client:
        hub_pid = next(pid for pid in child_pids() if pid not in before)
        for _ in range(50):
            await call_once(client)
        ticks = cpu_ticks(hub_pid)
        os.kill(hub_pid, signal.SIGUSR1)
        started = time.perf_counter()
        for _ in range(calls):
            await call_once(client)
        elapsed = time.perf_counter() - started
        os.kill(hub_pid, signal.SIGUSR2)
        cpu = (cpu_ticks(hub_pid) - ticks) / CLOCK_TICKS
        with anyio.fail_after(30):
            # The signal handler writes the file, so there is no event to wait on.
            while not output.exists():  # noqa: ASYNC110
                await anyio.sleep(0.1)
        await anyio.sleep(0.5)

    print_profile(pstats.Stats(str(output)), calls, elapsed, cpu)


CATEGORIES = (
    ("mlhub_mcp/hub/_audit", "hub audit trail (mlhub_mcp.hub._audit)"),
    ("jsonschema", "jsonschema (the SDK client's output-schema check)"),
    ("referencing", "jsonschema (the SDK client's output-schema check)"),
    ("mlhub_mcp", "hub routing (other mlhub_mcp code)"),
    ("pydantic", "pydantic validation and serialization"),
    ("mcp_types", "MCP SDK (sessions, dispatch, types)"),
    ("/mcp/", "MCP SDK (sessions, dispatch, types)"),
    ("anyio", "anyio (memory streams, tasks, worker threads)"),
    ("asyncio", "asyncio event loop and transports"),
    ("opentelemetry", "OpenTelemetry hooks"),
    ("json", "json"),
    ("logging", "logging"),
    ("sqlite", "SQLite"),
)


def category(filename: str, function: str) -> str:
    if filename == "~":
        return f"C builtins: {function}" if "poll" in function else "C builtins (other)"
    for marker, label in CATEGORIES:
        if marker in filename:
            return label
    return "Python standard library (other)"


def print_profile(stats: pstats.Stats, calls: int, elapsed: float, cpu_seconds: float) -> None:
    totals: dict[str, float] = {}
    functions = []
    for (filename, line, function), entry in stats.stats.items():  # type: ignore[attr-defined]
        count, own = entry[1], entry[2]
        label = category(filename, function)
        totals[label] = totals.get(label, 0.0) + own
        name = f"{Path(filename).name}:{line}({function})"
        functions.append((own, name, label, count))

    idle = sum(v for k, v in totals.items() if k.startswith("C builtins: ") and "poll" in k)
    busy = sum(totals.values()) - idle
    print(f"cProfile of a stdio hub (legacy era), {calls} calls of {TOOL}:")
    print(f"  wall time per call seen by the client: {elapsed / calls * 1000:.2f} ms")
    print(f"  hub process CPU per call, all threads (/proc): {cpu_seconds / calls * 1000:.2f} ms")
    print(
        f"  hub main thread under the profiler per call: {busy / calls * 1000:.2f} ms busy, "
        f"{idle / calls * 1000:.2f} ms waiting in epoll"
    )
    print("  (cProfile slows Python code, so the shares matter more than the totals)")
    rows = [
        [label, seconds / calls * 1000, seconds / busy]
        for label, seconds in sorted(totals.items(), key=lambda item: -item[1])
        if "poll" not in label
    ]
    print_table(["hub main thread, by package", "ms/call", "share of busy"], rows)
    top = sorted(functions, reverse=True)
    rows = [
        [name, own / calls * 1000, count / calls, label]
        for own, name, label, count in top
        if "poll" not in name
    ]
    headers = ["function (own time)", "ms/call", "entries per tool call", "package"]
    print_table(headers, rows[:25])
    print("entries: cProfile counts each resumption of a coroutine as one entry")
    print()


async def main(
    rounds: int, calls: int, modes: list[str], fastmcp_python: str | None, profile: bool
) -> None:
    print_header(f"hub overhead: {TOOL}, {rounds} rounds x {calls} calls per path")
    with tempfile.TemporaryDirectory(prefix="mlhub-bench-hub-") as scratch:
        folder = Path(scratch)
        async with AsyncExitStack() as stack:
            harness = Harness(stack, folder, fastmcp_python)
            await harness.open_all(modes)
            await measure(harness.paths, rounds, calls, warmup=max(20, calls // 2))
            report(harness.paths, rounds, calls)
            for note in harness.notes:
                print(note)

            if profile:
                await profile_hub(folder, harness.env, calls * rounds)

            await measure_large_results(harness, rounds, calls)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 50 calls")
    parser.add_argument("--rounds", type=int, help="rounds (default 10)")
    parser.add_argument(
        "--calls", type=int, help="sequential calls per path and round (default 100)"
    )
    parser.add_argument("--modes", default="legacy,auto", help="client eras: legacy, auto")
    parser.add_argument(
        "--fastmcp-python",
        default=FASTMCP_PYTHON,
        help=f"Python of a venv with fastmcp (default {FASTMCP_PYTHON}); '' to skip",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    arguments = parser.parse_args()
    round_count = arguments.rounds or (3 if arguments.quick else 10)
    call_count = arguments.calls or (50 if arguments.quick else 100)
    chosen = [m for m in arguments.modes.split(",") if m]
    anyio.run(
        main, round_count, call_count, chosen, arguments.fastmcp_python, not arguments.no_profile
    )
