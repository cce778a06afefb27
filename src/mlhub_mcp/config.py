"""Settings shared by the servers, the hub and the command line.

Values come from three layers, later ones winning: built-in defaults, the TOML
file (``MLHUB_CONFIG``, else ``hub_config.toml`` in the working directory), and
environment variables.
"""

import logging
import os
import sys
import tomllib
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from mlhub_mcp.errors import ConfigurationError

logger = logging.getLogger(__name__)

CONFIG_ENV = "MLHUB_CONFIG"
HOME_ENV = "MLHUB_HOME"
IMPORT_DIRS_ENV = "MLHUB_IMPORT_DIRS"
DEFAULT_CONFIG_NAME = "hub_config.toml"
SERVER_NAMES = ("model", "data", "execution")
TRANSPORTS = ("stdio", "http", "sse")

# Keys accepted in the [storage], [catalog] and [artifacts] tables of
# hub_config.toml. The [hub], [http] and [servers.*] tables accept the fields
# of their dataclasses.
STORAGE_KEYS = ("home", "import_dirs", "max_inline_bytes")
CATALOG_KEYS = ("backend", "database", "uri")
ARTIFACTS_KEYS = (
    "access_key",
    "backend",
    "bucket",
    "endpoint",
    "region",
    "secret_key",
    "secure",
    "url_expiry_seconds",
)


@dataclass
class ServerSettings:
    """Connection settings of one downstream server of the hub."""

    name: str
    prefix: str = ""
    transport: str = "stdio"
    command: str = ""
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    bearer_token: str = ""
    timeout_seconds: float = 600.0
    start_timeout_seconds: float = 30.0
    enabled: bool = True

    def launch_command(self) -> tuple[str, list[str]]:
        """Return the program and arguments that start this server over stdio."""
        if self.command:
            return self.command, list(self.args)

        args = self.args or ["-m", "mlhub_mcp", "serve", self.name]
        return sys.executable, list(args)


@dataclass
class HttpSettings:
    """Security limits of the hub and the servers when they serve HTTP (http or sse)."""

    # Host header values accepted besides the loopback names and the bound
    # address; "name:*" accepts any port.
    allowed_hosts: list[str] = field(default_factory=list)
    # Origin header values accepted besides http://localhost, http://127.0.0.1
    # and http://[::1] on any port.
    allowed_origins: list[str] = field(default_factory=list)
    max_request_body_bytes: int = 4 * 1024 * 1024
    max_upload_bytes: int = 1024 * 1024 * 1024
    upload_retention_hours: float = 24.0


@dataclass
class HubSettings:
    """Start-up settings of the hub."""

    # Maximum wait, in seconds, for every server to be ready before the hub
    # serves clients. Servers still starting join later.
    startup_wait_seconds: float = 10.0


@dataclass
class Settings:
    """Resolved settings of one process."""

    home: Path
    import_dirs: list[Path]
    catalog_backend: str = "embedded"
    artifact_backend: str = "local"
    mongodb_uri: str = "mongodb://127.0.0.1:27017"
    mongodb_database: str = "mlhub"
    s3_endpoint: str = "127.0.0.1:9000"
    s3_bucket: str = "mlhub"
    s3_region: str = "us-east-1"
    s3_secure: bool = False
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_url_expiry_seconds: int = 3600
    max_inline_bytes: int = 8 * 1024 * 1024
    servers: dict[str, ServerSettings] = field(default_factory=dict)
    http: HttpSettings = field(default_factory=HttpSettings)
    hub: HubSettings = field(default_factory=HubSettings)
    config_path: Path | None = None

    @property
    def catalog_path(self) -> Path:
        return self.home / "catalog.sqlite3"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    def child_environment(self) -> dict[str, str]:
        """Return the variables a server started by the hub needs to share this setup."""
        env = passthrough_environment()
        env[HOME_ENV] = str(self.home)
        # <home>/imports is added by every process itself, and may not exist yet.
        own = (self.home / "imports").resolve()
        env[IMPORT_DIRS_ENV] = os.pathsep.join(str(p) for p in self.import_dirs if p != own)
        if self.config_path is not None:
            env[CONFIG_ENV] = str(self.config_path)
        return env


# Variables of other software that mlhub processes read, passed on to servers
# the hub starts; every MLHUB_* variable is passed on as well.
_PASSTHROUGH = (
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "MONGO_INITDB_ROOT_USERNAME",
    "MONGO_INITDB_ROOT_PASSWORD",
    "GROQ_API_KEY",
    "GROQ_BASE_URL",
    "JAVA_HOME",
    "PYTHONPATH",
    "PYSPARK_PYTHON",
    "PYSPARK_SUBMIT_ARGS",
)


