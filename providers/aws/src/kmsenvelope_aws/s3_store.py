"""Envelopes as objects of an S3 bucket (or of any S3-compatible store), re-written in place.

Reached from the command line as ``s3://BUCKET[/PREFIX]`` (:mod:`kmsenvelope.migrate.plugin`);
endpoint, region and credentials come from the standard AWS chain (``AWS_ENDPOINT_URL_S3``,
``AWS_PROFILE``, instance roles, …), as boto3 resolves them. boto3 is imported only when such a
store is opened (the ``kmsenvelope[s3]`` extra), never by the core.

Listing is lazy (ListObjectsV2, one page at a time); an object is read as a stream whose version
is its ETag, and replaced by a PutObject with ``If-Match: <that ETag>``, so an object someone
else changed meanwhile is never overwritten. The new content is spooled (in memory up to
:data:`SPOOL_MEMORY`, then on disk), so memory stays bounded whatever the object's size.
"""

from __future__ import annotations

import io
import tempfile
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

from kmsenvelope.config import Config
from kmsenvelope.errors import (
    AccessDeniedError,
    ConfigError,
    KmsEnvelopeError,
    ProviderError,
    ProviderUnavailableError,
    ThrottledError,
)
from kmsenvelope.migrate.store import ItemSkipped, StoredItem, Writer
from kmsenvelope.migrate.store_urls import StoreURL

__all__ = ["MAX_PUT_SIZE", "SPOOL_MEMORY", "S3Store", "open_s3_client"]

SPOOL_MEMORY = 1 << 20
"""Bytes of an item's new content held in memory before it is spooled to a temporary file."""
MAX_PUT_SIZE = 5 << 30
"""The largest object one PutObject may write (5 GiB); larger objects fail, unchanged."""
POOL_CONNECTIONS = 64
"""HTTP connections boto3 keeps (each worker holds a GET open while it PUTs)."""
OBJECT_DELETED = "object deleted during the job"

_CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"})
_ACCESS_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "AccountProblem",
    }
)
_THROTTLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded"}
)
_TRANSIENT_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed"}
)
# What GetObject tells and PutObject takes back, so a re-written object keeps its properties.
_CARRIED = (
    "CacheControl",
    "ContentDisposition",
    "ContentEncoding",
    "ContentLanguage",
    "ContentType",
    "Metadata",
    "StorageClass",
    "ServerSideEncryption",
    "SSEKMSKeyId",
    "BucketKeyEnabled",
    "WebsiteRedirectLocation",
)


def open_s3_client() -> Any:
    """A thread-safe boto3 S3 client configured by the standard AWS chain (imports boto3)."""
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
    except ImportError:
        raise ConfigError("the s3:// store needs boto3: install kmsenvelope[s3]") from None
    try:
        return boto3.session.Session().client(
            "s3", config=botocore.config.Config(max_pool_connections=POOL_CONNECTIONS)
        )
    except botocore.exceptions.BotoCoreError as exc:
        raise ConfigError(f"cannot configure the S3 client: {exc}") from None


