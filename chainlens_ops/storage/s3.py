"""The S3 backend (boto3), for `s3://bucket/prefix` repositories, and its `[s3]` table.

Endpoint, region and credentials come the standard AWS ways (AWS_ENDPOINT_URL,
AWS_DEFAULT_REGION, the credentials chain), which boto3 reads itself; `[s3]`
endpoint_url/region override them when set. Every call has connect/read timeouts and
bounded retries, so a stalled S3 fails with a StorageError instead of hanging.

Uploads are verified end to end: each request carries the SHA-256 of its bytes, which
S3 checks before accepting them, and we compare the checksum S3 returns with ours.
Objects up to `part_size` go in one PutObject; larger ones stream through a multipart
upload, one part in memory at a time. `if_absent` is a conditional write
(`If-None-Match: *` on PutObject / CompleteMultipartUpload): S3 decides atomically.

The module parses its own settings (`SETTINGS_KEYS`, `check_settings`, `parse_settings`:
the config file's `[s3]` and CHAINLENS_S3_SSE, see chainlens_ops.storage) and loads boto3
(~0.3 s) only when a client is made: loading a config file with an `[s3]` table costs a
`wal push` into a local repository no boto3.
"""

from __future__ import annotations

import builtins
import io
import time

from chainlens_ops.core.crashpoints import crash_point
from chainlens_ops.core.errors import ConfigError, UsageError
from chainlens_ops.core.record import record
from chainlens_ops.core.streams import read_full
from chainlens_ops.settings.keys import check, choice, duration_ms, table, text, whole_number
from chainlens_ops.storage.base import (
    AlreadyExists,
    InvalidKey,
    NotFound,
    ObjectInfo,
    StorageError,
    StorageUnreachable,
)
from chainlens_ops.storage.keys import check_key, check_prefix

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from typing import Any, BinaryIO

    from botocore.exceptions import BotoCoreError, ClientError
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

MiB = 1024 * 1024
PART_SIZE = 8 * MiB
MAX_PARTS = 10_000
READ_BUFFER = 1 * MiB
_UNREACHABLE = {
    "NoCredentialsError", "PartialCredentialsError", "EndpointConnectionError",
    "ConnectTimeoutError", "ConnectionClosedError", "ProxyConnectionError",
}  # fmt: skip
_REFUSED_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
_CREDENTIALS_HINT = (
    "credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, "
    "AWS_PROFILE or AWS_SHARED_CREDENTIALS_FILE (default ~/.aws/credentials); the endpoint "
    "from AWS_ENDPOINT_URL or [s3] endpoint_url"
)
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_CONFLICT_RETRIES = 3  # S3 answers 409 while a concurrent conditional write is in flight
# An upload this old is no live writer's: one multipart upload carries one object, and the
# largest (a base backup's tar) takes hours at worst. AWS suggests 7 days for its rule.
STALE_UPLOAD_S = 7 * 86400.0


# -- settings: the `[s3]` table -------------------------------------------------------


@record
class S3Settings:
    endpoint_url: str | None = None
    region: str | None = None
    sse: str | None = None  # "AES256" or "aws:kms"
    sse_kms_key_id: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 4


SETTINGS_KEYS = (
    "endpoint_url",
    "region",
    "sse",
    "sse_kms_key_id",
    "connect_timeout",
    "read_timeout",
    "max_attempts",
)
_SSE = ("AES256", "aws:kms")


def check_settings(value: object, what: str) -> None:
    """The `[s3]` table's keys and types (ConfigError naming the first mistake)."""
    checks: dict[str, Callable[[object, str], object]] = {
        "endpoint_url": text,
        "region": text,
        "sse": choice(_SSE),
        "sse_kms_key_id": text,
        "connect_timeout": duration_ms,
        "read_timeout": duration_ms,
        "max_attempts": lambda v, w: whole_number(v, w, 1, 20),
    }
    check(table(value, what), {key: checks[key] for key in SETTINGS_KEYS}, f"{what}.")


