"""Helpers shared by the benchmark scripts: machine facts, timing, processes.

Every script prints figures and asserts nothing. The machines these run on
are shared and noisy, so scripts interleave the variants they compare and
report ratios within one run rather than absolute numbers across runs.
"""

import datetime
import importlib.metadata
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent

PACKAGES = (
    "mcp",
    "anyio",
    "pydantic",
    "uvicorn",
    "starlette",
    "numpy",
    "pyarrow",
    "onnxruntime",
    "scikit-learn",
    "skl2onnx",
    "pymongo",
    "nx-27017",
)


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass

    return platform.processor() or "unknown"


def memory_total_gib() -> float | None:
    """Return the machine's RAM in GiB from /proc/meminfo."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass

    return None


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"

    return versions


def source_revision() -> str:
    """Return the commit of the repository and how many files under src/ differ from it."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"

    return f"{commit}, {len(changed)} files under src/ changed or untracked"


def machine_lines() -> list[str]:
    """Describe the date, machine and software of this run, one fact per line."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    ram = memory_total_gib()
    ram_text = f"{ram:.1f} GiB" if ram is not None else "unknown"
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    versions = ", ".join(f"{k} {v}" for k, v in package_versions().items())
    return [
        f"date: {now}",
        f"cpu: {os.cpu_count()} x {cpu_model()}",
        f"ram: {ram_text}; load average at start: {load}",
        f"python: {platform.python_implementation()} {platform.python_version()} "
        f"on {platform.system()} {platform.release()}",
        f"packages: {versions}",
        f"source: {source_revision()}",
    ]


def print_header(title: str) -> None:
    print(f"== {title}")
    for line in machine_lines():
        print(f"   {line}")
    print(flush=True)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the ``fraction`` quantile (0..1) of ``values``, interpolating linearly."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")

    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Return p50, p95 and mean of durations given in seconds, in milliseconds."""
    millis = [s * 1000 for s in seconds]
    return {
        "p50": percentile(millis, 0.5),
        "p95": percentile(millis, 0.95),
        "mean": statistics.fmean(millis) if millis else float("nan"),
    }


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print rows as a Markdown table, so the output can be pasted into the docs."""
    cells = [[_cell(value) for value in row] for row in rows]
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in cells:
        print("| " + " | ".join(row) + " |")
    print(flush=True)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:
            return "n/a"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that is free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> float:
    """Wait until 127.0.0.1:``port`` accepts connections, and return the seconds waited.

    Raises:
        RuntimeError: The process exited first, or the port stayed closed for ``timeout``.
    """
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.pid} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return time.perf_counter() - started
        except OSError:
            time.sleep(0.05)

    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} after {timeout:g} s")


def start_process(
    args: Sequence[str], env: dict[str, str], log: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``args`` in its own process group, with stdout and stderr to ``log``."""
    target = log if log is not None else subprocess.DEVNULL
    return subprocess.Popen(
        list(args),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=target,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop a process this benchmark started, and its group, by process id."""
    if process.poll() is not None:
        return

    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return

    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def child_pids(parent: int | None = None) -> list[int]:
    """Return the ids of the direct children of ``parent`` (default: this process)."""
    parent = parent or os.getpid()
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in brackets may contain spaces, so split after it.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent:
            children.append(int(entry.name))

    return children


def process_memory_mib(pid: int) -> tuple[float, float]:
    """Return the current and the peak resident set size of ``pid``, in MiB.

    The peak is the kernel's high-water mark (VmHWM), so it covers the whole
    life of the process, including moments between two polls.
    """
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024

    return values["VmRSS"], values["VmHWM"]


def mlhub_environment(home: Path, import_dir: Path, **extra: str) -> dict[str, str]:
    """Return an environment that points mlhub processes at ``home`` and ``import_dir``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("MLHUB_") and key != "PYTHONSTARTUP"
    }
    env.update(
        MLHUB_HOME=str(home),
        MLHUB_IMPORT_DIRS=str(import_dir),
        MLHUB_LOG_LEVEL="WARNING",
        **extra,
    )
    return env


def mlhub_command(*args: str) -> list[str]:
    """Return the command line that runs ``mlhub ARGS`` with this interpreter."""
    return [sys.executable, "-m", "mlhub_mcp", *args]


async def wait_for_tool(url: str, tool: str, seconds: float = 120.0) -> None:
    """Wait until the MCP server at ``url`` lists ``tool``, polling every 0.2 s.

    Raises:
        TimeoutError: The tool was not listed within ``seconds``.
    """
    import anyio
    from mcp import Client

    with anyio.fail_after(seconds):
        async with Client(url, mode="legacy") as client:
            while True:
                names = {t.name for t in (await client.list_tools()).tools}
                if tool in names:
                    return
                await anyio.sleep(0.2)
