"""Run every benchmark script, one after another, and print their figures.

Usage: python benchmarks/run_all.py [--quick] [--only NAME,...] [--skip NAME,...]

Names: hub, execution, memory, catalog, concurrency, startup, engines.
``--quick`` passes ``--quick`` to each script (``--rows 100000`` to
bench_engines.py, which has no such flag) for a run of a few minutes in
all. The scripts run one at a time, so they do not load the machine for
each other. The exit status is 1 when a script failed.
"""

import argparse
import subprocess
import sys
import time

from _common import REPO, print_header

SCRIPTS = {
    "hub": "bench_hub.py",
    "execution": "bench_execution.py",
    "memory": "bench_memory.py",
    "catalog": "bench_catalog.py",
    "concurrency": "bench_concurrency.py",
    "startup": "bench_startup.py",
    "engines": "bench_engines.py",
}


def script_args(name: str, quick: bool) -> list[str]:
    if not quick:
        return []
    if name == "engines":
        return ["--rows", "100000"]
    return ["--quick"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for every script")
    parser.add_argument("--only", default="", help=f"comma-separated among {', '.join(SCRIPTS)}")
    parser.add_argument("--skip", default="", help="comma-separated names to leave out")
    arguments = parser.parse_args()

    chosen = [n for n in arguments.only.split(",") if n] or list(SCRIPTS)
    skipped = {n for n in arguments.skip.split(",") if n}
    unknown = (set(chosen) | skipped) - set(SCRIPTS)
    if unknown:
        parser.error(f"unknown benchmark names {sorted(unknown)}; use {', '.join(SCRIPTS)}")

    print_header("mlhub-mcp benchmarks")
    failed = []
    for name in chosen:
        if name in skipped:
            continue
        command = [sys.executable, str(REPO / "benchmarks" / SCRIPTS[name])]
        command += script_args(name, arguments.quick)
        print(f"\n### {name}: {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        returncode = subprocess.run(command, cwd=REPO, check=False).returncode
        elapsed = time.perf_counter() - started
        print(f"### {name}: exit status {returncode} after {elapsed:.0f} s", flush=True)
        if returncode != 0:
            failed.append(name)

    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        return 1

    return 0


if __name__ == "__main__":
    sys.exit(main())
