"""Envelopes as block blobs of an Azure Blob Storage container, re-written in place.

Reached from the command line as ``az://CONTAINER[/PREFIX]`` (:mod:`kmsenvelope_azure.plugin`).
The account and its credential come from ``AZURE_STORAGE_CONNECTION_STRING`` when it is set
(Azurite, shared keys, SAS), otherwise from ``[stores.az] account_url`` in the config file with
``DefaultAzureCredential`` (managed identity, workload identity, ``az login``, ``AZURE_*``
variables). azure-storage-blob is imported only when such a store is opened (the
``kmsenvelope[azure-blob]`` extra), never by the core.

Listing is lazy (List Blobs, one page at a time); a blob is read as a stream of ranged GETs
(each later range ``If-Match`` the first one's ETag, so a blob changed while it is read is never
mixed), its version is its ETag, and it is replaced by an upload with ``If-Match: <that ETag>``,
so a blob someone else changed meanwhile is never overwritten. The new content is spooled (in
memory up to :data:`SPOOL_MEMORY`, then on disk) and sent in blocks of :data:`BLOCK_SIZE`, so
memory stays bounded whatever the blob's size.

Carried over by a re-write: the content settings (type, encoding, language, disposition, cache
control), user metadata, an explicitly set access tier, index tags and the encryption scope.
Not carried: the stored Content-MD5 (the content changes), legal holds and immutability
policies (a blob under one cannot be re-written: it fails), snapshots and earlier versions (left
as they are), and a customer-provided key (such a blob cannot be read without it: it fails).
Page and append blobs are left alone (skipped), as are blobs in the archive tier (failed).
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, cast

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

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.storage.blob import (
        BlobProperties,
        BlobServiceClient,
        ContainerClient,
        ContentSettings,
        StandardBlobTier,
    )

__all__ = [
    "BLOCK_SIZE",
    "CONNECTION_STRING_ENV",
    "SPOOL_MEMORY",
    "STORE_SETTINGS",
    "AzureBlobStore",
    "open_az",
    "open_service_client",
]

CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
STORE_SETTINGS = ("account_url",)
"""The names ``[stores.az]`` accepts."""
SPOOL_MEMORY = 1 << 20
"""Bytes of an item's new content held in memory before it is spooled to a temporary file."""
BLOCK_SIZE = 4 << 20
"""The size of each ranged GET and of each staged block (blobs up to it: one GET, one PUT)."""
PAGE_SIZE = 1000
"""Blob names per List Blobs page."""
POOL_CONNECTIONS = 64
"""HTTP connections kept to the account (each worker may hold a read open while it writes)."""
OBJECT_DELETED = "blob deleted during the job"
_DEFAULT_SCOPE = "$account-encryption-key"
_CONTAINER = re.compile(r"(?:\$root|\$web|[a-z0-9](?:-?[a-z0-9])+)\Z")

_CONFLICT_CODES = frozenset({"ConditionNotMet", "BlobNotFound", "BlobOverwritten"})
_ACCESS_CODES = frozenset(
    {
        "AuthenticationFailed",
        "AuthorizationFailure",
        "AuthorizationPermissionMismatch",
        "AuthorizationProtocolMismatch",
        "AuthorizationResourceTypeMismatch",
        "AuthorizationServiceMismatch",
        "AuthorizationSourceIPMismatch",
        "InsufficientAccountPermissions",
        "InvalidAuthenticationInfo",
        "AccountIsDisabled",
        "KeyBasedAuthenticationNotPermitted",
        "NoAuthenticationInformation",
    }
)
_THROTTLE_CODES = frozenset({"ServerBusy", "TooManyRequests"})
_STANDARD_TIERS = frozenset({"Hot", "Cool", "Cold"})


class _ChangedWhileRead(ProviderError):
    """A later range of a blob did not match the ETag of its first: someone wrote it meanwhile.
    :meth:`AzureBlobStore.write` turns it into the "changed by others" outcome."""


