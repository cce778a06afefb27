"""Checks behind ``mlhub doctor``: is every configured backend usable, and if not, how to fix it.

Each check returns a ``Check`` with a status and, unless it passed, a fix.
Features that only some engines need (the Groq key, Java and pyspark for
Spark) give a warning when missing, unless ``MLHUB_SPARK_MASTER`` is set, which
makes the Spark checks required.
"""

import importlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import anyio.to_thread

from mlhub_mcp.catalog import Catalog
from mlhub_mcp.config import Settings
from mlhub_mcp.errors import MLHubError

DEFAULT_TIMEOUT_SECONDS = 5.0
MIN_JAVA_VERSION = 17
SPARK_MASTER_ENV = "MLHUB_SPARK_MASTER"
GROQ_KEY_ENV = "GROQ_API_KEY"

OK = "ok"
WARN = "warn"
FAIL = "FAIL"
SKIP = "skip"

_JAVA_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')


@dataclass(frozen=True)
class Check:
    """Outcome of one check."""

    name: str
    status: str
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == FAIL


def parse_java_version(output: str) -> int | None:
    """Return the major version in ``java -version`` output, or None.

    Java 8 and older report ``1.<major>``, later releases ``<major>.<minor>``.
    """
    match = _JAVA_VERSION.search(output)
    if match is None:
        return None

    major = int(match.group(1))
    if major == 1 and match.group(2):
        return int(match.group(2))

    return major


async def check_catalog(settings: Settings, timeout_seconds: float) -> Check:
    """Open the configured catalog and ask it for its version."""
    name = f"catalog ({settings.catalog_backend})"
    if settings.catalog_backend == "mongodb":
        fix = (
            "start MongoDB (docker compose up -d mongodb) or point MLHUB_MONGODB_URI to a "
            "running server; put the user in the URI or in "
            "MONGO_INITDB_ROOT_USERNAME/MONGO_INITDB_ROOT_PASSWORD"
        )
    else:
        fix = f"make {settings.catalog_path.parent} writable, or set MLHUB_HOME"

    try:
        catalog = await _open_catalog(settings, timeout_seconds)
    except ImportError as exc:
        detail = f"the MongoDB driver is missing: {exc}"
        return Check(name, FAIL, detail, "pip install 'mlhub-mcp[mongodb]'")
    except (MLHubError, OSError) as exc:
        return Check(name, FAIL, str(exc), fix)

    try:
        description = await catalog.ping()
    except MLHubError as exc:
        return Check(name, FAIL, str(exc), fix)
    finally:
        await catalog.aclose()

    return Check(name, OK, description)


async def _open_catalog(settings: Settings, timeout_seconds: float) -> Catalog:
    if settings.catalog_backend == "mongodb":
        from mlhub_mcp.catalog.mongodb import MongoCatalog

        return await MongoCatalog.connect(
            settings.mongodb_uri, settings.mongodb_database, timeout_seconds=timeout_seconds
        )

    from mlhub_mcp.catalog.embedded import EmbeddedCatalog

    return await anyio.to_thread.run_sync(EmbeddedCatalog, settings.catalog_path)


async def check_local_artifacts(settings: Settings) -> Check:
    """Open the local artifact directory and report its free space."""
    from mlhub_mcp.artifacts.local import LocalArtifactStore

    name = "artifact store (local)"
    try:
        store = await anyio.to_thread.run_sync(LocalArtifactStore, settings.artifacts_dir)
        description = await store.ping()
    except (MLHubError, OSError) as exc:
        fix = f"make {settings.artifacts_dir} writable, or set MLHUB_HOME"
        return Check(name, FAIL, str(exc), fix)

    return Check(name, OK, description)


async def check_s3_artifacts(settings: Settings, timeout_seconds: float) -> list[Check]:
    """Check the S3 endpoint, the credentials and the bucket, without creating anything."""
    try:
        from mlhub_mcp.artifacts.s3 import S3ArtifactStore
    except ImportError as exc:
        detail = f"the minio SDK is missing: {exc}"
        return [Check("S3 endpoint", FAIL, detail, "pip install 'mlhub-mcp[s3]'")]

    try:
        store = S3ArtifactStore(settings, timeout_seconds=timeout_seconds)
    except MLHubError as exc:
        fix = "correct MLHUB_S3_ENDPOINT, MLHUB_S3_BUCKET or [artifacts] in hub_config.toml"
        return [Check("S3 settings", FAIL, str(exc), fix)]

    try:
        probe = await store.probe()
    finally:
        await store.aclose()

    endpoint = f"S3 at {store.endpoint}"
    if not probe.reachable:
        fix = "start MinIO (docker compose up -d minio) or point MLHUB_S3_ENDPOINT to it"
        return [
            Check("S3 endpoint", FAIL, probe.detail, fix),
            Check("S3 credentials", SKIP, "not checked: the endpoint is unreachable"),
            Check("S3 bucket", SKIP, "not checked: the endpoint is unreachable"),
        ]

    checks = [Check("S3 endpoint", OK, f"{endpoint} answers")]
    if probe.credentials_accepted is None:
        checks.append(Check("S3 credentials", FAIL, probe.detail, "check the S3 server's logs"))
        return checks

    if not probe.credentials_accepted:
        fix = "set MINIO_ROOT_USER and MINIO_ROOT_PASSWORD to an access key of the server"
        checks.append(Check("S3 credentials", FAIL, probe.detail, fix))
        checks.append(Check("S3 bucket", SKIP, "not checked: the credentials were rejected"))
        return checks

    checks.append(Check("S3 credentials", OK, "accepted"))
    if probe.bucket_present:
        checks.append(Check("S3 bucket", OK, f"bucket {store.bucket!r} exists"))
    else:
        # The servers create the bucket when they start, so this alone is no failure.
        fix = "start the hub or a server once, which creates it, or set MLHUB_S3_BUCKET"
        checks.append(Check("S3 bucket", WARN, probe.detail, fix))

    return checks