# Tokens that guard the hub's own HTTP endpoint; downstream servers never need them.
_NOT_PASSED = frozenset({"MLHUB_HUB_TOKEN", "MLHUB_SERVER_TOKEN"})


def passthrough_environment() -> dict[str, str]:
    """Return the variables of this process that a child mlhub process must see.

    The stdio transport starts a child with almost no environment, so the
    backend choices, credentials and tuning variables are copied explicitly.
    """
    return {
        name: value
        for name, value in os.environ.items()
        if (name.startswith("MLHUB_") or name in _PASSTHROUGH) and name not in _NOT_PASSED
    }


def _find_config_file(explicit: str | Path | None) -> Path | None:
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigurationError(f"configuration file {str(path)!r} does not exist")
        return path.resolve()

    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        path = Path(from_env).expanduser()
        if not path.is_file():
            raise ConfigurationError(
                f"{CONFIG_ENV} points to {from_env!r}, which does not exist; "
                "unset it or point it to a hub_config.toml file"
            )
        return path.resolve()

    candidate = Path.cwd() / DEFAULT_CONFIG_NAME
    return candidate.resolve() if candidate.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"invalid TOML in {str(path)!r}: {exc}") from exc


def _resolve_dirs(raw: list[str], base: Path) -> list[Path]:
    dirs = []
    for item in raw:
        path = Path(os.path.expandvars(item)).expanduser()
        if not path.is_absolute():
            path = base / path
        dirs.append(path.resolve())

    return dirs


def _too_broad(path: Path) -> str | None:
    """Return why ``path`` must not be an import directory, or None when it may be one."""
    if path.parent == path:
        return "a filesystem root"

    try:
        home = Path.home().resolve()
    except RuntimeError:
        return None

    if path == home:
        return "the home directory"
    if home.is_relative_to(path):
        return f"a directory that contains the home directory {str(home)!r}"

    return None


def _import_dirs(storage: dict[str, Any], home: Path) -> list[Path]:
    """Return the import directories, each once, ending with the data directory's imports/.

    Raises:
        ConfigurationError: A configured directory is a filesystem root or
            contains the home directory, or the setting is not a list of paths.
    """
    if os.environ.get(IMPORT_DIRS_ENV):
        raw = [d for d in os.environ[IMPORT_DIRS_ENV].split(os.pathsep) if d]
        dirs = _configured_import_dirs(raw, IMPORT_DIRS_ENV)
    elif "import_dirs" in storage:
        raw = storage["import_dirs"]
        if not isinstance(raw, list) or not all(isinstance(d, str) for d in raw):
            raise ConfigurationError(
                f'storage.import_dirs must be a list of paths, e.g. ["models"], got {raw!r}'
            )
        dirs = _configured_import_dirs(raw, "storage.import_dirs")
    else:
        dirs = _default_import_dirs()

    dirs.append((home / "imports").resolve())
    return list(dict.fromkeys(dirs))


def _configured_import_dirs(raw: list[str], source: str) -> list[Path]:
    dirs = _resolve_dirs(raw, Path.cwd())
    for path in dirs:
        reason = _too_broad(path)
        if reason is not None:
            raise ConfigurationError(
                f"import directory {str(path)!r} in {source} is {reason}, which would expose "
                "every file under it to MCP clients; list only the directories that hold the "
                "models and datasets to register"
            )

        if not path.is_dir():
            logger.warning("import directory %s in %s does not exist", path, source)

    return dirs


def _default_import_dirs() -> list[Path]:
    # MCP clients choose the working directory of the servers they start:
    # Claude Desktop on macOS uses "/" and the Claude Code desktop app on
    # Linux the home directory, either of which would expose every file.
    working = Path.cwd().resolve()
    reason = _too_broad(working)
    if reason is None:
        return [working]

    logger.warning(
        "not using the working directory %s as import directory because it is %s; "
        "set %s or storage.import_dirs in hub_config.toml to the directories that hold "
        "your models and datasets",
        working,
        reason,
        IMPORT_DIRS_ENV,
    )
    return []


