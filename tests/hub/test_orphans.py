"""Servers started by the hub exit when the hub is killed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.hub.conftest import ECHO_SERVER, children_of, marks, pid_alive

needs_proc = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads process parents from /proc"
)

CONFIG = """
[servers.model]
start_timeout_seconds = 60

[servers.data]
enabled = false

[servers.execution]
enabled = false

[servers.a]
prefix = "a_"
command = "{python}"
args = ["{echo}", "stdio"]
env = {{ ECHO_DIR = "{echo_dir}", ECHO_LINGER = "1" }}
"""


def _wait_for(condition, seconds: float, description: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {description}")
        time.sleep(0.05)


@needs_proc
def test_sigkill_of_the_hub_leaves_no_server(tmp_path: Path, echo_dir: Path) -> None:
    config = tmp_path / "hub_config.toml"
    config.write_text(CONFIG.format(python=sys.executable, echo=ECHO_SERVER, echo_dir=echo_dir))
    env = {
        **os.environ,
        "MLHUB_CONFIG": str(config),
        "MLHUB_HOME": str(tmp_path / "home"),
        "MLHUB_LOG_LEVEL": "WARNING",
    }
    hub = subprocess.Popen(
        [sys.executable, "-m", "mlhub_mcp", "hub"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=tmp_path,
    )
    children: list[int] = []
    try:
        _wait_for(lambda: len(children_of(hub.pid)) == 2, 60, "the hub to start two servers")
        _wait_for(lambda: marks(echo_dir, "start"), 30, "the echo server to start")
        children = children_of(hub.pid)

        hub.send_signal(signal.SIGKILL)
        hub.wait(timeout=10)
        _wait_for(lambda: not any(pid_alive(pid) for pid in children), 15, "the servers to exit")
    finally:
        if hub.poll() is None:
            hub.kill()
        for pid in children:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)

    assert len(children) == 2
    assert not [pid for pid in children if pid_alive(pid)]
