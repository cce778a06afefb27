"""Artifact storage: model files, datasets, predictions and plots."""

from mlhub_mcp.artifacts._base import ArtifactStore, StoredObject, check_key, sha256_file
from mlhub_mcp.config import Settings

__all__ = ["ArtifactStore", "StoredObject", "check_key", "open_artifact_store", "sha256_file"]


async def open_artifact_store(settings: Settings) -> ArtifactStore:
    """Open the artifact backend named in ``settings``.

    Raises:
        BackendUnavailable: The backend cannot be reached or rejects the credentials.
    """
    if settings.artifact_backend == "s3":
        from mlhub_mcp.artifacts.s3 import S3ArtifactStore

        return await S3ArtifactStore.connect(settings)

    from mlhub_mcp.artifacts.local import LocalArtifactStore

    return LocalArtifactStore(settings.artifacts_dir)
