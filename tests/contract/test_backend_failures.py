"""Unreachable or misconfigured backends fail with BackendUnavailable, never a secret."""

from collections.abc import Callable
from pathlib import Path

import pytest

from mlhub_mcp.artifacts.s3 import S3ArtifactStore
from mlhub_mcp.catalog.mongodb import MongoCatalog, client_options, describe_endpoint
from mlhub_mcp.config import Settings
from mlhub_mcp.errors import BackendUnavailable, ConfigurationError

pytestmark = pytest.mark.anyio

PASSWORD = "s3cr3t-Pa55"
ROOT_ENV = {"MONGO_INITDB_ROOT_USERNAME": "root", "MONGO_INITDB_ROOT_PASSWORD": PASSWORD}


async def test_mongodb_down_at_connect(closed_port: int) -> None:
    uri = f"mongodb://admin:{PASSWORD}@127.0.0.1:{closed_port}/mlhub"

    with pytest.raises(BackendUnavailable) as caught:
        await MongoCatalog.connect(uri, "mlhub", timeout_seconds=0.5)

    message = str(caught.value)
    assert f"127.0.0.1:{closed_port}" in message
    assert "cannot be reached" in message
    assert "MLHUB_MONGODB_URI" in message
    assert PASSWORD not in message
    assert "admin" not in message


async def test_mongodb_down_with_root_env_credentials(
    closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in ROOT_ENV.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(BackendUnavailable) as caught:
        await MongoCatalog.connect(
            f"mongodb://127.0.0.1:{closed_port}", "mlhub", timeout_seconds=0.5
        )

    assert f"127.0.0.1:{closed_port}" in str(caught.value)
    assert PASSWORD not in str(caught.value)


async def test_mongodb_down_during_operation(
    private_mongodb: tuple[str, Callable[[], None]],
) -> None:
    uri, stop = private_mongodb
    catalog = await MongoCatalog.connect(uri, "mlhub_down", timeout_seconds=0.5)
    await catalog.insert("datasets", {"id": "d1", "name": "digits"})

    stop()
    try:
        with pytest.raises(BackendUnavailable) as caught:
            await catalog.get("datasets", "d1")
    finally:
        await catalog.aclose()

    assert uri.removeprefix("mongodb://") in str(caught.value)


async def test_invalid_mongodb_uri_is_configuration_error() -> None:
    uri = f"mongodb://admin:{PASSWORD}@127.0.0.1:99999/mlhub"

    with pytest.raises(ConfigurationError) as caught:
        await MongoCatalog.connect(uri, "mlhub", timeout_seconds=0.5)

    assert "127.0.0.1:99999" in str(caught.value)
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("mongodb://127.0.0.1", "127.0.0.1:27017"),
        (f"mongodb://admin:{PASSWORD}@db1:27018,db2/mlhub?replicaSet=rs0", "db1:27018,db2:27017"),
        (f"mongodb://admin:{PASSWORD}/x?y@db:1/mlhub", "db:1"),
        (f"mongodb+srv://admin:{PASSWORD}@cluster0.example.net/mlhub", "cluster0.example.net"),
    ],
)
def test_endpoint_description_has_no_credentials(uri: str, expected: str) -> None:
    assert describe_endpoint(uri) == expected


def test_root_env_credentials_used_without_uri_credentials() -> None:
    options = client_options("mongodb://mongodb:27017", ROOT_ENV)

    assert options["username"] == "root"
    assert options["password"] == PASSWORD
    assert options["authSource"] == "admin"


def test_uri_credentials_win_over_root_env() -> None:
    options = client_options("mongodb://app:pw@mongodb:27017/mlhub", ROOT_ENV)

    assert "username" not in options
    assert "password" not in options


def test_uri_options_win_over_defaults() -> None:
    uri = "mongodb://mongodb/mlhub?authSource=mlhub&serverSelectionTimeoutMS=100"

    options = client_options(uri, ROOT_ENV, timeout_seconds=2.0)

    assert "authSource" not in options
    assert "serverSelectionTimeoutMS" not in options
    assert options["connectTimeoutMS"] == 2000


async def test_s3_down_at_connect(closed_port: int, tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        import_dirs=[tmp_path],
        artifact_backend="s3",
        s3_endpoint=f"127.0.0.1:{closed_port}",
        s3_access_key="mlhub",
        s3_secret_key=PASSWORD,
    )

    with pytest.raises(BackendUnavailable) as caught:
        await S3ArtifactStore.connect(settings, timeout_seconds=0.5)

    message = str(caught.value)
    assert f"127.0.0.1:{closed_port}" in message
    assert "cannot be reached" in message
    assert "MLHUB_S3_ENDPOINT" in message
    assert PASSWORD not in message


@pytest.mark.parametrize(
    ("field", "value"),
    [("s3_endpoint", "http://minio:9000/path"), ("s3_bucket", "B!"), ("s3_url_expiry_seconds", 0)],
)
def test_invalid_s3_settings_are_configuration_errors(
    tmp_path: Path, field: str, value: object
) -> None:
    settings = Settings(home=tmp_path, import_dirs=[tmp_path], artifact_backend="s3")
    setattr(settings, field, value)

    with pytest.raises(ConfigurationError):
        S3ArtifactStore(settings)