def _code(exc: BaseException) -> tuple[str, int | None]:
    """The storage error code and HTTP status of an azure-core error (else the class name)."""
    status = getattr(exc, "status_code", None)
    code = getattr(exc, "error_code", None)
    code = getattr(code, "value", code)  # a StorageErrorCode, or the header's string
    if not code:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        code = headers.get("x-ms-error-code") if headers is not None else None
    if isinstance(code, str) and code:
        return code, status if isinstance(status, int) else None
    if isinstance(status, int):
        return str(status), status
    return type(exc).__name__, None


def _config_settings(config: Config) -> str | None:
    """``[stores.az] account_url`` (checked), or None; unknown names are refused."""
    table = config.store_settings("az")
    unknown = sorted(set(table) - set(STORE_SETTINGS))
    if unknown:
        raise ConfigError(
            f"unknown setting {unknown[0]!r} in [stores.az] of the config file "
            f"(accepted: {', '.join(STORE_SETTINGS)})"
        )
    url = table.get("account_url")
    if url is None:
        return None
    if not isinstance(url, str) or not re.fullmatch(r"https://[^\s/?#]+/?[^\s?#]*", url):
        raise ConfigError(
            "[stores.az] account_url must be the account's https URL "
            "(https://ACCOUNT.blob.core.windows.net)"
        )
    return url


