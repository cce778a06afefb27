"""The audit trail: one catalog entry in the "audit" collection per call the hub routes.

Each entry records the caller (protocol version, message id, client name and
version, and the client's address over HTTP) and the target (server, message
type, operation). It also records the size and SHA-256 digest of the
arguments, never the arguments themselves, and the duration and outcome of
the call. An upload over HTTP (operation ``upload``) records the file name
and the size and SHA-256 of the file. Outcomes:

- ``ok``: a result without ``is_error``, or a stored upload.
- ``is_error``: a tool result with ``is_error`` set.
- ``protocol_error``: a JSON-RPC error; ``error_code`` is its code.
- ``timeout``: the server did not answer within its ``timeout_seconds``.
- ``cancelled``: the client cancelled the call or disconnected.
- ``rejected``: an upload with an invalid file name or over
  ``max_upload_bytes``, and ``error_code`` is the HTTP status.

Entries are queued and written by a background task, so the call path only
pays for building the entry. When the queue is full, entries are dropped
and counted in the status rather than slowing calls down.
"""

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import anyio
import mcp.types as types
from mcp import MCPError
from mcp.server import ServerRequestContext

from mlhub_mcp.catalog import Catalog, open_catalog
from mlhub_mcp.config import Settings
from mlhub_mcp.errors import BackendUnavailable
from mlhub_mcp.http_security import client_address
from mlhub_mcp.ids import new_id, utc_now
from mlhub_mcp.scrub import scrub_text

logger = logging.getLogger(__name__)

COLLECTION = "audit"
QUEUE_SIZE = 10_000
FLUSH_SECONDS = 5.0
_BATCH_WINDOW_SECONDS = 0.05
_BATCH = 200
_ERROR_CHARS = 500


@dataclass(frozen=True)
class Caller:
    """The client request on whose behalf the hub makes a call."""

    protocol_version: str | None = None
    message_id: str | None = None
    client_name: str | None = None
    client_version: str | None = None
    # The hub tool (a workflow) that made this call, for calls made by hub tools.
    via: str | None = None
    # The HTTP client's host:port, or None over stdio and in process.
    client_address: str | None = None


current_caller: ContextVar[Caller | None] = ContextVar("mlhub_hub_caller", default=None)


def caller_from_context(ctx: ServerRequestContext[Any]) -> Caller:
    """Read the protocol version, message id and client info of a hub request."""
    info = None
    params = ctx.session.client_params
    if params is not None:
        info = params.client_info

    return Caller(
        protocol_version=ctx.protocol_version,
        message_id=None if ctx.request_id is None else str(ctx.request_id),
        client_name=info.name if info else None,
        client_version=info.version if info else None,
        client_address=_client_address(ctx.request),
    )


def _client_address(request: Any) -> str | None:
    # The SDK sets this to the Starlette request over HTTP and SSE, else to None.
    scope = getattr(request, "scope", None)
    return client_address(scope) if scope is not None else None


def digest(payload: Any) -> tuple[int, str]:
    """Return the size in bytes and the SHA-256 of ``payload`` as canonical JSON."""
    data = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    encoded = data.encode("utf-8")
    return len(encoded), hashlib.sha256(encoded).hexdigest()


class CallRecord:
    """An audit entry being filled in while its call runs."""

    def __init__(
        self,
        message_type: str,
        operation: str,
        server: str,
        payload: Any,
        caller: Caller | None = None,
    ) -> None:
        caller = caller or current_caller.get() or Caller()
        size, sha256 = digest(payload)
        self.started = time.perf_counter()
        self.doc: dict[str, Any] = {
            "id": new_id(),
            "timestamp": utc_now(),
            "protocol_version": caller.protocol_version,
            "message_id": caller.message_id,
            "sender_name": caller.client_name,
            "sender_version": caller.client_version,
            "via": caller.via,
            "client_address": caller.client_address,
            "server": server,
            "message_type": message_type,
            "operation": scrub_text(operation),
            "payload_bytes": size,
            "payload_sha256": sha256,
            "file_name": None,
            "duration_ms": None,
            "outcome": "ok",
            "error_code": None,
            "error": None,
        }

    def set_result(self, result: Any) -> None:
        # An outcome set during the call (a timeout) is more precise than is_error.
        if self.doc["outcome"] != "ok":
            return
        if isinstance(result, types.CallToolResult) and result.is_error:
            text = " ".join(getattr(c, "text", "") for c in result.content)
            self.set_outcome("is_error", error=text)

    def set_upload(self, file_name: str, size: int, sha256: str | None) -> None:
        """Record an uploaded file in place of the arguments, with no ``sha256`` if incomplete."""
        self.doc["file_name"] = scrub_text(file_name)
        self.doc["payload_bytes"] = size
        self.doc["payload_sha256"] = sha256

    def set_outcome(self, outcome: str, code: int | None = None, error: str | None = None) -> None:
        self.doc["outcome"] = outcome
        self.doc["error_code"] = code
        self.doc["error"] = scrub_text(error)[:_ERROR_CHARS] if error else None

    def finish(self) -> dict[str, Any]:
        self.doc["duration_ms"] = round((time.perf_counter() - self.started) * 1000, 3)
        return self.doc


