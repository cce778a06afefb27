"""Artifact store on an S3-compatible server (MinIO, AWS S3) through the minio SDK.

Objects live in one bucket under their content key ``sha256/<hex digest>``,
with the digest also in the ``x-amz-meta-sha256`` metadata. The minio SDK is
synchronous, so every call runs in a worker thread. ``fetch`` keeps a local
copy of each object under ``<home>/cache``, written to a temporary file and
renamed into place once its digest has been checked. Cached copies are never
evicted, and a copy made before another process deleted the object stays
readable.
"""

import functools
import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import anyio.to_thread
import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import MIN_PART_SIZE, check_bucket_name

from mlhub_mcp.artifacts._base import (
    CHUNK_SIZE,
    ArtifactStore,
    StoredObject,
    check_key,
    key_for,
    sha256_file,
)
from mlhub_mcp.config import Settings
from mlhub_mcp.errors import BackendUnavailable, ConfigurationError, InvalidInput, NotFound

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT_SECONDS = 5.0
# The response to a large part can take long, so the read timeout keeps the
# minio SDK's default of 5 minutes.
READ_TIMEOUT_SECONDS = 300.0
PART_SIZE = 8 * 1024 * 1024
MAX_PARTS = 10_000
# S3 signs presigned URLs for at most 7 days.
MAX_URL_EXPIRY_SECONDS = 7 * 24 * 3600
KEY_PREFIX = "sha256/"

_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
)
# A HEAD request has no error body, so the SDK reports any 403 as AccessDenied,
# including a wrong secret key.
_ACCESS_DENIED = "AccessDenied"
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject"})


def part_size_for(size: int) -> int:
    """Return the multipart part size for an object of ``size`` bytes.

    Parts are 8 MiB unless that would make more than 10,000 parts, the S3
    limit. Larger objects get parts in steps of 5 MiB, the S3 minimum part size.
    """
    needed = math.ceil(size / MAX_PARTS)
    if needed <= PART_SIZE:
        return PART_SIZE

    return math.ceil(needed / MIN_PART_SIZE) * MIN_PART_SIZE


def parse_endpoint(raw: str, secure: bool) -> tuple[str, bool]:
    """Return the ``host:port`` of an endpoint and whether it uses TLS.

    A leading ``http://`` or ``https://`` sets TLS and overrides ``secure``.

    Raises:
        ConfigurationError: The endpoint is empty or has a path.
    """
    endpoint = raw.strip()
    if endpoint.startswith("https://"):
        endpoint, secure = endpoint.removeprefix("https://"), True
    elif endpoint.startswith("http://"):
        endpoint, secure = endpoint.removeprefix("http://"), False

    endpoint = endpoint.rstrip("/")
    if not endpoint or "/" in endpoint:
        raise ConfigurationError(
            f"invalid S3 endpoint {raw!r}: expected 'host:port' such as '127.0.0.1:9000'; "
            "check MLHUB_S3_ENDPOINT"
        )

    return endpoint, secure


