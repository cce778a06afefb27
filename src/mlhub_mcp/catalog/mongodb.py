"""Catalog on MongoDB through PyMongo's asyncio client.

Each catalog collection is a MongoDB collection, and an entry's ``id`` is
stored as ``_id``, so listings page through the ``_id`` index. Indexes come
from ``INDEXED_FIELDS`` and unique indexes from ``UNIQUE_KEYS``; they are
created at connect time, which is idempotent, so every server process may do it.
"""

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, unquote

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, OperationFailure
from pymongo.errors import ConfigurationError as PyMongoConfigurationError

from mlhub_mcp.catalog._base import (
    COLLECTIONS,
    INDEXED_FIELDS,
    UNIQUE_KEYS,
    Catalog,
    Filters,
    Page,
    check_collection,
    check_cursor,
    conflict_message,
)
from mlhub_mcp.errors import BackendUnavailable, ConfigurationError, Conflict

logger = logging.getLogger(__name__)

DEFAULT_PORT = 27017
DEFAULT_TIMEOUT_SECONDS = 5.0
USERNAME_ENV = "MONGO_INITDB_ROOT_USERNAME"
PASSWORD_ENV = "MONGO_INITDB_ROOT_PASSWORD"

# Server error codes: 13 Unauthorized, 18 AuthenticationFailed.
_AUTH_ERROR_CODES = frozenset({13, 18})
_FIELD_OK = frozenset("abcdefghijklmnopqrstuvwxyz_0123456789")


def _split_uri(uri: str) -> tuple[str, str, str, dict[str, str]]:
    """Split a MongoDB URI into scheme, user info, host list and options."""
    scheme, separator, rest = uri.partition("://")
    if not separator:
        scheme, rest = "", uri

    # A malformed URI may have '/' or '?' in the password. Cutting at the last
    # '@' first keeps every part of the password out of the host list.
    userinfo, _, host_part = rest.rpartition("@")
    hosts, _, after_hosts = host_part.partition("/")
    hosts, _, query = hosts.partition("?")
    query = query or after_hosts.partition("?")[2]
    options = {name.lower(): value for name, value in parse_qsl(query)}

    return scheme, userinfo, hosts, options


def describe_endpoint(uri: str) -> str:
    """Return the ``host:port`` list of ``uri``, without user name or password."""
    scheme, _, hosts, _ = _split_uri(uri)
    described = []
    for host in hosts.split(","):
        has_port = ":" in host.rpartition("]")[2]
        # SRV records and Unix sockets carry no port.
        if host and not has_port and scheme != "mongodb+srv" and not host.endswith(".sock"):
            host = f"{host}:{DEFAULT_PORT}"
        described.append(host)

    return ",".join(h for h in described if h) or "(no host in the URI)"


def client_options(
    uri: str, environ: Mapping[str, str], timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
) -> dict[str, Any]:
    """Return the keyword arguments for ``AsyncMongoClient`` beyond the URI.

    When the URI has no credentials and both ``MONGO_INITDB_ROOT_USERNAME`` and
    ``MONGO_INITDB_ROOT_PASSWORD`` are set, they are used. MongoDB creates that
    root user in the ``admin`` database, so ``authSource`` defaults to it.
    Options written in the URI win over the defaults here.
    """
    _, userinfo, _, uri_options = _split_uri(uri)
    options: dict[str, Any] = {}
    if "serverselectiontimeoutms" not in uri_options:
        options["serverSelectionTimeoutMS"] = int(timeout_seconds * 1000)

    if "connecttimeoutms" not in uri_options:
        options["connectTimeoutMS"] = int(timeout_seconds * 1000)

    username = environ.get(USERNAME_ENV, "")
    password = environ.get(PASSWORD_ENV, "")
    if not userinfo and username and password:
        options["username"] = username
        options["password"] = password
        if "authsource" not in uri_options:
            options["authSource"] = "admin"

    return options


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")

    return text


def _short_reason(exc: Exception) -> str:
    # PyMongo appends its timeouts and the whole topology description.
    text = str(exc)
    for marker in (" (configured timeouts", ", Timeout:", ", Topology Description:"):
        text = text.split(marker, 1)[0]

    return text[:300]


def _check_field(name: str) -> str:
    # Only plain identifiers pass, so a filter cannot carry an operator or a
    # dotted path.
    if not name or not set(name) <= _FIELD_OK:
        raise ValueError(f"invalid filter field {name!r}: use lowercase letters, digits and '_'")

    return "_id" if name == "id" else name


