"""The `mlhub demo` main job."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_the_full_flow(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "mlhub_mcp", "demo", "--home", str(tmp_path / "home")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    accuracy = float(re.search(r"accuracy\s+([0-9.]+)", out).group(1))
    seconds = float(re.search(r"demo finished in ([0-9.]+) s", out).group(1))
    assert accuracy > 0.9
    assert seconds < 60
    assert "540/540 rows" in out
    predictions = re.search(r"predictions \(Parquet\): file://(\S+)", out).group(1)
    assert Path(predictions).is_file()


def test_demo_can_run_twice_on_one_directory(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "mlhub_mcp", "demo", "--home", str(tmp_path / "home")]
    for _ in range(2):
        completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert completed.returncode == 0, completed.stderr[-3000:]

    assert "version 2" in completed.stdout
