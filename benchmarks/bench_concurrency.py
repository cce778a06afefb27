"""Calls per second with many concurrent clients, through the hub over HTTP.

Usage: python benchmarks/bench_concurrency.py [--quick] [--clients N]
       [--seconds S] [--rounds N]

The script starts, on free ports of 127.0.0.1, the model server over
streamable HTTP (``mlhub serve model --transport http``) and the hub over
streamable HTTP (``mlhub hub --transport http``, which starts its three
servers over stdio). It then opens N clients (default 32) on each target,
each an ``mcp.Client`` session of its own in the legacy era, and for S
seconds every client calls ``list_models`` with ``limit=1`` in a loop, one
call after another. The two targets take turns for ``--rounds`` rounds.
One client per target is also timed the same way, as the baseline.

A call counts as an error when it raises or returns ``is_error``; errors
are counted by kind. The clients all run in this one process and event
loop, on the same machine as the servers. On a machine with few cores the
client side therefore competes with the servers for CPU, and the ratio
between the targets is the figure to read. The script prints figures only.
"""

import argparse
import statistics
import tempfile
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from _common import (
    free_port,
    mlhub_command,
    mlhub_environment,
    percentile,
    print_header,
    print_table,
    start_process,
    stop_process,
    wait_for_port,
    wait_for_tool,
)
from mcp import Client

TOOL = "list_models"
ARGUMENTS = {"limit": 1}


@dataclass
class Load:
    """Outcome of one timed load on one target."""

    calls: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    durations: list[float] = field(default_factory=list)
    seconds: float = 0.0


async def client_loop(client: Client, deadline: float, load: Load) -> None:
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            result = await client.call_tool(TOOL, ARGUMENTS)
        except Exception as exc:
            load.errors[type(exc).__name__] += 1
            continue

        if result.is_error:
            load.errors["is_error result"] += 1
            continue

        load.durations.append(time.perf_counter() - started)
        load.calls += 1


async def run_load(clients: list[Client], seconds: float) -> Load:
    load = Load()
    started = time.perf_counter()
    deadline = started + seconds
    async with anyio.create_task_group() as group:
        for client in clients:
            group.start_soon(client_loop, client, deadline, load)
    load.seconds = time.perf_counter() - started
    return load


async def open_clients(stack: AsyncExitStack, port: int, count: int) -> list[Client]:
    clients = []
    for _ in range(count):
        client = Client(f"http://127.0.0.1:{port}/mcp", mode="legacy", read_timeout_seconds=120)
        clients.append(await stack.enter_async_context(client))
        await client.call_tool(TOOL, ARGUMENTS)

    return clients


def start(
    stack: AsyncExitStack, folder: Path, env: dict[str, str], name: str, args: list[str]
) -> int:
    port = free_port()
    log = (folder / f"{name}.log").open("wb")
    stack.callback(log.close)
    process = start_process([*mlhub_command(*args), "--port", str(port)], env, log)
    stack.callback(stop_process, process)
    wait_for_port(port, process, timeout=120)
    return port


async def main(clients: int, seconds: float, rounds: int) -> None:
    print_header(f"concurrency: {clients} clients, {rounds} rounds of {seconds:g} s per target")
    loads: dict[tuple[str, int], list[Load]] = {}
    with tempfile.TemporaryDirectory(prefix="mlhub-bench-concurrency-") as scratch:
        folder = Path(scratch)
        (folder / "imports").mkdir()
        env = mlhub_environment(folder / "home", folder / "imports")
        async with AsyncExitStack() as stack:
            server_port = start(
                stack, folder, env, "server", ["serve", "model", "--transport", "http"]
            )
            hub_port = start(stack, folder, env, "hub", ["hub", "--transport", "http"])
            await wait_for_tool(f"http://127.0.0.1:{hub_port}/mcp", TOOL)
            targets = {
                "server direct": await open_clients(stack, server_port, clients),
                "through the hub": await open_clients(stack, hub_port, clients),
            }
            for _ in range(rounds):
                for label, pool in targets.items():
                    for count in (1, clients):
                        load = await run_load(pool[:count], seconds)
                        loads.setdefault((label, count), []).append(load)

    rows = []
    direct_rate: dict[int, float] = {}
    for (label, count), runs in loads.items():
        rates = [run.calls / run.seconds for run in runs]
        rate = statistics.median(rates)
        if label == "server direct":
            direct_rate[count] = rate
        durations = [d for run in runs for d in run.durations]
        errors: Counter[str] = Counter()
        for run in runs:
            errors.update(run.errors)
        rows.append(
            [
                label,
                count,
                rate,
                rate / direct_rate[count] if label != "server direct" else "",
                percentile(durations, 0.5) * 1000,
                percentile(durations, 0.95) * 1000,
                sum(run.calls for run in runs),
                ", ".join(f"{k}: {v}" for k, v in errors.items()) or "0",
            ]
        )

    headers = [
        "target",
        "clients",
        "calls/s (median of rounds)",
        "of direct",
        "p50 ms",
        "p95 ms",
        "calls",
        "errors",
    ]
    print_table(headers, rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per load, 2 rounds")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--seconds", type=float, help="seconds per load (default 10)")
    parser.add_argument("--rounds", type=int, help="rounds per target (default 3)")
    arguments = parser.parse_args()
    duration = arguments.seconds or (3.0 if arguments.quick else 10.0)
    round_count = arguments.rounds or (2 if arguments.quick else 3)
    anyio.run(main, arguments.clients, duration, round_count)