class _HashingReader:
    """File reader that hashes and counts what the SDK reads."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data


@dataclass(frozen=True)
class S3Probe:
    """Result of checking an S3 endpoint step by step.

    A field is None when an earlier step failed, so it could not be checked.
    """

    reachable: bool
    credentials_accepted: bool | None
    bucket_present: bool | None
    detail: str


class S3ArtifactStore(ArtifactStore):
    """Content-addressed objects in one bucket of an S3-compatible server."""

    def __init__(
        self, settings: Settings, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        """Build the client from ``settings`` without sending a request.

        Raises:
            ConfigurationError: The endpoint, bucket name or URL expiry is invalid.
        """
        self.endpoint, secure = parse_endpoint(settings.s3_endpoint, settings.s3_secure)
        self.bucket = settings.s3_bucket
        self._region = settings.s3_region
        self._has_access_key = bool(settings.s3_access_key)
        self._url_expiry = _check_expiry(settings.s3_url_expiry_seconds)
        self._cache_dir = settings.home / "cache"
        try:
            check_bucket_name(self.bucket)
        except ValueError as exc:
            raise ConfigurationError(f"{exc}; check MLHUB_S3_BUCKET") from None

        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout_seconds, read=READ_TIMEOUT_SECONDS),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            # With the SDK's default of 5 retries, a refused connection took
            # 6 s in a run with minio 7.2.20. With 3 it takes about 1.2 s.
            retries=urllib3.Retry(
                total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        try:
            self._client = Minio(
                self.endpoint,
                access_key=settings.s3_access_key or None,
                secret_key=settings.s3_secret_key or None,
                secure=secure,
                region=settings.s3_region,
                http_client=self._http,
            )
        except ValueError as exc:
            self._http.clear()
            raise ConfigurationError(
                f"invalid S3 endpoint {self.endpoint!r}: {exc}; check MLHUB_S3_ENDPOINT"
            ) from None

    @classmethod
    async def connect(
        cls, settings: Settings, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    ) -> "S3ArtifactStore":
        """Connect to the endpoint in ``settings`` and create the bucket when it is missing.

        Raises:
            BackendUnavailable: The endpoint cannot be reached or rejects the credentials.
            ConfigurationError: The endpoint, bucket name or URL expiry is invalid.
        """
        store = cls(settings, timeout_seconds=timeout_seconds)
        try:
            await store._ensure_bucket()
        except BaseException:
            await store.aclose()
            raise

        logger.info("connected to S3 at %s, bucket %s", store.endpoint, store.bucket)
        return store

    def _credentials_hint(self) -> str:
        if not self._has_access_key:
            return "no access key is set; set MINIO_ROOT_USER/MINIO_ROOT_PASSWORD"

        return "check MINIO_ROOT_USER/MINIO_ROOT_PASSWORD"

    def _translate(self, exc: Exception) -> BackendUnavailable | None:
        """Return the error to raise for a failed SDK call, or None to re-raise it."""
        if isinstance(exc, S3Error):
            if exc.code in _CREDENTIAL_CODES:
                return BackendUnavailable(
                    f"S3 at {self.endpoint} rejected the credentials ({exc.code}); "
                    f"{self._credentials_hint()}"
                )

            if exc.code == _ACCESS_DENIED:
                return BackendUnavailable(
                    f"S3 at {self.endpoint} rejected the credentials or denied access to "
                    f"bucket {self.bucket!r} ({exc.code}); {self._credentials_hint()}. "
                    "If they are right, give this user read and write access to the bucket"
                )

            if exc.code == "NoSuchBucket":
                return BackendUnavailable(
                    f"bucket {self.bucket!r} not found at S3 {self.endpoint}; "
                    "restart the server to create it, or check MLHUB_S3_BUCKET"
                )

            return None

        if isinstance(exc, urllib3.exceptions.HTTPError):
            reason = getattr(exc, "reason", None) or exc
            cause = reason.__cause__ or reason.__context__ or reason
            return BackendUnavailable(
                f"S3 at {self.endpoint} cannot be reached: {cause}; check that the server is "
                "running and that MLHUB_S3_ENDPOINT points to it"
            )

        if isinstance(exc, InvalidResponseError):
            text = str(exc)[:300]
            return BackendUnavailable(
                f"{self.endpoint} did not answer as an S3 server: {text}; check MLHUB_S3_ENDPOINT"
            )

        if isinstance(exc, ServerError):
            return BackendUnavailable(f"S3 at {self.endpoint} failed: {exc}")

        return None

    async def _call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking SDK call in a worker thread and translate its errors."""
        try:
            return await anyio.to_thread.run_sync(functools.partial(func, *args, **kwargs))
        except (S3Error, urllib3.exceptions.HTTPError, InvalidResponseError, ServerError) as exc:
            translated = self._translate(exc)
            if translated is None:
                raise

            raise translated from exc

    def _make_bucket(self) -> bool:
        """Create the bucket unless it exists, and return whether it was created."""
        if self._client.bucket_exists(self.bucket):
            return False

        try:
            self._client.make_bucket(self.bucket, location=self._region)
        except S3Error as exc:
            # Another server process created it in between.
            if exc.code == "BucketAlreadyOwnedByYou":
                return False
            raise

        return True

    async def _ensure_bucket(self) -> None:
        if await self._call(self._make_bucket):
            logger.info("created bucket %s at %s", self.bucket, self.endpoint)

    def _object_exists(self, key: str) -> bool:
        try:
            self._client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING_CODES:
                return False
            raise

        return True

    def _upload(self, path: Path, key: str, sha256: str) -> int:
        """Upload ``path`` under ``key`` and return its size.

        The file is hashed again while it streams, and the upload is removed if
        the bytes sent differ from ``sha256``.
        """
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            reader = _HashingReader(handle)
            self._client.put_object(
                self.bucket,
                key,
                reader,
                length=size,
                part_size=part_size_for(size),
                content_type="application/octet-stream",
                metadata={"x-amz-meta-sha256": sha256},
            )

        if reader.digest.hexdigest() != sha256 or reader.size != size:
            self._client.remove_object(self.bucket, key)
            raise InvalidInput(f"file {str(path)!r} changed while it was uploaded; upload it again")

        return size

    def _cache_path(self, key: str) -> Path:
        digest = check_key(key).removeprefix(KEY_PREFIX)
        return self._cache_dir / "sha256" / digest[:2] / digest

    def _download(self, key: str, target: Path) -> None:
        """Download ``key`` to ``target`` through a temporary file, checking the digest."""
        try:
            response = self._client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING_CODES:
                raise NotFound("artifact", key) from None
            raise

        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, suffix=".part")
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as writer:
                for chunk in response.stream(CHUNK_SIZE):
                    digest.update(chunk)
                    writer.write(chunk)

            if key_for(digest.hexdigest()) != key:
                raise BackendUnavailable(
                    f"artifact {key!r} in bucket {self.bucket!r} at {self.endpoint} is "
                    f"corrupt: its content has sha256 {digest.hexdigest()}; delete it and "
                    "store the file again"
                )

            os.replace(tmp, target)
        finally:
            response.close()
            response.release_conn()
            tmp.unlink(missing_ok=True)

    def _list(self) -> list[str]:
        objects = self._client.list_objects(self.bucket, prefix=KEY_PREFIX, recursive=True)
        keys = []
        for item in objects:
            name = item.object_name or ""
            try:
                keys.append(check_key(name))
            except InvalidInput:
                logger.debug("ignored object %s: not a content key", name)

        return sorted(keys)

    async def put_file(self, path: Path) -> StoredObject:
        sha256 = await anyio.to_thread.run_sync(sha256_file, path)
        key = key_for(sha256)
        if await self.exists(key):
            size = await anyio.to_thread.run_sync(lambda: path.stat().st_size)
            return StoredObject(key=key, sha256=sha256, size=size)

        size = await self._call(self._upload, path, key, sha256)
        logger.info("uploaded %s (%d bytes) to bucket %s", key, size, self.bucket)
        return StoredObject(key=key, sha256=sha256, size=size)

    async def fetch(self, key: str) -> Path:
        target = self._cache_path(key)
        if target.is_file():
            return target

        await self._call(self._download, key, target)
        return target

    async def exists(self, key: str) -> bool:
        check_key(key)
        return await self._call(self._object_exists, key)

    async def delete(self, key: str) -> bool:
        existed = await self.exists(key)
        if existed:
            await self._call(self._client.remove_object, self.bucket, key)

        self._cache_path(key).unlink(missing_ok=True)
        return existed

    async def list_keys(self) -> list[str]:
        return await self._call(self._list)

    async def url(self, key: str) -> str:
        # NOTE: the URL names the endpoint as this process reaches it, such as
        # 'minio:9000' inside Docker Compose, which a client elsewhere may not
        # resolve. No setting for a public endpoint exists yet.
        check_key(key)
        expires = timedelta(seconds=self._url_expiry)
        return await self._call(self._client.presigned_get_object, self.bucket, key, expires)

    async def ping(self) -> str:
        if not await self._call(self._client.bucket_exists, self.bucket):
            raise BackendUnavailable(
                f"bucket {self.bucket!r} not found at S3 {self.endpoint}; "
                "restart the server to create it, or check MLHUB_S3_BUCKET"
            )

        return f"S3 at {self.endpoint}, bucket {self.bucket!r}"

    async def probe(self) -> S3Probe:
        """Check reachability, credentials and the bucket without changing anything."""
        try:
            present = await anyio.to_thread.run_sync(self._client.bucket_exists, self.bucket)
        except urllib3.exceptions.HTTPError as exc:
            detail = str(self._translate(exc))
            return S3Probe(False, None, None, detail)
        except S3Error as exc:
            translated = self._translate(exc)
            if translated is None or exc.code == "NoSuchBucket":
                detail = f"S3 at {self.endpoint} failed: {exc.code}: {exc.message}"
                return S3Probe(True, None, None, detail)

            return S3Probe(True, False, None, str(translated))
        except (InvalidResponseError, ServerError) as exc:
            return S3Probe(False, None, None, str(self._translate(exc)))

        detail = f"S3 at {self.endpoint}, bucket {self.bucket!r}"
        if not present:
            detail = f"bucket {self.bucket!r} not found at S3 {self.endpoint}"

        return S3Probe(True, True, present, detail)

    def spark_path(self, key: str) -> str:
        return f"s3a://{self.bucket}/{check_key(key)}"

    async def aclose(self) -> None:
        self._http.clear()


def _check_expiry(seconds: int) -> int:
    if not 1 <= seconds <= MAX_URL_EXPIRY_SECONDS:
        raise ConfigurationError(
            f"invalid artifacts.url_expiry_seconds {seconds!r}: expected 1 to "
            f"{MAX_URL_EXPIRY_SECONDS} seconds (7 days, the S3 maximum)"
        )

    return seconds