class AuditLog:
    """Writes audit entries to the catalog in the background and reads them back."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog: Catalog | None = None
        self.error: str | None = None
        self.queued = 0
        self.written = 0
        self.dropped = 0
        self._sender, self._receiver = anyio.create_memory_object_stream[dict[str, Any]](QUEUE_SIZE)
        self._progress = anyio.Event()

    @contextmanager
    def track(
        self,
        message_type: str,
        operation: str,
        server: str,
        payload: Any,
        caller: Caller | None = None,
    ) -> Iterator[CallRecord]:
        """Record the call run inside the block, with its outcome and duration.

        ``caller`` defaults to the request in `current_caller`. A timeout or an
        unavailable server is reported by the caller through
        `CallRecord.set_outcome`; exceptions are classified here.
        """
        record = CallRecord(message_type, operation, server, payload, caller)
        try:
            yield record
        except MCPError as exc:
            record.set_outcome("protocol_error", exc.code, exc.message)
            raise
        except anyio.get_cancelled_exc_class():
            record.set_outcome("cancelled", error="the call was cancelled")
            raise
        except Exception as exc:
            record.set_outcome(
                "protocol_error", types.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"
            )
            raise
        finally:
            self._enqueue(record.finish())

    def _enqueue(self, doc: dict[str, Any]) -> None:
        try:
            self._sender.send_nowait(doc)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning("audit queue full or closed: %d entries dropped", self.dropped)
            return

        self.queued += 1

    async def run(self) -> None:
        """Open the catalog and write queued entries until cancelled."""
        try:
            self.catalog = await open_catalog(self.settings)
        except Exception as exc:
            self.error = scrub_text(f"cannot open the catalog: {exc}")
            logger.error("audit trail disabled: %s", self.error)
            self._receiver.close()
            return

        try:
            async for doc in self._receiver:
                batch = [doc]
                # Gather what arrives in a short window, so that a stream of
                # calls costs one catalog write per window, not one per call.
                with anyio.move_on_after(_BATCH_WINDOW_SECONDS):
                    while len(batch) < _BATCH:
                        batch.append(await self._receiver.receive())

                await self._write(batch)
        finally:
            with anyio.CancelScope(shield=True):
                await self._drain()
                self._receiver.close()
                await self.catalog.aclose()

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        assert self.catalog is not None
        try:
            # One write for the batch; a transaction per entry cost about
            # 0.6 ms per routed call on the embedded catalog.
            self.written += await self.catalog.insert_many(COLLECTION, batch)
            return
        except Exception as exc:
            logger.debug("audit: batch write failed, writing entries one by one: %s", exc)

        for doc in batch:
            try:
                await self.catalog.insert(COLLECTION, doc)
                self.written += 1
            except Exception as exc:
                self.dropped += 1
                self.error = scrub_text(f"writing an entry failed: {exc}")
                logger.warning("audit: %s", self.error)

        progress, self._progress = self._progress, anyio.Event()
        progress.set()

    async def _drain(self) -> None:
        # Entries queued before shutdown are still written, within a bound.
        with anyio.move_on_after(5):
            batch: list[dict[str, Any]] = []
            while True:
                try:
                    batch.append(self._receiver.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break

            if batch:
                await self._write(batch)

    async def flush(self) -> None:
        """Wait until every entry queued so far is written, for at most `FLUSH_SECONDS`."""
        target = self.queued
        with anyio.move_on_after(FLUSH_SECONDS):
            while self.catalog is not None and self.written + self.dropped < target:
                await self._progress.wait()

    async def find(
        self, filters: dict[str, Any], limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Return a page of entries, newest first, and the cursor of the next page.

        Raises:
            BackendUnavailable: The catalog could not be opened.
        """
        if self.catalog is None:
            raise BackendUnavailable(f"the audit trail is unavailable: {self.error}")

        await self.flush()
        page = await self.catalog.find(
            COLLECTION, filters, limit=limit, cursor=cursor, newest_first=True
        )
        return page.items, page.next_cursor

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.catalog is not None,
            "written": self.written,
            "dropped": self.dropped,
            "error": self.error,
        }
