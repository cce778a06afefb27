"""Backends for the contract tests: every catalog and artifact store under one suite.

MongoDB is played by nx-27017 and S3 by nanio, each started once per session
as a subprocess on a free port of 127.0.0.1. Set ``MLHUB_TEST_MONGODB_URI``,
or ``MLHUB_TEST_S3_ENDPOINT`` with ``MLHUB_TEST_S3_ACCESS_KEY`` and
``MLHUB_TEST_S3_SECRET_KEY``, to run the same tests against real servers.
Each test gets a new database or bucket, removed afterwards.
"""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlhub_mcp.artifacts import ArtifactStore
from mlhub_mcp.catalog import Catalog
from mlhub_mcp.config import Settings

STARTUP_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 10.0
TEST_ACCESS_KEY = "mlhub-test"


@dataclass(frozen=True)
class S3Server:
    """Where the contract tests reach an S3 server."""

    endpoint: str
    access_key: str
    secret_key: str


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _executable(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return str(candidate)

    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed; install the test extra: pip install -e '.[test]'")

    return found


def _wait_for_port(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log.read_text(errors="replace")[-2000:]
            pytest.fail(f"server exited with code {process.returncode} on start:\n{output}")

        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)

    pytest.fail(f"server did not accept connections on port {port} in {STARTUP_TIMEOUT_SECONDS} s")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """Stop a server this suite started, by its process id."""
    if process.poll() is not None:
        return

    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_mongodb_server(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """Start nx-27017 on ``port`` of 127.0.0.1 and wait until it accepts connections."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "server.out"
    command = [
        _executable("nx-27017"),
        "--host",
        "127.0.0.1",
        "-p",
        str(port),
        "--data-dir",
        str(data_dir),
        "--log-file",
        str(data_dir / "nx.log"),
        "--pid-file",
        str(data_dir / "nx.pid"),
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)

    try:
        _wait_for_port(process, port, log)
    except BaseException:
        stop_server(process)
        raise

    return process


@pytest.fixture
def closed_port() -> int:
    """Return a port of 127.0.0.1 on which nothing listens."""
    return free_port()


@pytest.fixture
def private_mongodb(tmp_path: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    """Start an nx-27017 that only this test uses; yield its URI and a stop function."""
    port = free_port()
    process = start_mongodb_server(tmp_path / "private-nx-27017", port)
    try:
        yield f"mongodb://127.0.0.1:{port}", lambda: stop_server(process)
    finally:
        stop_server(process)


@pytest.fixture(scope="session")
def mongodb_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Return the URI of a MongoDB server: ``MLHUB_TEST_MONGODB_URI`` or nx-27017."""
    configured = os.environ.get("MLHUB_TEST_MONGODB_URI")
    if configured:
        yield configured
        return

    port = free_port()
    process = start_mongodb_server(tmp_path_factory.mktemp("nx-27017"), port)
    try:
        yield f"mongodb://127.0.0.1:{port}"
    finally:
        stop_server(process)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Return an S3 server: the one in ``MLHUB_TEST_S3_*`` or nanio."""
    configured = os.environ.get("MLHUB_TEST_S3_ENDPOINT")
    if configured:
        yield S3Server(
            endpoint=configured,
            access_key=os.environ.get("MLHUB_TEST_S3_ACCESS_KEY", ""),
            secret_key=os.environ.get("MLHUB_TEST_S3_SECRET_KEY", ""),
        )
        return

    data_dir = tmp_path_factory.mktemp("nanio")
    log = data_dir.parent / f"{data_dir.name}.out"
    port = free_port()
    server = S3Server(
        endpoint=f"127.0.0.1:{port}",
        access_key=TEST_ACCESS_KEY,
        secret_key=secrets.token_hex(16),
    )
    command = [
        _executable("nanio"),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    env = {
        **os.environ,
        "NANIO_ACCESS_KEY": server.access_key,
        "NANIO_SECRET_KEY": server.secret_key,
    }
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)

    try:
        _wait_for_port(process, port, log)
        yield server
    finally:
        stop_server(process)


def new_name(prefix: str) -> str:
    """Return a database or bucket name that no other test uses."""
    return f"{prefix}-{secrets.token_hex(6)}"


@pytest.fixture(params=["embedded", "mongodb"])
async def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Catalog]:
    """Yield an empty catalog of each backend."""
    if request.param == "embedded":
        from mlhub_mcp.catalog.embedded import EmbeddedCatalog

        embedded = EmbeddedCatalog(tmp_path / "catalog.sqlite3")
        yield embedded
        await embedded.aclose()
        return

    from mlhub_mcp.catalog.mongodb import MongoCatalog

    uri = request.getfixturevalue("mongodb_uri")
    database = new_name("mlhub_test").replace("-", "_")
    mongo = await MongoCatalog.connect(uri, database)
    try:
        yield mongo
    finally:
        await mongo._client.drop_database(database)
        await mongo.aclose()


@pytest.fixture
def make_s3_settings(s3_server: S3Server) -> Callable[[Path], Settings]:
    """Return a function that builds settings for the S3 server with a new bucket."""

    def make(home: Path) -> Settings:
        return Settings(
            home=home,
            import_dirs=[home],
            artifact_backend="s3",
            s3_endpoint=s3_server.endpoint,
            s3_bucket=new_name("mlhub-test"),
            s3_access_key=s3_server.access_key,
            s3_secret_key=s3_server.secret_key,
        )

    return make


@asynccontextmanager
async def open_s3_store(settings: Settings) -> AsyncIterator[ArtifactStore]:
    """Open an S3 store on a new bucket, and empty and remove the bucket on exit."""
    from mlhub_mcp.artifacts.s3 import S3ArtifactStore

    store = await S3ArtifactStore.connect(settings)
    try:
        yield store
    finally:
        for key in await store.list_keys():
            await store.delete(key)
        await store._call(store._client.remove_bucket, store.bucket)
        await store.aclose()


@pytest.fixture
async def s3_store(
    make_s3_settings: Callable[[Path], Settings], tmp_path: Path
) -> AsyncIterator[ArtifactStore]:
    """Yield an empty S3 artifact store whose home is ``tmp_path / "home"``."""
    async with open_s3_store(make_s3_settings(tmp_path / "home")) as store:
        yield store


@pytest.fixture(params=["local", "s3"])
async def artifact_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ArtifactStore]:
    """Yield an empty artifact store of each backend."""
    if request.param == "local":
        from mlhub_mcp.artifacts.local import LocalArtifactStore

        yield LocalArtifactStore(tmp_path / "artifacts")
        return

    make_s3_settings = request.getfixturevalue("make_s3_settings")
    async with open_s3_store(make_s3_settings(tmp_path / "home")) as store:
        yield store