def parse_settings(values: Mapping[str, Any], env: Mapping[str, str]) -> S3Settings:
    """S3Settings from a checked `[s3]` table and the environment (CHAINLENS_S3_SSE)."""
    settings = S3Settings(
        endpoint_url=values.get("endpoint_url"),
        region=values.get("region"),
        sse=env.get("CHAINLENS_S3_SSE") or values.get("sse"),
        sse_kms_key_id=values.get("sse_kms_key_id"),
        connect_timeout=duration_ms(values.get("connect_timeout", 5), "s3.connect_timeout") / 1000,
        read_timeout=duration_ms(values.get("read_timeout", 30), "s3.read_timeout") / 1000,
        max_attempts=values.get("max_attempts", 4),
    )
    if settings.sse not in (None, *_SSE):
        raise ConfigError(f"CHAINLENS_S3_SSE must be AES256 or aws:kms, not {settings.sse!r}")
    return settings


def _load_boto3() -> Any:
    """boto3, imported with the first client; binds botocore's error classes that the
    `except` clauses below name (they run only once a client exists)."""
    global BotoCoreError, ClientError
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    return boto3


class S3RequestFailed(StorageError):
    """S3 refused a request; `code` is S3's error code (e.g. AccessDenied)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class S3Storage:
    """A repository in an S3 bucket, under an optional key prefix.

    One boto3 client per instance, made in the constructor (no network call there).
    boto3 clients are thread-safe, so one S3Storage may serve several threads (e.g.
    parallel WAL uploads; up to 16 pooled connections).
    """

    part_size = PART_SIZE  # objects larger than this use a multipart upload
    list_page_size = 1000  # S3's maximum; tests lower it to cover pagination cheaply

    def __init__(self, url: str, settings: S3Settings | None = None) -> None:
        self.url = url
        self.bucket, self.prefix = _parse_url(url)
        self.settings = settings or S3Settings()
        boto3 = _load_boto3()
        import botocore.config

        config = botocore.config.Config(
            connect_timeout=self.settings.connect_timeout,
            read_timeout=self.settings.read_timeout,
            retries={"max_attempts": self.settings.max_attempts, "mode": "standard"},
            max_pool_connections=16,
            tcp_keepalive=True,
        )
        # A session of our own: the default session is not safe to share across threads.
        session = boto3.session.Session()
        try:
            self._client: S3Client = session.client(
                "s3",
                endpoint_url=self.settings.endpoint_url,
                region_name=self.settings.region,
                config=config,
            )
        except (BotoCoreError, ValueError) as exc:
            raise ConfigError(f"S3 client for {url}: {exc}") from exc
        self._bucket_seen = False

    @classmethod
    def from_settings(cls, url: str, settings: S3Settings | None = None) -> S3Storage:
        return cls(url, settings)

    def exists(self) -> bool:
        return True  # a missing bucket fails every call, naming itself

    def stale_leftovers(self) -> tuple[str, ...]:
        """Multipart uploads started more than STALE_UPLOAD_S ago and never completed (a
        killed writer's); a backup's own are aborted sooner by `remove_incomplete`."""
        return tuple(i.key for i in self.remove_incomplete("", _stale_upload, dry_run=True))

    def remove_stale_leftovers(self) -> int:
        return len(self.remove_incomplete("", _stale_upload))

    def housekeep_now_and_then(self, stamp: str | None) -> None:
        return None

    def __repr__(self) -> str:
        return f"S3Storage({self.url!r})"

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    # -- the protocol -----------------------------------------------------------------

    def put(self, key: str, stream: BinaryIO, *, if_absent: bool = False) -> ObjectInfo:
        check_key(key)
        first = read_full(stream, self.part_size)
        if len(first) < self.part_size:
            return self._put_single(key, first, if_absent)
        return self._put_multipart(key, first, stream, if_absent)

    def open(self, key: str) -> BinaryIO:
        check_key(key)
        response = self._call(
            "read",
            key,
            self._client.get_object,
            Bucket=self.bucket,
            Key=self._full(key),
            ChecksumMode="ENABLED",  # botocore then checks the body's checksum as it streams
        )
        raw = _BodyReader(response["Body"], self._where(key))
        return io.BufferedReader(raw, buffer_size=READ_BUFFER)

    def stat(self, key: str) -> ObjectInfo:
        check_key(key)
        response = self._call(
            "stat", key, self._client.head_object, Bucket=self.bucket, Key=self._full(key)
        )
        return ObjectInfo(
            key=key, size=response["ContentLength"], mtime=response["LastModified"].timestamp()
        )

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=self.prefix + prefix,
            PaginationConfig={"PageSize": self.list_page_size},
        )
        skip = len(self.prefix)
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"][skip:]
                    try:
                        check_key(key)
                    except InvalidKey:
                        continue  # folder markers ("x/") and the like are not our objects
                    yield ObjectInfo(
                        key=key, size=obj["Size"], mtime=obj["LastModified"].timestamp()
                    )
        except (ClientError, BotoCoreError) as exc:
            raise self._translate("list", prefix or "/", exc) from exc

    def delete(self, key: str) -> None:
        check_key(key)
        self._call(
            "delete", key, self._client.delete_object, Bucket=self.bucket, Key=self._full(key)
        )

    # -- uploads ----------------------------------------------------------------------

    def _put_single(self, key: str, body: bytes, if_absent: bool) -> ObjectInfo:
        checksum = _sha256_b64(body)
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._full(key),
            "Body": body,
            "ChecksumAlgorithm": "SHA256",
            "ChecksumSHA256": checksum,
            **self._sse_args(),
        }
        if if_absent:
            args["IfNoneMatch"] = "*"
        response = self._retry_conflict("write", key, self._client.put_object, args)
        self._confirm_checksum(key, response.get("ChecksumSHA256"), checksum)
        return ObjectInfo(key=key, size=len(body), mtime=_server_time(response))

    def _put_multipart(
        self, key: str, first: bytes, stream: BinaryIO, if_absent: bool
    ) -> ObjectInfo:
        full = self._full(key)
        created = self._call(
            "write",
            key,
            self._client.create_multipart_upload,
            Bucket=self.bucket,
            Key=full,
            ChecksumAlgorithm="SHA256",
            **self._sse_args(),
        )
        upload_id = created["UploadId"]
        try:
            parts: list[CompletedPartTypeDef] = []
            digests: list[bytes] = []
            size = 0
            chunk = first
            while chunk:
                number = len(parts) + 1
                if number > MAX_PARTS:
                    raise StorageError(f"{self._where(key)}: object too large for one upload")
                digest = _sha256(chunk)
                checksum = _b64(digest)
                response = self._call(
                    "write",
                    key,
                    self._client.upload_part,
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=chunk,
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=checksum,
                )
                self._confirm_checksum(key, response.get("ChecksumSHA256"), checksum)
                parts.append(
                    {"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum}
                )
                digests.append(digest)
                size += len(chunk)
                crash_point("mid-upload")  # a part stored, the object not yet published
                chunk = b""  # let the part go before reading the next one
                chunk = read_full(stream, _part_size(self.part_size, number + 1))
            args: dict[str, Any] = {
                "Bucket": self.bucket,
                "Key": full,
                "UploadId": upload_id,
                "MultipartUpload": {"Parts": parts},
            }
            if if_absent:
                args["IfNoneMatch"] = "*"
            response = self._retry_conflict(
                "write", key, self._client.complete_multipart_upload, args
            )
        except BaseException:
            self._abort(full, upload_id)
            raise
        # S3's multipart checksum: SHA-256 of the parts' digests, suffixed with the count.
        composite = f"{_sha256_b64(b''.join(digests))}-{len(digests)}"
        returned = response.get("ChecksumSHA256")
        if returned is None:
            # Some S3-compatible servers (moto among them) leave it out of this answer: read
            # it back, unless a concurrent writer has replaced the object since (other
            # ETag). Every part's checksum was confirmed already, so that case is fine.
            stored = self._call(
                "write",
                key,
                self._client.head_object,
                Bucket=self.bucket,
                Key=full,
                ChecksumMode="ENABLED",
            )
            if stored.get("ETag") != response.get("ETag"):
                return ObjectInfo(key=key, size=size, mtime=_server_time(response))
            returned = stored.get("ChecksumSHA256")
        if returned is not None and "-" not in returned:
            returned = f"{returned}-{len(digests)}"
        self._confirm_checksum(key, returned, composite)
        return ObjectInfo(key=key, size=size, mtime=_server_time(response))

    def remove_incomplete(
        self, prefix: str, select: Callable[[ObjectInfo], bool], *, dry_run: bool = False
    ) -> builtins.list[ObjectInfo]:
        """Multipart uploads under `prefix` that killed writers never completed, which
        `select` picks (given the key, the bytes of its stored parts and when it was
        started), aborted (unless `dry_run`): their parts cost storage until then."""
        check_prefix(prefix)
        chosen: builtins.list[ObjectInfo] = []
        pages = self._client.get_paginator("list_multipart_uploads")
        try:
            for page in pages.paginate(Bucket=self.bucket, Prefix=self._full(prefix)):
                for upload in page.get("Uploads", []):
                    full = upload["Key"]
                    key = full[len(self._full("")) :]
                    size = self._parts_size(full, upload["UploadId"])
                    found = ObjectInfo(key=key, size=size, mtime=upload["Initiated"].timestamp())
                    if select(found):
                        chosen.append(found)
                        if not dry_run:
                            self._call(
                                "abort upload of", key, self._client.abort_multipart_upload,
                                Bucket=self.bucket, Key=full, UploadId=upload["UploadId"],
                            )  # fmt: skip
        except (ClientError, BotoCoreError) as exc:
            raise self._translate("list uploads of", prefix or "/", exc) from None
        return chosen

    def _parts_size(self, full: str, upload_id: str) -> int:
        pages = self._client.get_paginator("list_parts")
        return sum(
            part.get("Size", 0)
            for page in pages.paginate(Bucket=self.bucket, Key=full, UploadId=upload_id)
            for part in page.get("Parts", [])
        )

    def _abort(self, full: str, upload_id: str) -> None:
        # Best effort: a bucket lifecycle rule cleans up uploads abandoned even so.
        import contextlib  # here: see the module's docstring

        with contextlib.suppress(ClientError, BotoCoreError):
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)

    def _retry_conflict(
        self, action: str, key: str, method: Callable[..., Any], args: dict[str, Any]
    ) -> Any:
        for attempt in range(_CONFLICT_RETRIES + 1):
            try:
                return self._call(action, key, method, **args)
            except StorageError as exc:
                conflict = (
                    isinstance(exc, S3RequestFailed) and exc.code == "ConditionalRequestConflict"
                )
                if not conflict or attempt == _CONFLICT_RETRIES:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    def _confirm_checksum(self, key: str, returned: str | None, expected: str) -> None:
        if returned != expected:
            raise StorageError(
                f"{self._where(key)}: S3 did not confirm the upload's SHA-256 "
                f"(sent {expected}, got {returned})"
            )

    def _sse_args(self) -> dict[str, str]:
        args: dict[str, str] = {}
        if self.settings.sse:
            args["ServerSideEncryption"] = self.settings.sse
            if self.settings.sse == "aws:kms" and self.settings.sse_kms_key_id:
                args["SSEKMSKeyId"] = self.settings.sse_kms_key_id
        return args

    # -- errors -----------------------------------------------------------------------

    def _call(self, action: str, key: str, method: Callable[..., Any], **args: Any) -> Any:
        try:
            return method(**args)
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(action, key, exc) from exc

    def _translate(self, action: str, key: str, exc: ClientError | BotoCoreError) -> StorageError:
        where = self._where(key)
        if isinstance(exc, BotoCoreError):
            if type(exc).__name__ in _UNREACHABLE:
                return StorageUnreachable(
                    f"S3 {action} {where} failed: {exc}", hint=_CREDENTIALS_HINT
                )
            return StorageError(f"S3 {action} {where} failed: {exc}")
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = str(error.get("Message", "")) or code
        if code == "NoSuchBucket":
            return StorageError(f"S3 bucket {self.bucket} does not exist (at {self.endpoint})")
        if code in _REFUSED_CREDENTIALS:
            return StorageUnreachable(
                f"S3 {action} {where} refused our credentials: {code}", hint=_CREDENTIALS_HINT
            )
        if code == "PreconditionFailed" or status == 412:
            return AlreadyExists(f"{where} already exists")
        if action in ("read", "stat") and (code in _NOT_FOUND_CODES or status == 404):
            # HEAD answers a bare 404 for a missing bucket too: ask which it is.
            if code != "NoSuchKey" and not self._bucket_exists():
                return StorageError(f"S3 bucket {self.bucket} does not exist (at {self.endpoint})")
            return NotFound(f"{where} not found")
        return S3RequestFailed(f"S3 {action} {where} failed: {code or status}: {message}", code)

    def _bucket_exists(self) -> bool:
        if self._bucket_seen:
            return True
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                return False
            raise self._translate("stat", "", exc) from exc
        except BotoCoreError as exc:
            raise self._translate("stat", "", exc) from exc
        self._bucket_seen = True
        return True

    def _full(self, key: str) -> str:
        return self.prefix + key

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"


class _BodyReader(io.RawIOBase):
    """S3's streaming body as a raw stream whose failures are StorageErrors."""

    def __init__(self, body: Any, where: str) -> None:
        super().__init__()
        self._body = body
        self._where = where

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._body.read(len(view))
        except (BotoCoreError, OSError) as exc:
            raise StorageError(f"S3 read {self._where} failed: {exc}") from exc
        except Exception as exc:  # urllib3's own errors, not all OSErrors
            if type(exc).__module__.startswith("urllib3"):
                raise StorageError(f"S3 read {self._where} failed: {exc}") from exc
            raise
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _stale_upload(upload: ObjectInfo) -> bool:
    return upload.mtime < time.time() - STALE_UPLOAD_S


def _parse_url(url: str) -> tuple[str, str]:
    rest = url[len("s3://") :] if url.startswith("s3://") else ""
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise UsageError(f"repository {url!r} names no bucket (s3://bucket/prefix)")
    prefix = prefix.strip("/")
    if prefix:
        try:
            check_key(prefix)
        except InvalidKey as exc:
            raise UsageError(f"repository {url!r}: bad prefix: {exc}") from None
        prefix += "/"
    return bucket, prefix


def _part_size(base: int, number: int) -> int:
    """Grow parts by `base` every 1000 parts: up to ~55x10^3 x base per object (440 GiB
    at 8 MiB) within S3's 10,000-part limit, without buffering big parts for WAL."""
    return base * (1 + (number - 1) // 1000)


def _sha256(data: bytes) -> bytes:
    import hashlib  # here: loading this module stays cheap (see the docstring)

    return hashlib.sha256(data).digest()


def _b64(data: bytes) -> str:
    import binascii

    return binascii.b2a_base64(data, newline=False).decode()


def _sha256_b64(data: bytes) -> str:
    return _b64(_sha256(data))


def _server_time(response: Any) -> float:
    """The server's Date header (S3 returns no LastModified on uploads); else our clock."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if date:
        from email.utils import parsedate_to_datetime

        try:
            return parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            pass
    return time.time()