def _match(filters: Filters | None) -> dict[str, Any]:
    """Translate catalog filters into a MongoDB query.

    Values are wrapped in ``$eq`` or ``$in``, so a dict value is compared as
    data and never read as an operator. ``{"$eq": None}`` also matches entries
    that lack the field, like the embedded catalog's ``IS NULL``.
    """
    query: dict[str, Any] = {}
    for name, value in (filters or {}).items():
        field_name = _check_field(name)
        if isinstance(value, list | tuple | set):
            query[field_name] = {"$in": list(value)}
        else:
            query[field_name] = {"$eq": value}

    return query


def _and(query: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    if set(query) & set(extra):
        return {"$and": [query, extra]}

    return {**query, **extra}


def _to_entry(doc: dict[str, Any]) -> dict[str, Any]:
    entry_id = doc.pop("_id")
    return {"id": entry_id, **doc}


def _to_document(entry: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(entry.get("id"), str):
        raise ValueError(f"a catalog entry needs a string 'id', got {entry.get('id')!r}")

    if "_id" in entry:
        raise ValueError("invalid field name '_id': the catalog stores the entry id there")

    doc = {key: value for key, value in entry.items() if key != "id"}
    return {"_id": entry["id"], **doc}


def _conflict_message(collection: str, doc: dict[str, Any], exc: DuplicateKeyError) -> str:
    """Name the key values that collided, from the server's error or from ``doc``."""
    details = exc.details or {}
    key_values = details.get("keyValue")
    if not isinstance(key_values, dict):
        pattern = details.get("keyPattern")
        if isinstance(pattern, dict):
            keys = tuple(pattern)
        elif "_id" in str(details.get("errmsg", "")):
            keys = ("_id",)
        else:
            keys = UNIQUE_KEYS.get(collection, ("_id",))
        key_values = {key: doc[key] for key in keys if key in doc}

    key = {"id" if name == "_id" else name: value for name, value in key_values.items()}
    return conflict_message(collection, key)


def _uri_passwords(uri: str) -> list[str]:
    """Return the password of ``uri`` as written and decoded, for scrubbing messages."""
    _, userinfo, _, _ = _split_uri(uri)
    password = userinfo.partition(":")[2]
    return [password, unquote(password)] if password else []


def _check_changes(entry_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Return ``changes`` without ``id``, rejecting names MongoDB would read as paths."""
    if "id" in changes and changes["id"] != entry_id:
        raise ValueError(f"the id of an entry cannot change: {entry_id!r} -> {changes['id']!r}")

    for name in changes:
        if name == "_id":
            raise ValueError("invalid field name '_id': the catalog stores the entry id there")

        if not name or name.startswith("$") or "." in name:
            raise ValueError(
                f"invalid field name {name!r}: it must be non-empty, must not start with '$' "
                "and must not contain '.'"
            )

    return {name: value for name, value in changes.items() if name != "id"}


class MongoCatalog(Catalog):
    """Catalog on a MongoDB server, shared by every server process."""

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], database: str, endpoint: str):
        self._client = client
        self._db = client[database]
        self.endpoint = endpoint

    @classmethod
    async def connect(
        cls, uri: str, database: str, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    ) -> "MongoCatalog":
        """Connect to ``uri``, check the server and create the indexes.

        Args:
            uri: A ``mongodb://`` or ``mongodb+srv://`` connection string.
            database: The database holding the catalog collections.
            timeout_seconds: How long to wait for a server to respond, in seconds.
                It also bounds server selection for later operations.

        Raises:
            BackendUnavailable: The server cannot be reached or rejects the credentials.
            ConfigurationError: The URI is invalid.
        """
        endpoint = describe_endpoint(uri)
        options = client_options(uri, os.environ, timeout_seconds)
        secrets = [options.get("password", ""), *_uri_passwords(uri)]
        try:
            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, **options)
        except (PyMongoConfigurationError, ValueError) as exc:
            # PyMongo raises ValueError for some malformed host lists, such as a bad port.
            message = _scrub(str(exc), secrets)
            raise ConfigurationError(
                f"invalid MongoDB URI for {endpoint}: {message}; check MLHUB_MONGODB_URI"
            ) from None

        catalog = cls(client, database, endpoint)
        try:
            await catalog.ping()
            await catalog._create_indexes()
        except BaseException:
            await client.close()
            raise

        logger.info("connected to MongoDB at %s, database %s", endpoint, database)
        return catalog

    @contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        try:
            yield
        except ConnectionFailure as exc:
            raise BackendUnavailable(
                f"MongoDB at {self.endpoint} cannot be reached: {_short_reason(exc)}; "
                "check that the server is running and that MLHUB_MONGODB_URI points to it"
            ) from exc
        except OperationFailure as exc:
            if exc.code not in _AUTH_ERROR_CODES:
                raise

            code = exc.code_name or exc.code
            raise BackendUnavailable(
                f"MongoDB at {self.endpoint} rejected the credentials ({code}); "
                f"check the user in MLHUB_MONGODB_URI or {USERNAME_ENV}/{PASSWORD_ENV}"
            ) from exc

    def _collection(self, collection: str) -> AsyncCollection[dict[str, Any]]:
        check_collection(collection)
        return self._db[collection]

    async def _create_indexes(self) -> None:
        with self._mapped_errors():
            for name in COLLECTIONS:
                await self._create_collection_indexes(name)

    async def _create_collection_indexes(self, name: str) -> None:
        collection = self._db[name]
        unique = UNIQUE_KEYS.get(name)
        for field_name in INDEXED_FIELDS.get(name, ()):
            # MongoDB rejects two indexes on one key pattern with different
            # options, and the unique index serves the same queries.
            if unique != (field_name,):
                await collection.create_index([(field_name, ASCENDING)])

        if not unique:
            return

        # NOTE: MongoDB treats a missing field as null in a unique index, so two
        # entries that both lack a unique field conflict here. SQLite lets
        # NULLs repeat. Catalog entries always carry their unique fields.
        keys = [(field_name, ASCENDING) for field_name in unique]
        try:
            await collection.create_index(keys, unique=True)
        except OperationFailure as exc:
            if exc.code in _AUTH_ERROR_CODES:
                raise

            raise BackendUnavailable(
                f"cannot create the unique index on {name} {unique} in MongoDB at "
                f"{self.endpoint}: {exc}; remove the duplicate entries and restart"
            ) from exc

    async def insert(self, collection: str, doc: dict[str, Any]) -> dict[str, Any]:
        target = self._collection(collection)
        document = _to_document(doc)
        with self._mapped_errors():
            try:
                await target.insert_one(document)
            except DuplicateKeyError as exc:
                raise Conflict(_conflict_message(collection, document, exc)) from exc

        return doc

    async def insert_many(self, collection: str, docs: list[dict[str, Any]]) -> int:
        if not docs:
            return 0
        target = self._collection(collection)
        documents = [_to_document(doc) for doc in docs]
        with self._mapped_errors():
            try:
                await target.insert_many(documents, ordered=False)
            except BulkWriteError as exc:
                raise Conflict(f"an entry of the batch for {collection} already exists") from exc

        return len(docs)

    async def get(self, collection: str, entry_id: str) -> dict[str, Any] | None:
        target = self._collection(collection)
        with self._mapped_errors():
            doc = await target.find_one({"_id": entry_id})

        return _to_entry(doc) if doc is not None else None

    async def find(
        self,
        collection: str,
        filters: Filters | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        newest_first: bool = False,
    ) -> Page:
        target = self._collection(collection)
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")

        query = _match(filters)
        if cursor:
            check_cursor(cursor)
            bound = "$lt" if newest_first else "$gt"
            query = _and(query, {"_id": {bound: cursor}})

        direction = DESCENDING if newest_first else ASCENDING
        with self._mapped_errors():
            found = target.find(query).sort("_id", direction).limit(limit + 1)
            docs = await found.to_list()

        items = [_to_entry(doc) for doc in docs]
        next_cursor = None
        if len(items) > limit:
            items = items[:limit]
            next_cursor = items[-1]["id"]

        return Page(items=items, next_cursor=next_cursor)

    async def count(self, collection: str, filters: Filters | None = None) -> int:
        target = self._collection(collection)
        query = _match(filters)
        with self._mapped_errors():
            return await target.count_documents(query)

    async def update(
        self,
        collection: str,
        entry_id: str,
        changes: dict[str, Any],
        *,
        expected: Filters | None = None,
    ) -> dict[str, Any] | None:
        target = self._collection(collection)
        changes = _check_changes(entry_id, changes)
        query = _and(_match(expected), {"_id": entry_id})
        with self._mapped_errors():
            if not changes:
                doc = await target.find_one(query)
            else:
                # The filter and the write are one server-side step, so when two
                # workers claim one entry, the filter matches for only one of them.
                try:
                    doc = await target.find_one_and_update(
                        query, {"$set": changes}, return_document=ReturnDocument.AFTER
                    )
                except DuplicateKeyError as exc:
                    message = _conflict_message(collection, changes, exc)
                    raise Conflict(message) from exc

        return _to_entry(doc) if doc is not None else None

    async def delete(self, collection: str, entry_id: str) -> bool:
        target = self._collection(collection)
        with self._mapped_errors():
            result = await target.delete_one({"_id": entry_id})

        return result.deleted_count > 0

    async def ping(self) -> str:
        with self._mapped_errors():
            info = await self._client.admin.command("buildInfo")

        return f"MongoDB {info.get('version', 'unknown version')} at {self.endpoint}"

    async def aclose(self) -> None:
        await self._client.close()
