"""Catalog stored in one SQLite file, shared by the server processes.

Each collection is a table of JSON documents. SQLite runs in WAL mode with a
busy timeout so that the three servers can read and write the same file.
"""

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import anyio.to_thread

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
from mlhub_mcp.errors import BackendUnavailable, Conflict

_FIELD_OK = frozenset("abcdefghijklmnopqrstuvwxyz_0123456789")


def _integrity_message(collection: str, doc: dict[str, Any], exc: sqlite3.IntegrityError) -> str:
    # SQLite names the column of a primary key ("models.id") and the index
    # of an expression index ("index 'models_unique'") in its message.
    if f"{collection}.id" in str(exc):
        return conflict_message(collection, {"id": doc.get("id")})

    keys = UNIQUE_KEYS.get(collection, ())
    return conflict_message(collection, {k: doc.get(k) for k in keys})


def _field_expr(name: str) -> str:
    # Field names are interpolated into SQL, so only plain identifiers pass.
    if not name or not set(name) <= _FIELD_OK:
        raise ValueError(f"invalid filter field {name!r}")
    return f"json_extract(doc, '$.{name}')"


def _where(filters: Filters | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for name, value in (filters or {}).items():
        expr = _field_expr(name)
        if isinstance(value, list | tuple | set):
            values = list(value)
            if not values:
                clauses.append("0")
                continue
            clauses.append(f"{expr} IN ({', '.join('?' for _ in values)})")
            params.extend(values)
        elif value is None:
            clauses.append(f"{expr} IS NULL")
        else:
            clauses.append(f"{expr} = ?")
            params.append(value)

    return " AND ".join(clauses) or "1", params


class EmbeddedCatalog(Catalog):
    """Catalog on a local SQLite file; needs no server."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                path, timeout=30.0, check_same_thread=False, isolation_level=None
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._create_tables()
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"cannot open the catalog file {str(path)!r}: {exc}") from exc

    def _create_tables(self) -> None:
        for name in COLLECTIONS:
            self._conn.execute(
                f"CREATE TABLE IF NOT EXISTS {name} (id TEXT PRIMARY KEY, doc TEXT NOT NULL)"
            )
            for field_name in INDEXED_FIELDS.get(name, ()):
                self._conn.execute(
                    f"CREATE INDEX IF NOT EXISTS {name}_{field_name} "
                    f"ON {name} ({_field_expr(field_name)})"
                )
            unique = UNIQUE_KEYS.get(name)
            if unique:
                columns = ", ".join(_field_expr(f) for f in unique)
                self._conn.execute(
                    f"CREATE UNIQUE INDEX IF NOT EXISTS {name}_unique ON {name} ({columns})"
                )

    async def _run(self, func: Any, *args: Any) -> Any:
        def locked() -> Any:
            with self._lock:
                return func(*args)

        return await anyio.to_thread.run_sync(locked)

    async def insert(self, collection: str, doc: dict[str, Any]) -> dict[str, Any]:
        check_collection(collection)

        def insert() -> None:
            try:
                self._conn.execute(
                    f"INSERT INTO {collection} (id, doc) VALUES (?, ?)",
                    (doc["id"], json.dumps(doc)),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(_integrity_message(collection, doc, exc)) from exc

        await self._run(insert)
        return doc

    async def insert_many(self, collection: str, docs: list[dict[str, Any]]) -> int:
        check_collection(collection)
        rows = [(doc["id"], json.dumps(doc)) for doc in docs]

        def insert_all() -> None:
            # One transaction for the batch: a commit per entry dominates the cost.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    f"INSERT INTO {collection} (id, doc) VALUES (?, ?)", rows
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

        try:
            await self._run(insert_all)
        except sqlite3.IntegrityError as exc:
            raise Conflict(f"an entry of the batch for {collection} already exists") from exc
        return len(docs)

    async def get(self, collection: str, entry_id: str) -> dict[str, Any] | None:
        check_collection(collection)

        def get() -> dict[str, Any] | None:
            row = self._conn.execute(
                f"SELECT doc FROM {collection} WHERE id = ?", (entry_id,)
            ).fetchone()
            return json.loads(row[0]) if row else None

        return await self._run(get)

    async def find(
        self,
        collection: str,
        filters: Filters | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        newest_first: bool = False,
    ) -> Page:
        check_collection(collection)
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        where, params = _where(filters)
        if cursor:
            check_cursor(cursor)
            where += " AND id < ?" if newest_first else " AND id > ?"
            params.append(cursor)
        order = "DESC" if newest_first else "ASC"
        sql = f"SELECT doc FROM {collection} WHERE {where} ORDER BY id {order} LIMIT ?"

        def find() -> list[dict[str, Any]]:
            rows = self._conn.execute(sql, [*params, limit + 1]).fetchall()
            return [json.loads(r[0]) for r in rows]

        items = await self._run(find)
        next_cursor = None
        if len(items) > limit:
            items = items[:limit]
            next_cursor = items[-1]["id"]

        return Page(items=items, next_cursor=next_cursor)

    async def count(self, collection: str, filters: Filters | None = None) -> int:
        check_collection(collection)
        where, params = _where(filters)

        def count() -> int:
            sql = f"SELECT COUNT(*) FROM {collection} WHERE {where}"
            return int(self._conn.execute(sql, params).fetchone()[0])

        return await self._run(count)

    async def update(
        self,
        collection: str,
        entry_id: str,
        changes: dict[str, Any],
        *,
        expected: Filters | None = None,
    ) -> dict[str, Any] | None:
        check_collection(collection)
        where, params = _where(expected)

        def update() -> dict[str, Any] | None:
            # BEGIN IMMEDIATE takes the write lock before the read, so the
            # check and the write are one step even across processes.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                row = self._conn.execute(
                    f"SELECT doc FROM {collection} WHERE id = ? AND {where}",
                    [entry_id, *params],
                ).fetchone()
                if row is None:
                    self._conn.execute("ROLLBACK")
                    return None
                doc = json.loads(row[0])
                doc.update(changes)
                try:
                    self._conn.execute(
                        f"UPDATE {collection} SET doc = ? WHERE id = ?",
                        (json.dumps(doc), entry_id),
                    )
                except sqlite3.IntegrityError as exc:
                    raise Conflict(_integrity_message(collection, doc, exc)) from exc
                self._conn.execute("COMMIT")
                return doc
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

        return await self._run(update)

    async def delete(self, collection: str, entry_id: str) -> bool:
        check_collection(collection)

        def delete() -> bool:
            cur = self._conn.execute(f"DELETE FROM {collection} WHERE id = ?", (entry_id,))
            return cur.rowcount > 0

        return await self._run(delete)

    async def ping(self) -> str:
        version = await self._run(lambda: sqlite3.sqlite_version)
        return f"embedded SQLite {version} at {self.path}"

    async def aclose(self) -> None:
        await self._run(self._conn.close)
