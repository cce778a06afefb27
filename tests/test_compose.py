"""docker-compose.yml: the services, their variables, and .env.example covering them."""

import re
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"

CORE_SERVICES = {"mongodb", "minio", "spark-master", "spark-worker", "hub"}
ADMIN_SERVICES = {"mongo-express", "minio-console", "spark-ui"}
HUB_VARIABLES = {
    "MLHUB_HUB_TOKEN",
    "MLHUB_CATALOG",
    "MLHUB_ARTIFACTS",
    "MLHUB_MONGODB_URI",
    "MLHUB_S3_ENDPOINT",
    "MONGO_INITDB_ROOT_USERNAME",
    "MONGO_INITDB_ROOT_PASSWORD",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "GROQ_API_KEY",
    "MLHUB_SPARK_MASTER",
}
# $NAME, ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error} and
# ${NAME?error}; '$$' escapes a literal '$' in Compose files.
_INTERPOLATION = re.compile(
    r"(?<!\$)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}|([A-Za-z_][A-Za-z0-9_]*))"
)


def used_variables(text: str) -> list[str]:
    return [braced or bare for braced, bare in _INTERPOLATION.findall(text)]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        values[name.strip()] = value.strip()

    return values


def test_every_service_exists(services: dict[str, Any]) -> None:
    assert set(services) == CORE_SERVICES | ADMIN_SERVICES


def test_admin_services_need_the_profile(services: dict[str, Any]) -> None:
    for name in ADMIN_SERVICES:
        assert services[name].get("profiles") == ["admin"], name

    for name in CORE_SERVICES:
        assert "profiles" not in services[name], name


def test_backends_get_their_credentials(services: dict[str, Any]) -> None:
    mongodb_env = services["mongodb"]["environment"]
    minio_env = services["minio"]["environment"]

    assert set(mongodb_env) == {"MONGO_INITDB_ROOT_USERNAME", "MONGO_INITDB_ROOT_PASSWORD"}
    assert set(minio_env) == {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}


def test_hub_serves_http_with_token(services: dict[str, Any]) -> None:
    hub = services["hub"]
    command = hub["command"]

    assert command[:2] == ["mlhub", "hub"]
    assert command[command.index("--transport") + 1] == "http"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == "8000"
    assert hub["build"]["dockerfile"] == "Dockerfile"
    assert (ROOT / hub["build"]["dockerfile"]).is_file()


def test_hub_environment_selects_the_servers(services: dict[str, Any]) -> None:
    env = services["hub"]["environment"]

    assert HUB_VARIABLES <= set(env)
    assert env["MLHUB_CATALOG"] == "mongodb"
    assert env["MLHUB_ARTIFACTS"] == "s3"
    assert env["MLHUB_MONGODB_URI"] == "mongodb://mongodb:27017"
    assert env["MLHUB_S3_ENDPOINT"] == "minio:9000"
    assert env["MLHUB_SPARK_MASTER"] == "spark://spark-master:7077"


def test_spark_master_uses_apache_image(services: dict[str, Any]) -> None:
    image = services["spark-master"]["image"]
    worker_command = services["spark-worker"]["command"]

    assert image.startswith("apache/spark:${SPARK_VERSION")
    assert "spark://spark-master:7077" in worker_command


def test_worker_shares_hub_scratch_volume(services: dict[str, Any]) -> None:
    hub = services["hub"]
    worker = services["spark-worker"]

    assert "hub-data:/data" in hub["volumes"]
    assert "hub-data:/data" in worker["volumes"]
    assert worker["environment"]["MLHUB_HOME"] == hub["environment"]["MLHUB_HOME"]


def test_admin_ports_listen_on_loopback(services: dict[str, Any]) -> None:
    for name in ADMIN_SERVICES:
        for port in services[name]["ports"]:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port}"


def test_every_variable_is_in_env_example() -> None:
    used = set(used_variables(COMPOSE_FILE.read_text()))
    documented = set(env_example())

    assert used, "no ${VARIABLE} found in docker-compose.yml"
    assert used - documented == set()


def test_env_example_has_no_real_secrets() -> None:
    values = env_example()

    assert values["GROQ_API_KEY"] == ""
    for name in ("MLHUB_HUB_TOKEN", "MONGO_INITDB_ROOT_PASSWORD", "MINIO_ROOT_PASSWORD"):
        assert values[name].startswith("change-me"), name


def test_interpolation_pattern_reads_compose_forms() -> None:
    text = "${A} ${B:-x} ${C:?set it} ${D-y} $${E} $F $$G"

    assert used_variables(text) == ["A", "B", "C", "D", "F"]
