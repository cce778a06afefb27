"""Loading settings from hub_config.toml and the environment."""

import logging
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
        ('[storage]\nhomee = "x"\n', "unknown keys ['homee'] in [storage]"),
        ('[storage]\nimport_dir = ["x"]\n', "known keys: ['home', 'import_dirs'"),
        ('[storage]\nimport_dirs = "models"\n', "must be a list of paths"),
        ('[catalog]\nurl = "mongodb://x"\n', "unknown keys ['url'] in [catalog]"),
        ('[artifacts]\nsecret = "x"\n', "unknown keys ['secret'] in [artifacts]"),
        ("[hub]\nstartup_wait = 5\n", "unknown keys ['startup_wait'] in [hub]"),
        ("[http]\nallowed_host = []\n", "unknown keys ['allowed_host'] in [http]"),
        ('storage = "x"\n', "[storage] must be a table"),
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


@pytest.fixture
def no_import_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Clear the import directory settings and return the data directory."""
    home = tmp_path / "data"
    monkeypatch.setenv("MLHUB_HOME", str(home))
    monkeypatch.delenv("MLHUB_IMPORT_DIRS", raising=False)
    monkeypatch.delenv("MLHUB_CONFIG", raising=False)
    return home


def test_default_import_dir_skips_root(
    no_import_dirs: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir("/")

    with caplog.at_level(logging.WARNING, logger="mlhub_mcp.config"):
        loaded = load_settings()

    assert loaded.import_dirs == [no_import_dirs / "imports"]
    assert "working directory / " in caplog.text
    assert "filesystem root" in caplog.text
    assert "MLHUB_IMPORT_DIRS" in caplog.text
    assert "storage.import_dirs" in caplog.text


def test_default_import_dir_skips_home(
    no_import_dirs: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user_home = tmp_path / "user"
    user_home.mkdir()
    monkeypatch.setenv("HOME", str(user_home))
    monkeypatch.chdir(user_home)

    with caplog.at_level(logging.WARNING, logger="mlhub_mcp.config"):
        loaded = load_settings()

    assert loaded.import_dirs == [no_import_dirs / "imports"]
    assert "the home directory" in caplog.text


def test_default_import_dir_is_working_dir(
    no_import_dirs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    loaded = load_settings()

    assert loaded.import_dirs == [tmp_path, no_import_dirs / "imports"]


@pytest.mark.parametrize("broad", ["/", "home", "home-parent"])
def test_configured_broad_import_dir_is_rejected(
    no_import_dirs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broad: str
) -> None:
    user_home = tmp_path / "users" / "me"
    user_home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(user_home))
    paths = {"/": "/", "home": str(user_home), "home-parent": str(user_home.parent)}
    monkeypatch.setenv("MLHUB_IMPORT_DIRS", f"{tmp_path / 'models'}:{paths[broad]}")

    with pytest.raises(ConfigurationError) as error:
        load_settings()

    assert f"import directory {paths[broad]!r} in MLHUB_IMPORT_DIRS" in str(error.value)
    assert "expose every file" in str(error.value)


def test_broad_import_dir_in_file_is_rejected(no_import_dirs: Path, tmp_path: Path) -> None:
    config = tmp_path / "hub_config.toml"
    config.write_text('[storage]\nimport_dirs = ["models", "/"]\n')

    with pytest.raises(ConfigurationError) as error:
        load_settings(config)

    assert "import directory '/' in storage.import_dirs is a filesystem root" in str(error.value)


def test_missing_import_dir_is_a_warning(
    no_import_dirs: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    missing = tmp_path / "not-there"
    monkeypatch.setenv("MLHUB_IMPORT_DIRS", str(missing))

    with caplog.at_level(logging.WARNING, logger="mlhub_mcp.config"):
        loaded = load_settings()

    assert loaded.import_dirs == [missing, no_import_dirs / "imports"]
    assert f"import directory {missing} in MLHUB_IMPORT_DIRS does not exist" in caplog.text


def test_import_dirs_are_listed_once(
    no_import_dirs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub passes its import directories to its servers, which add imports/ themselves."""
    imports = no_import_dirs / "imports"
    imports.mkdir(parents=True)
    monkeypatch.setenv("MLHUB_IMPORT_DIRS", f"{tmp_path}:{imports}:{tmp_path}/.")

    loaded = load_settings()
    child = load_settings().child_environment()["MLHUB_IMPORT_DIRS"]

    assert loaded.import_dirs == [tmp_path, imports]
    assert child == f"{tmp_path}"
