"""The catalog interface: a small document store for metadata.

Entries are JSON-compatible dicts with a string ``id``. Filters are equality
matches on top-level fields; a list value matches any of its items. Listings
are ordered by ``id``, which sorts by creation time, and paginated with an
opaque cursor (the last id of the previous page).
"""

import abc
import re
from dataclasses import dataclass, field
from typing import Any

from mlhub_mcp.errors import InvalidInput

COLLECTIONS = ("models", "datasets", "deployments", "executions", "audit")

# Fields whose combination must be unique in a collection.
UNIQUE_KEYS: dict[str, tuple[str, ...]] = {
    "models": ("name", "version"),
    "datasets": ("name",),
    "deployments": ("name",),
}

# Fields the listings filter on, indexed by every backend.
INDEXED_FIELDS: dict[str, tuple[str, ...]] = {
    "models": ("name", "artifact_key", "task_type", "framework"),
    "datasets": ("name", "artifact_key"),
    "deployments": ("name", "model_id"),
    "executions": ("status", "deployment_id", "predictions_key", "plot_key"),
    "audit": ("server", "operation"),
}

Filters = dict[str, Any]


@dataclass
class Page:
    """One page of a listing."""

    items: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: str | None = None


class Catalog(abc.ABC):
    """Metadata store shared by the servers.

    Implementations must be safe to use from several processes at once.
    """

    @abc.abstractmethod
    async def insert(self, collection: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Insert ``doc``, which carries its own ``id``.

        Raises:
            Conflict: An entry with the same id or unique key exists.
        """

    async def insert_many(self, collection: str, docs: list[dict[str, Any]]) -> int:
        """Insert several entries that need no uniqueness check, as one write where possible.

        Returns the number inserted. The default inserts them one by one.
        """
        for doc in docs:
            await self.insert(collection, doc)
        return len(docs)

    @abc.abstractmethod
    async def get(self, collection: str, entry_id: str) -> dict[str, Any] | None:
        """Return the entry with ``entry_id``, or None."""

    @abc.abstractmethod
    async def find(
        self,
        collection: str,
        filters: Filters | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        newest_first: bool = False,
    ) -> Page:
        """Return one page of the entries matching ``filters``."""

    @abc.abstractmethod
    async def count(self, collection: str, filters: Filters | None = None) -> int:
        """Count the entries matching ``filters``."""

    @abc.abstractmethod
    async def update(
        self,
        collection: str,
        entry_id: str,
        changes: dict[str, Any],
        *,
        expected: Filters | None = None,
    ) -> dict[str, Any] | None:
        """Set ``changes`` on an entry in one atomic step and return the new entry.

        When ``expected`` is given, the change applies only if the entry still
        matches it (for example ``{"status": ["queued"]}``), so two workers can
        never both claim one execution. Returns None when no entry matched.
        """

    @abc.abstractmethod
    async def delete(self, collection: str, entry_id: str) -> bool:
        """Delete an entry; return whether it existed."""

    @abc.abstractmethod
    async def ping(self) -> str:
        """Check the backend and return a short description of it.

        Raises:
            BackendUnavailable: The backend cannot be reached.
        """

    async def find_one(self, collection: str, filters: Filters) -> dict[str, Any] | None:
        """Return the first entry matching ``filters``, or None."""
        page = await self.find(collection, filters, limit=1)
        return page.items[0] if page.items else None

    async def find_all(
        self, collection: str, filters: Filters | None = None
    ) -> list[dict[str, Any]]:
        """Return every entry matching ``filters``, walking all pages."""
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = await self.find(collection, filters, limit=500, cursor=cursor)
            items.extend(page.items)
            if page.next_cursor is None:
                return items
            cursor = page.next_cursor

    async def aclose(self) -> None:
        """Release connections."""


# Entry ids, and so cursors, are 24 lowercase hex digits (mlhub_mcp.ids.new_id).
_CURSOR = re.compile(r"[0-9a-f]{24}")

# The name of one entry of each collection, for messages.
_ENTRY_NAMES = {
    "models": "model",
    "datasets": "dataset",
    "deployments": "deployment",
    "executions": "execution",
    "audit": "audit entry",
}


def check_cursor(cursor: str) -> None:
    """Reject a listing cursor that is not in the format of an entry id.

    Raises:
        InvalidInput: ``cursor`` is not an entry id.
    """
    if not _CURSOR.fullmatch(cursor):
        raise InvalidInput(
            f"invalid cursor {cursor[:100]!r}: pass the next_cursor of the previous page"
        )


def conflict_message(collection: str, key: dict[str, Any]) -> str:
    """Return the message for an entry whose unique ``key`` fields, or ``id``, are taken."""
    entry = _ENTRY_NAMES.get(collection, collection)
    if "name" not in key:
        return f"{entry} with id {key.get('id')!r} already exists"

    if "version" in key:
        return f"{entry} {key['name']!r} version {key['version']} already exists"

    return f"{entry} {key['name']!r} already exists"


def check_collection(collection: str) -> None:
    if collection not in COLLECTIONS:
        raise ValueError(f"unknown collection {collection!r}; expected one of {COLLECTIONS}")
