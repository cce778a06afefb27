"""Orphan sweep behind ``mlhub sweep``: stored objects that no catalog entry refers to."""

import logging

from mlhub_mcp.platform import Platform

logger = logging.getLogger(__name__)


async def sweep_orphans(platform: Platform, remove: bool) -> list[str]:
    """Find the artifacts no catalog entry refers to, and delete them when ``remove`` is set.

    Each key is checked again just before its deletion, so an entry written
    during the sweep keeps its artifact.

    NOTE: an object whose catalog entry is still being written (an upload in
    progress) looks orphaned, and the store records no upload time to spare
    recent objects. Run the sweep with ``remove`` while no uploads are running.

    Args:
        platform: The opened catalog and artifact store.
        remove: Delete the orphans instead of only listing them.

    Returns:
        The orphan keys found, or, with ``remove``, the keys deleted.
    """
    orphans = await platform.orphan_keys()
    logger.info("sweep: %d orphan artifacts found", len(orphans))
    if not remove:
        return orphans

    removed = []
    for key in orphans:
        if await platform.is_referenced(key):
            logger.info("sweep: kept %s: a catalog entry now refers to it", key)
            continue

        if await platform.artifacts.delete(key):
            removed.append(key)
            logger.info("sweep: deleted %s", key)

    return removed