def _transport() -> Any:
    """A requests transport whose pool holds :data:`POOL_CONNECTIONS` connections (requests'
    default of 10 would drop, and warn about, those of a busier job); retries are azure-core's."""
    import requests
    from azure.core.pipeline.transport import RequestsTransport
    from urllib3.util.retry import Retry

    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(
        pool_maxsize=POOL_CONNECTIONS,
        max_retries=Retry(total=False, redirect=False, raise_on_status=False),
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return RequestsTransport(session=session, session_owner=True)


def open_service_client(
    config: Config, env: Mapping[str, str] | None = None
) -> tuple[BlobServiceClient, TokenCredential | None]:
    """The account's ``BlobServiceClient`` (and the credential it owns, if any) from
    ``AZURE_STORAGE_CONNECTION_STRING`` or ``[stores.az] account_url`` (imports the SDK)."""
    environ = os.environ if env is None else env
    account_url = _config_settings(config)
    try:
        from azure.storage.blob import BlobServiceClient

        from .blob_retry import StoreRetry
    except ImportError:
        raise ConfigError(
            "the az:// store needs azure-storage-blob: install kmsenvelope[azure-blob]"
        ) from None
    options: dict[str, Any] = {
        "max_single_get_size": BLOCK_SIZE,
        "max_chunk_get_size": BLOCK_SIZE,
        "max_single_put_size": BLOCK_SIZE,
        "max_block_size": BLOCK_SIZE,
        "retry_policy": StoreRetry(),
        "transport": _transport(),
    }
    connection_string = environ.get(CONNECTION_STRING_ENV)
    if connection_string:
        try:
            client = BlobServiceClient.from_connection_string(connection_string, **options)
        except (ValueError, TypeError, KeyError):
            # Never the SDK's message, nor any part of the string: it holds the account key.
            raise ConfigError(
                f"{CONNECTION_STRING_ENV} is not a valid connection string (it needs "
                "AccountName and AccountKey, or BlobEndpoint and SharedAccessSignature)"
            ) from None
        return client, None
    if account_url is None:
        raise ConfigError(
            f"the az:// store needs an account: set {CONNECTION_STRING_ENV}, or account_url "
            "in the [stores.az] table of the config file (used with DefaultAzureCredential)"
        )
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential()
    try:
        return BlobServiceClient(account_url, credential=credential, **options), credential
    except ValueError:
        credential.close()
        raise ConfigError(f"[stores.az] account_url {account_url!r} is not usable") from None


class _Chunks(io.RawIOBase):
    """A blob download's chunks as a raw stream (so a ``BufferedReader`` reads exact sizes),
    azure-core errors mapped as they come."""

    def __init__(
        self, chunks: Iterator[bytes], on_error: Callable[[Exception], KmsEnvelopeError]
    ) -> None:
        super().__init__()
        self._chunks = chunks
        self._on_error = on_error
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        from azure.core.exceptions import AzureError

        view = memoryview(buffer).cast("B")
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return 0
            except AzureError as exc:
                raise self._on_error(exc) from None
        count = min(len(view), len(self._pending))
        view[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def close(self) -> None:
        self._pending = memoryview(b"")
        super().close()


class AzureBlobStore:
    """Block blobs of ``container`` whose names start with ``prefix`` (``""``: the whole
    container), keyed by their full name. The version is the ETag; the write is an upload with
    ``If-Match`` (412 ConditionNotMet, or the blob gone: changed by others, nothing written)."""

    def __init__(
        self,
        container: str,
        prefix: str = "",
        *,
        client: BlobServiceClient,
        credential: TokenCredential | None = None,
    ) -> None:
        self.container = container
        self.prefix = prefix
        self._service = client
        self._credential = credential
        self._client: ContainerClient = client.get_container_client(container)
        self._lock = threading.Lock()
        self._written: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"AzureBlobStore(container={self.container!r}, prefix={self.prefix!r})"

    def close(self) -> None:
        """Release the client's connections (and the credential's, if the store made one)."""
        self._client.close()
        self._service.close()
        if self._credential is not None:
            close = getattr(self._credential, "close", None)
            if callable(close):
                close()

    def _error(self, exc: Exception, what: str) -> KmsEnvelopeError:
        """An azure-core failure as kmsenvelope's error: one line, the container and the
        storage error code (never the service's message: it may quote request headers)."""
        from azure.core.exceptions import (
            ClientAuthenticationError,
            ServiceRequestError,
            ServiceResponseError,
        )

        where = f"az://{self.container}"
        code, status = _code(exc)
        if code == "ContainerNotFound":
            return ConfigError(f"{where}: no such container {self.container!r}")
        if isinstance(exc, ClientAuthenticationError) and getattr(exc, "response", None) is None:
            return AccessDeniedError(
                f"{where}: no usable Azure credential: DefaultAzureCredential got no token "
                f"({type(exc).__name__}; sign in, or set {CONNECTION_STRING_ENV})"
            )
        if code in _ACCESS_CODES or status in (401, 403):
            return AccessDeniedError(f"{where}: access denied to {what} ({code})")
        if code in _THROTTLE_CODES or status == 429:
            return ThrottledError(f"{where}: throttled on {what} ({code})")
        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            return ProviderUnavailableError(
                f"{where}: Azure Blob Storage unreachable on {what} ({type(exc).__name__})"
            )
        if status is not None and status >= 500:
            return ProviderUnavailableError(
                f"{where}: Azure Blob Storage failed on {what} ({code})"
            )
        return ProviderError(f"{where}: {what} failed ({code})")

    def list(self) -> Iterator[str]:
        """Every blob name under the prefix, in the service's (UTF-8 binary) order, a page at a
        time."""
        from azure.core.exceptions import AzureError

        try:
            pages = self._client.list_blobs(
                name_starts_with=self.prefix or None, results_per_page=PAGE_SIZE
            ).by_page()
            for page in pages:
                for blob in page:
                    yield str(blob.name)
        except AzureError as exc:
            raise self._error(exc, "listing blobs") from None

    def read(self, key: str) -> StoredItem:
        """The blob's content, streamed a range at a time; its ETag is the version. Gone:
        skipped; not a block blob: skipped."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            download = self._client.get_blob_client(key).download_blob(max_concurrency=1)
        except ResourceNotFoundError as exc:
            if _code(exc)[0] == "BlobNotFound":
                raise ItemSkipped(OBJECT_DELETED) from None
            raise self._error(exc, f"reading {key!r}") from None
        except AzureError as exc:
            if _code(exc)[0] == "BlobArchived":
                raise ProviderError(
                    f"az://{self.container}/{key}: in the archive tier (rehydrate it first)"
                ) from None
            raise self._error(exc, f"reading {key!r}") from None
        props = download.properties
        if props.blob_type != "BlockBlob":
            raise ItemSkipped(f"not a block blob ({props.blob_type})")

        def mapped(exc: Exception) -> KmsEnvelopeError:
            if _code(exc)[0] in _CONFLICT_CODES:
                return _ChangedWhileRead(f"az://{self.container}/{key}: changed while read")
            return self._error(exc, f"reading {key!r}")

        raw = _Chunks(download.chunks(), mapped)
        return StoredItem(cast(BinaryIO, io.BufferedReader(raw, 1 << 16)), str(props.etag))

    def pop_written_version(self, key: str) -> str | None:
        """The ETag of what the last successful write of ``key`` stored (then forgotten)."""
        with self._lock:
            return self._written.pop(key, None)

    def write(self, key: str, version: str, writer: Writer) -> bool:
        """Upload with ``If-Match: version``: False (nothing written) if the blob changed or
        went away since it was read. The properties it keeps come from a Get Blob Properties
        first (a download does not tell the access tier)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError

        same = MatchConditions.IfNotModified
        blob = self._client.get_blob_client(key)
        try:
            # Unconditional: the upload's If-Match alone decides (properties of a newer
            # version are never written: that upload fails).
            kept = _Kept.of(blob.get_blob_properties())
            tags = blob.get_blob_tags() if kept.tag_count else None
        except AzureError as exc:
            if _code(exc)[0] in _CONFLICT_CODES:
                return False
            raise self._error(exc, f"reading the properties of {key!r}") from None
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) as spool:
            try:
                writer(cast(BinaryIO, spool))
            except _ChangedWhileRead:
                return False
            size = spool.tell()
            spool.seek(0)
            try:
                response = blob.upload_blob(
                    spool,
                    length=size,
                    overwrite=True,
                    etag=version,
                    match_condition=same,
                    content_settings=kept.content_settings,
                    metadata=kept.metadata,
                    standard_blob_tier=kept.tier,
                    encryption_scope=kept.encryption_scope,
                    tags=tags or None,
                    max_concurrency=1,
                )
            except AzureError as exc:
                if _code(exc)[0] in _CONFLICT_CODES:
                    return False
                raise self._error(exc, f"writing {key!r}") from None
        with self._lock:
            self._written[key] = str(response["etag"])
        return True


@dataclass(frozen=True, slots=True)
class _Kept:
    """What Get Blob Properties tells and an upload takes back, so a re-written blob keeps its
    properties (its index tags, if ``tag_count``, are fetched apart)."""

    content_settings: ContentSettings
    metadata: dict[str, str]
    tier: StandardBlobTier | None
    encryption_scope: str | None
    tag_count: int

    @classmethod
    def of(cls, props: BlobProperties) -> _Kept:
        from azure.storage.blob import ContentSettings, StandardBlobTier

        settings = props.content_settings
        explicit = props.blob_tier in _STANDARD_TIERS and not props.blob_tier_inferred
        scope = props.encryption_scope
        return cls(
            content_settings=ContentSettings(  # all but Content-MD5: the content changes
                content_type=settings.content_type,
                content_encoding=settings.content_encoding,
                content_language=settings.content_language,
                content_disposition=settings.content_disposition,
                cache_control=settings.cache_control,
            ),
            metadata=dict(props.metadata or {}),
            tier=StandardBlobTier(props.blob_tier) if explicit else None,
            encryption_scope=scope if scope and scope != _DEFAULT_SCOPE else None,
            tag_count=int(props.tag_count or 0),
        )


def open_az(url: StoreURL, config: Config) -> AzureBlobStore:
    """``az://CONTAINER[/PREFIX]``: the block blobs under ``PREFIX/`` (the whole container
    without one); the account from ``AZURE_STORAGE_CONNECTION_STRING`` or ``[stores.az]``."""
    url.check_params()
    if url.username is not None or url.port is not None:
        raise url.error(
            "write az://CONTAINER[/PREFIX] (no user or port: the account comes from "
            f"{CONNECTION_STRING_ENV} or [stores.az] account_url)"
        )
    if not url.host:
        raise url.error("names no container: write az://CONTAINER[/PREFIX]")
    if not 3 <= len(url.host) <= 63 or not _CONTAINER.match(url.host):
        raise url.error(
            "invalid container name (3 to 63 lowercase letters, digits and single hyphens)"
        )
    client, credential = open_service_client(config)
    prefix = url.path.strip("/")
    return AzureBlobStore(
        url.host, f"{prefix}/" if prefix else "", client=client, credential=credential
    )
