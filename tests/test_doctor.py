"""``mlhub doctor`` checks: what passes, what fails, and the fix each failure names."""

import socket
from pathlib import Path

import pytest

from mlhub_mcp.config import Settings
from mlhub_mcp.doctor import (
    FAIL,
    OK,
    SKIP,
    WARN,
    Check,
    format_table,
    parse_java_version,
    run_doctor,
)

pytestmark = pytest.mark.anyio

GROQ_KEY = "gsk_test_key_never_printed"


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GROQ_API_KEY", "MLHUB_SPARK_MASTER", "MONGO_INITDB_ROOT_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


async def test_embedded_backends_pass(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, import_dirs=[tmp_path])

    checks, ok = await run_doctor(settings)

    named = by_name(checks)
    assert ok is True
    assert named["catalog (embedded)"].status == OK
    assert "SQLite" in named["catalog (embedded)"].detail
    assert named["artifact store (local)"].status == OK
    assert named["Groq API key"].status == WARN


async def test_mongodb_on_closed_port_fails_with_fix(tmp_path: Path) -> None:
    port = closed_port()
    settings = Settings(
        home=tmp_path,
        import_dirs=[tmp_path],
        catalog_backend="mongodb",
        mongodb_uri=f"mongodb://admin:hunter2@127.0.0.1:{port}",
    )

    checks, ok = await run_doctor(settings, timeout_seconds=0.5)

    catalog = by_name(checks)["catalog (mongodb)"]
    assert ok is False
    assert catalog.status == FAIL
    assert f"127.0.0.1:{port}" in catalog.detail
    assert "MLHUB_MONGODB_URI" in catalog.fix
    assert "hunter2" not in format_table(checks)


async def test_s3_closed_port_skips_later_checks(tmp_path: Path) -> None:
    port = closed_port()
    settings = Settings(
        home=tmp_path,
        import_dirs=[tmp_path],
        artifact_backend="s3",
        s3_endpoint=f"127.0.0.1:{port}",
        s3_access_key="mlhub",
        s3_secret_key="hunter2",
    )

    checks, ok = await run_doctor(settings, timeout_seconds=0.5)

    named = by_name(checks)
    assert ok is False
    assert named["S3 endpoint"].status == FAIL
    assert "MLHUB_S3_ENDPOINT" in named["S3 endpoint"].fix
    assert named["S3 credentials"].status == SKIP
    assert named["S3 bucket"].status == SKIP
    assert "hunter2" not in format_table(checks)


async def test_groq_key_presence_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROQ_API_KEY", GROQ_KEY)

    checks, _ = await run_doctor(Settings(home=tmp_path, import_dirs=[tmp_path]))

    assert by_name(checks)["Groq API key"].status == OK
    assert GROQ_KEY not in format_table(checks)


async def test_missing_java_fails_when_spark_is_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLHUB_SPARK_MASTER", "spark://127.0.0.1:7077")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))

    checks, ok = await run_doctor(Settings(home=tmp_path, import_dirs=[tmp_path]))

    java = by_name(checks)["Java for Spark"]
    assert ok is False
    assert java.status == FAIL
    assert "Java 17" in java.fix


async def test_missing_java_warns_without_spark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))

    checks, _ = await run_doctor(Settings(home=tmp_path, import_dirs=[tmp_path]))

    assert by_name(checks)["Java for Spark"].status == WARN


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_292"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ("no version here", None),
    ],
)
def test_java_version_parsing(output: str, expected: int | None) -> None:
    assert parse_java_version(output) == expected


def test_table_puts_fix_under_failed_check() -> None:
    checks = [
        Check("catalog", OK, "fine", "unused fix"),
        Check("S3 endpoint", FAIL, "refused", "start MinIO"),
    ]

    lines = format_table(checks).splitlines()

    assert lines[0].split() == ["STATUS", "CHECK", "DETAIL"]
    assert lines[1].startswith("ok")
    assert "unused fix" not in lines[1]
    assert lines[2].startswith("FAIL")
    assert lines[3].strip() == "fix: start MinIO"


@pytest.mark.anyio
async def test_spark_master_on_closed_port_fails() -> None:
    from mlhub_mcp.doctor import check_spark_master

    port = closed_port()
    check = await check_spark_master(f"spark://127.0.0.1:{port}", 2.0)

    assert check.failed
    assert f"127.0.0.1:{port}" in check.detail
    assert "MLHUB_SPARK_MASTER" in check.fix


@pytest.mark.anyio
async def test_spark_local_mode_is_skipped() -> None:
    from mlhub_mcp.doctor import SKIP, check_spark_master

    check = await check_spark_master("local[2]", 2.0)

    assert check.status == SKIP
