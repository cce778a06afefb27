"""Argument parsing of the ``mlhub`` command."""

import subprocess
import sys
from pathlib import Path

import pytest

from mlhub_mcp.cli import _parser, main


def test_missing_config_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLHUB_CONFIG", raising=False)

    with pytest.raises(SystemExit) as exit_info:
        main(["--config", "missing.toml", "doctor"])

    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "configuration file 'missing.toml' does not exist" in error
    assert "MLHUB_CONFIG" not in error


def test_config_directory_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(tmp_path), "doctor"])

    assert exit_info.value.code == 2
    assert f"configuration file {str(tmp_path)!r} is not a file" in capsys.readouterr().err


def test_unknown_log_level_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--log-level", "LOUD", "doctor"])

    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "invalid log level 'LOUD'" in error
    assert "DEBUG, INFO, WARNING, ERROR" in error


def test_unknown_log_level_from_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLHUB_LOG_LEVEL", "chatty")

    with pytest.raises(SystemExit) as exit_info:
        main(["doctor"])

    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "invalid log level 'chatty'" in error
    assert "$MLHUB_LOG_LEVEL" in error


@pytest.mark.parametrize(("given", "level"), [("debug", "DEBUG"), ("Warning", "WARNING")])
def test_log_level_ignores_case(given: str, level: str) -> None:
    args = _parser().parse_args(["--log-level", given, "doctor"])

    assert args.log_level == level


def test_bad_log_level_prints_no_traceback(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "mlhub_mcp", "--log-level", "LOUD", "doctor"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert "invalid log level 'LOUD'" in completed.stderr