def _parse_servers(raw: dict[str, Any]) -> dict[str, ServerSettings]:
    servers: dict[str, ServerSettings] = {}
    for name in SERVER_NAMES:
        servers[name] = ServerSettings(name=name)

    for name, table in raw.items():
        if not isinstance(table, dict):
            raise ConfigurationError(f"[servers.{name}] must be a table")

        known = set(ServerSettings.__dataclass_fields__) - {"name"}
        unknown = set(table) - known
        if unknown:
            raise ConfigurationError(
                f"unknown keys {sorted(unknown)} in [servers.{name}]; known keys: {sorted(known)}"
            )

        transport = table.get("transport", "stdio")
        if transport not in TRANSPORTS:
            raise ConfigurationError(
                f"[servers.{name}] transport {transport!r} is invalid; use one of {TRANSPORTS}"
            )

        servers[name] = ServerSettings(name=name, **table)

    return servers


def _checked_table(data: dict[str, Any], name: str, known: Collection[str]) -> dict[str, Any]:
    """Return the table ``name`` of ``data`` after rejecting keys not in ``known``."""
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigurationError(f"[{name}] must be a table")

    unknown = set(table) - set(known)
    if unknown:
        raise ConfigurationError(
            f"unknown keys {sorted(unknown)} in [{name}]; known keys: {sorted(known)}"
        )

    return table


def _parse_table(kind: type[Any], data: dict[str, Any], name: str) -> Any:
    table = _checked_table(data, name, kind.__dataclass_fields__)
    return kind(**table)


def load_settings(config_file: str | Path | None = None) -> Settings:
    """Load settings from defaults, the TOML file and the environment.

    Raises:
        ConfigurationError: The file is missing, malformed or names an unknown backend.
    """
    path = _find_config_file(config_file)
    data = _read_toml(path) if path else {}
    base = path.parent if path else Path.cwd()

    storage = _checked_table(data, "storage", STORAGE_KEYS)
    catalog = _checked_table(data, "catalog", CATALOG_KEYS)
    artifacts = _checked_table(data, "artifacts", ARTIFACTS_KEYS)

    home_raw = os.environ.get(HOME_ENV) or storage.get("home") or ""
    if home_raw:
        home = _resolve_dirs([home_raw], base)[0]
    else:
        home = Path(platformdirs.user_data_dir("mlhub-mcp"))

    import_dirs = _import_dirs(storage, home)

    settings = Settings(
        home=home,
        import_dirs=import_dirs,
        catalog_backend=os.environ.get("MLHUB_CATALOG", catalog.get("backend", "embedded")),
        artifact_backend=os.environ.get("MLHUB_ARTIFACTS", artifacts.get("backend", "local")),
        servers=_parse_servers(data.get("servers", {})),
        config_path=path,
        max_inline_bytes=int(storage.get("max_inline_bytes", 8 * 1024 * 1024)),
        http=_parse_table(HttpSettings, data, "http"),
        hub=_parse_table(HubSettings, data, "hub"),
    )
    _apply_backend_settings(settings, catalog, artifacts)
    return settings


def _apply_backend_settings(
    settings: Settings, catalog: dict[str, Any], artifacts: dict[str, Any]
) -> None:
    if settings.catalog_backend not in ("embedded", "mongodb"):
        raise ConfigurationError(
            f"catalog backend {settings.catalog_backend!r} is unknown; use 'embedded' or 'mongodb'"
        )
    if settings.artifact_backend not in ("local", "s3"):
        raise ConfigurationError(
            f"artifact backend {settings.artifact_backend!r} is unknown; use 'local' or 's3'"
        )

    settings.mongodb_uri = os.environ.get(
        "MLHUB_MONGODB_URI", catalog.get("uri", settings.mongodb_uri)
    )
    settings.mongodb_database = os.environ.get(
        "MLHUB_MONGODB_DATABASE", catalog.get("database", settings.mongodb_database)
    )

    settings.s3_endpoint = os.environ.get(
        "MLHUB_S3_ENDPOINT", artifacts.get("endpoint", settings.s3_endpoint)
    )
    settings.s3_bucket = os.environ.get(
        "MLHUB_S3_BUCKET", artifacts.get("bucket", settings.s3_bucket)
    )
    settings.s3_region = artifacts.get("region", settings.s3_region)
    settings.s3_secure = bool(artifacts.get("secure", settings.s3_secure))
    settings.s3_url_expiry_seconds = int(
        artifacts.get("url_expiry_seconds", settings.s3_url_expiry_seconds)
    )
    settings.s3_access_key = os.environ.get("MINIO_ROOT_USER", artifacts.get("access_key", ""))
    settings.s3_secret_key = os.environ.get("MINIO_ROOT_PASSWORD", artifacts.get("secret_key", ""))