def _code(exc: BaseException) -> tuple[str, int | None]:
    """The S3 error code and HTTP status of a botocore ``ClientError`` (else the class name)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return type(exc).__name__, None
    code = str(response.get("Error", {}).get("Code", "") or "")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code or str(status or type(exc).__name__), status if isinstance(status, int) else None


class _Body(io.RawIOBase):
    """A GetObject streaming body as a raw stream (so a ``BufferedReader`` reads exact sizes);
    closing it releases the connection and forgets what ``read`` kept for ``write``."""

    def __init__(self, body: Any, on_close: Any) -> None:
        super().__init__()
        self._body = body
        self._on_close = on_close

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._body.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            finally:
                self._on_close()
        super().close()


class S3Store:
    """Objects of ``bucket`` under ``prefix`` (every key starting with it; ``""``: the whole
    bucket), keyed by their full object key. The version is the ETag; the write is a PutObject
    with ``If-Match`` (412 or 409: changed by others, nothing written). Content type, user
    metadata, storage class, server-side encryption settings and tags are carried over."""

    def __init__(self, bucket: str, prefix: str = "", *, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._client = open_s3_client() if client is None else client
        self._lock = threading.Lock()
        self._read: dict[str, dict[str, Any]] = {}  # key -> properties, while it is open
        self._written: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def close(self) -> None:
        """Release the client's connections."""
        self._client.close()

    def _error(self, exc: Exception, what: str) -> KmsEnvelopeError:
        """A botocore failure as kmsenvelope's error: one line, the bucket and the S3 code."""
        import botocore.exceptions

        where = f"s3://{self.bucket}"
        code, status = _code(exc)
        if code == "NoSuchBucket":
            return ConfigError(f"{where}: no such bucket {self.bucket!r}")
        if isinstance(exc, _credential_errors()):
            return AccessDeniedError(f"{where}: no usable AWS credentials ({code})")
        if code in _ACCESS_CODES or status == 403:
            return AccessDeniedError(f"{where}: access denied to {what} ({code})")
        if code in _THROTTLE_CODES or status == 429:
            return ThrottledError(f"{where}: throttled on {what} ({code})")
        if isinstance(
            exc, botocore.exceptions.ConnectionError | botocore.exceptions.HTTPClientError
        ):
            return ProviderUnavailableError(f"{where}: S3 unreachable on {what} ({code})")
        if code in _TRANSIENT_CODES or (status is not None and status >= 500):
            return ProviderUnavailableError(f"{where}: S3 failed on {what} ({code})")
        return ProviderError(f"{where}: {what} failed ({code})")

    def list(self) -> Iterator[str]:
        """Every object key under the prefix, in S3's (UTF-8 binary) order, a page at a time."""
        import botocore.exceptions

        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        try:
            for page in pages:
                for obj in page.get("Contents", ()):
                    yield str(obj["Key"])
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, "listing objects") from None

    def read(self, key: str) -> StoredItem:
        """The object's content, streamed; its ETag is the version. Gone: skipped."""
        import botocore.exceptions

        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            if _code(exc)[0] == "NoSuchKey":
                raise ItemSkipped(OBJECT_DELETED) from None
            raise self._error(exc, f"reading {key!r}") from None
        carried = {name: response[name] for name in _CARRIED if response.get(name)}
        if carried.get("ServerSideEncryption") != "aws:kms":
            carried.pop("SSEKMSKeyId", None)
            carried.pop("BucketKeyEnabled", None)
        carried["_tags"] = int(response.get("TagCount") or 0)
        with self._lock:
            self._read[key] = carried

        def forget() -> None:
            with self._lock:
                self._read.pop(key, None)

        stream = io.BufferedReader(_Body(response["Body"], forget), 1 << 16)
        return StoredItem(stream, str(response["ETag"]))

    def _tagging(self, key: str) -> str:
        """The object's tags as PutObject's ``Tagging`` (URL-encoded)."""
        from urllib.parse import urlencode

        response = self._client.get_object_tagging(Bucket=self.bucket, Key=key)
        return urlencode([(t["Key"], t["Value"]) for t in response.get("TagSet", ())])

    def pop_written_version(self, key: str) -> str | None:
        """The ETag of what the last successful write of ``key`` stored (then forgotten)."""
        with self._lock:
            return self._written.pop(key, None)

    def write(self, key: str, version: str, writer: Writer) -> bool:
        """PutObject with ``If-Match: version``: False (nothing written) if the object changed
        or went away since it was read."""
        import botocore.exceptions

        with self._lock:
            carried = dict(self._read.get(key, {}))
        tags = int(carried.pop("_tags", 0))
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) as spool:
            writer(cast(BinaryIO, spool))
            size = spool.tell()
            if size > MAX_PUT_SIZE:
                raise ProviderError(
                    f"s3://{self.bucket}/{key}: {size} bytes is above PutObject's 5 GiB limit"
                )
            spool.seek(0)
            try:
                if tags:
                    carried["Tagging"] = self._tagging(key)
                response = self._client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=spool,
                    ContentLength=size,
                    IfMatch=version,
                    **carried,
                )
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                if _code(exc)[0] in _CONFLICT_CODES:
                    return False
                raise self._error(exc, f"writing {key!r}") from None
        with self._lock:
            self._written[key] = str(response["ETag"])
        return True


def _credential_errors() -> tuple[type[Exception], ...]:
    """botocore's "no usable credentials" exceptions (boto3 must be importable)."""
    import botocore.exceptions as bx

    return (
        bx.NoCredentialsError,
        bx.PartialCredentialsError,
        bx.CredentialRetrievalError,
        bx.NoAuthTokenError,
        bx.TokenRetrievalError,
    )


def open_s3(url: StoreURL, config: Config) -> S3Store:
    """``s3://BUCKET[/PREFIX]``: the objects under ``PREFIX/`` (the whole bucket without one);
    endpoint, region and credentials from the standard AWS chain (no parameters)."""
    url.check_params()
    if url.username is not None or url.port is not None:
        raise url.error("write s3://BUCKET[/PREFIX] (no user or port: the AWS chain gives them)")
    if not url.host:
        raise url.error("names no bucket: write s3://BUCKET[/PREFIX]")
    prefix = url.path.strip("/")
    return S3Store(url.host, f"{prefix}/" if prefix else "")
