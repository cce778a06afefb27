"""Time until the hub, started cold over stdio, returns its tools/list result.

Usage: python benchmarks/bench_startup.py [--quick] [--runs N]

Each run starts fresh processes on a new, empty MLHUB_HOME and times, from
just before the process is spawned:

- ``python -c pass``: the interpreter alone;
- ``import mlhub_mcp.hub.server``: the interpreter and the hub's imports;
- ``serve model``, ``serve data``, ``serve execution``: one server over
  stdio, until its tools/list result arrives (the client's legacy
  handshake is included);
- hub: ``mlhub hub`` over stdio with its three stdio servers, until the
  first tools/list result, and until tools/list contains every tool of the
  three servers (polled every 50 ms).

The variants take turns within each run, and the medians over the runs are
reported. One discarded run comes first, so the bytecode caches and the
operating system's file cache are in the same state for every timed run:
"cold" means new processes and an empty data directory, not an empty page
cache. The script prints figures only.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from _common import mlhub_environment, print_header, print_table
from mcp import Client, StdioServerParameters

SERVERS = ("model", "data", "execution")
POLL_SECONDS = 0.05


def time_command(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, env=env, check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - started


def stdio_params(args: list[str], env: dict[str, str], cwd: Path) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=args, env=env, cwd=str(cwd))


async def time_server(name: str, env: dict[str, str], cwd: Path) -> tuple[float, set[str]]:
    """Return the seconds until a lone server returns tools/list, and its tool names."""
    params = stdio_params(["-m", "mlhub_mcp", "serve", name], env, cwd)
    started = time.perf_counter()
    async with Client(params, mode="legacy", read_timeout_seconds=120) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        return time.perf_counter() - started, tools


async def time_hub(env: dict[str, str], cwd: Path, expected: set[str]) -> tuple[float, float]:
    """Return the seconds until the hub's first tools/list result and until it is complete."""
    params = stdio_params(["-m", "mlhub_mcp", "hub"], env, cwd)
    started = time.perf_counter()
    async with Client(params, mode="legacy", read_timeout_seconds=120) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        first = time.perf_counter() - started
        with anyio.fail_after(120):
            # The hub may reply before every server is ready and announce the
            # new tools later. Polling needs no notification handler.
            while not expected <= tools:
                await anyio.sleep(POLL_SECONDS)
                tools = {tool.name for tool in (await client.list_tools()).tools}

        return first, time.perf_counter() - started


async def one_run(folder: Path) -> dict[str, float]:
    imports = folder / "imports"
    imports.mkdir(parents=True)
    env = mlhub_environment(folder / "home", imports)
    times: dict[str, float] = {
        "python -c pass": time_command([sys.executable, "-c", "pass"], env),
        "import mlhub_mcp.hub.server": time_command(
            [sys.executable, "-c", "import mlhub_mcp.hub.server"], env
        ),
    }

    expected: set[str] = set()
    for name in SERVERS:
        seconds, tools = await time_server(name, env, folder)
        times[f"serve {name}: tools/list"] = seconds
        expected |= tools

    first, complete = await time_hub(env, folder, expected)
    times["hub: first tools/list"] = first
    times["hub: tools/list with all three servers"] = complete

    return times


async def main(runs: int) -> None:
    print_header(f"start-up: {runs} cold runs")
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="mlhub-bench-startup-") as scratch:
        await one_run(Path(scratch) / "warm-up")
        for index in range(runs):
            times = await one_run(Path(scratch) / f"run-{index}")
            for label, seconds in times.items():
                results.setdefault(label, []).append(seconds)

    rows = [
        [label, statistics.median(values), min(values), max(values)]
        for label, values in results.items()
    ]
    print_table(["what", "median s", "min s", "max s"], rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 runs")
    parser.add_argument("--runs", type=int, help="cold runs (default 5)")
    arguments = parser.parse_args()
    anyio.run(main, arguments.runs or (2 if arguments.quick else 5))
