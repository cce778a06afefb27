"""Metadata catalog: models, datasets, deployments, executions and the audit trail."""

from mlhub_mcp.catalog._base import COLLECTIONS, UNIQUE_KEYS, Catalog, Page
from mlhub_mcp.config import Settings

__all__ = ["COLLECTIONS", "UNIQUE_KEYS", "Catalog", "Page", "open_catalog"]


async def open_catalog(settings: Settings) -> Catalog:
    """Open the catalog backend named in ``settings``.

    Raises:
        BackendUnavailable: The backend cannot be reached.
    """
    if settings.catalog_backend == "mongodb":
        from mlhub_mcp.catalog.mongodb import MongoCatalog

        return await MongoCatalog.connect(settings.mongodb_uri, settings.mongodb_database)

    from mlhub_mcp.catalog.embedded import EmbeddedCatalog

    return EmbeddedCatalog(settings.catalog_path)