def check_groq_key() -> Check:
    """Report whether ``GROQ_API_KEY`` is set, without putting the key in the result."""
    if os.environ.get(GROQ_KEY_ENV, "").strip():
        return Check("Groq API key", OK, f"{GROQ_KEY_ENV} is set")

    fix = f"export {GROQ_KEY_ENV}=<key>, created at https://console.groq.com/keys"
    return Check(
        "Groq API key", WARN, f"{GROQ_KEY_ENV} is not set, so the groq engine cannot run", fix
    )


def _find_java() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file():
            return str(candidate)

    return shutil.which("java")


async def check_java(required: bool, timeout_seconds: float) -> Check:
    """Run ``java -version`` and check that Java is 17 or newer, as Spark 4 needs."""
    name = "Java for Spark"
    missing = FAIL if required else WARN
    fix = (
        f"install Java {MIN_JAVA_VERSION} or newer (e.g. openjdk-17-jre-headless) and set JAVA_HOME"
    )
    java = _find_java()
    if java is None:
        return Check(name, missing, "java not found in JAVA_HOME or PATH", fix)

    try:
        with anyio.fail_after(timeout_seconds * 3):
            result = await anyio.run_process([java, "-version"], check=False)
    except (OSError, TimeoutError) as exc:
        return Check(name, missing, f"{java} -version failed: {exc!r}", fix)

    # java -version writes to stderr.
    output = (result.stderr or result.stdout).decode(errors="replace")
    version = parse_java_version(output)
    if version is None:
        first_line = output.strip().splitlines()[0] if output.strip() else "no output"
        return Check(name, missing, f"unrecognised {java} -version output: {first_line}", fix)

    if version < MIN_JAVA_VERSION:
        detail = f"Java {version} at {java}; Spark 4 needs {MIN_JAVA_VERSION} or newer"
        return Check(name, missing, detail, fix)

    return Check(name, OK, f"Java {version} at {java}")


async def check_pyspark(required: bool) -> Check:
    """Import pyspark and report its version."""
    name = "pyspark"
    try:
        module = await anyio.to_thread.run_sync(importlib.import_module, "pyspark")
    except ImportError as exc:
        status = FAIL if required else WARN
        return Check(
            name, status, f"cannot import pyspark: {exc}", "pip install 'mlhub-mcp[spark]'"
        )

    return Check(name, OK, f"pyspark {getattr(module, '__version__', 'of unknown version')}")


async def check_spark_master(master: str, timeout_seconds: float) -> Check:
    """Open a TCP connection to a standalone or Spark Connect master."""
    name = "spark master"
    if not master or master.startswith("local"):
        return Check(name, SKIP, f"local mode ({master or 'local[*]'}), no master to reach")

    parsed = urlsplit(master)
    if parsed.scheme not in ("spark", "sc") or not parsed.hostname:
        return Check(
            name,
            FAIL,
            f"{SPARK_MASTER_ENV} {master!r} is not a Spark master URL",
            "use local[*], spark://host:7077 or sc://host:15002",
        )

    port = parsed.port or (7077 if parsed.scheme == "spark" else 15002)
    address = f"{parsed.hostname}:{port}"
    try:
        with anyio.fail_after(timeout_seconds):
            stream = await anyio.connect_tcp(parsed.hostname, port)
            await stream.aclose()
    except (OSError, TimeoutError) as exc:
        return Check(
            name,
            FAIL,
            f"cannot connect to {address}: {exc or 'timed out'}",
            f"start the Spark master at {address} or change {SPARK_MASTER_ENV}",
        )

    return Check(name, OK, f"{parsed.scheme}:// master accepts connections at {address}")


async def run_doctor(
    settings: Settings, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
) -> tuple[list[Check], bool]:
    """Run every check and return them with whether none failed.

    Warnings and skipped checks do not count as failures.
    """
    checks = [await check_catalog(settings, timeout_seconds)]
    if settings.artifact_backend == "s3":
        checks.extend(await check_s3_artifacts(settings, timeout_seconds))
    else:
        checks.append(await check_local_artifacts(settings))

    spark_required = bool(os.environ.get(SPARK_MASTER_ENV, "").strip())
    checks.append(check_groq_key())
    checks.append(await check_java(spark_required, timeout_seconds))
    checks.append(await check_pyspark(spark_required))
    master = os.environ.get(SPARK_MASTER_ENV, "").strip()
    checks.append(await check_spark_master(master, timeout_seconds))

    return checks, not any(check.failed for check in checks)


def format_table(checks: list[Check]) -> str:
    """Format ``checks`` as a plain-text table, each fix on the line below its check."""
    status_width = max([len("STATUS"), *(len(c.status) for c in checks)])
    name_width = max([len("CHECK"), *(len(c.name) for c in checks)])
    lines = [f"{'STATUS':<{status_width}}  {'CHECK':<{name_width}}  DETAIL"]
    for check in checks:
        lines.append(f"{check.status:<{status_width}}  {check.name:<{name_width}}  {check.detail}")
        if check.fix and check.status != OK:
            indent = " " * (status_width + name_width + 4)
            lines.append(f"{indent}fix: {check.fix}")

    return "\n".join(lines)
