"""Loading settings from hub_config.toml and the environment."""

from pathlib import Path

import pytest

from mlhub_mcp.config import load_settings
from mlhub_mcp.errors import ConfigurationError


def test_defaults_use_embedded_backends(settings: object) -> None:
    loaded = load_settings()

    assert loaded.catalog_backend == "embedded"
    assert loaded.artifact_backend == "local"
    assert set(loaded.servers) == {"model", "data", "execution"}
    assert loaded.servers["model"].transport == "stdio"


def test_repository_config_file_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLHUB_HOME", raising=False)
    config = Path(__file__).resolve().parents[1] / "hub_config.toml"

    loaded = load_settings(config)

    assert loaded.config_path == config
    assert loaded.servers["execution"].timeout_seconds == 3600


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "hub_config.toml"
    config.write_text('[catalog]\nbackend = "embedded"\n[storage]\nhome = "from-file"\n')
    monkeypatch.setenv("MLHUB_CATALOG", "mongodb")
    monkeypatch.setenv("MLHUB_MONGODB_URI", "mongodb://db.example:27017")
    monkeypatch.delenv("MLHUB_HOME", raising=False)

    loaded = load_settings(config)

    assert loaded.catalog_backend == "mongodb"
    assert loaded.mongodb_uri == "mongodb://db.example:27017"
    assert loaded.home == tmp_path / "from-file"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[catalog]\nbackend = "postgres"\n', "catalog backend 'postgres' is unknown"),
        ('[artifacts]\nbackend = "ftp"\n', "artifact backend 'ftp' is unknown"),
        (
            '[servers.model]\ntransport = "carrier-pigeon"\n',
            "transport 'carrier-pigeon' is invalid",
        ),
        ('[servers.model]\ncolour = "red"\n', "unknown keys ['colour']"),
        ("[catalog\n", "invalid TOML"),
    ],
)
def test_invalid_config_is_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    monkeypatch.delenv("MLHUB_CATALOG", raising=False)
    monkeypatch.delenv("MLHUB_ARTIFACTS", raising=False)
    config = tmp_path / "hub_config.toml"
    config.write_text(text)

    with pytest.raises(ConfigurationError) as error:
        load_settings(config)

    assert expected in str(error.value)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as error:
        load_settings(tmp_path / "nope.toml")

    assert "nope.toml" in str(error.value)


def test_children_get_backends_but_not_hub_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLHUB_MONGODB_DATABASE", "team")
    monkeypatch.setenv("MLHUB_HUB_TOKEN", "hub-secret-token")
    monkeypatch.setenv("MINIO_ROOT_USER", "minio")
    monkeypatch.setenv("UNRELATED_VARIABLE", "x")

    env = load_settings().child_environment()

    assert env["MLHUB_MONGODB_DATABASE"] == "team"
    assert env["MINIO_ROOT_USER"] == "minio"
    assert "MLHUB_HUB_TOKEN" not in env
    assert "UNRELATED_VARIABLE" not in env
