"""The whole `mlhub demo` flow on the MongoDB catalog and the S3 artifact store."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pymongo import MongoClient

from tests.contract.conftest import S3Server, new_name

pytestmark = pytest.mark.slow


def test_demo_on_mongodb_and_s3(tmp_path: Path, mongodb_uri: str, s3_server: S3Server) -> None:
    database = new_name("demo")
    bucket = new_name("demo")
    env = {
        **os.environ,
        "MLHUB_CATALOG": "mongodb",
        "MLHUB_MONGODB_URI": mongodb_uri,
        "MLHUB_MONGODB_DATABASE": database,
        "MLHUB_ARTIFACTS": "s3",
        "MLHUB_S3_ENDPOINT": s3_server.endpoint,
        "MLHUB_S3_BUCKET": bucket,
        "MINIO_ROOT_USER": s3_server.access_key,
        "MINIO_ROOT_PASSWORD": s3_server.secret_key,
    }
    env.pop("MLHUB_CONFIG", None)

    completed = subprocess.run(
        [sys.executable, "-m", "mlhub_mcp", "demo", "--home", str(tmp_path / "home")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    accuracy = float(re.search(r"accuracy\s+([0-9.]+)", completed.stdout).group(1))
    assert accuracy > 0.9
    assert f"/{bucket}/sha256/" in completed.stdout
    assert not (tmp_path / "home" / "catalog.sqlite3").exists()

    with MongoClient(mongodb_uri, serverSelectionTimeoutMS=5000) as client:
        names = client[database].list_collection_names()
        executions = client[database]["executions"].count_documents({"status": "succeeded"})
    assert "models" in names
    assert executions == 1
