"""Bodies on any S3-compatible object store (AWS S3, SeaweedFS, MinIO, ...).

:class:`S3BodyStore` satisfies :class:`~kontextual_engine.storage.bodies.BodyStore`.
Each body is one object holding its exact bytes, under
``<prefix>/objects/<2 hex>/<62 hex>`` of its BLAKE3 digest, so
``aws s3 cp`` and ``b3sum`` verify a body with no tool of ours.

- **Conditional writes.** Every write to an object key carries
  ``If-None-Match: *``. A 412 answer means the key exists: the digest names
  the content, so an object of the same size is the body (success); one of
  another size is damage, :class:`~kontextual_engine.errors.DamagedStoreError`
  naming the key.
- **Large bodies.** A body whose size is unknown until its stream ends, and
  which is larger than one part, is uploaded by multipart to a staging key
  ``<prefix>/tmp/<random>`` while it is hashed (memory: about one part); then
  copied server-side to its final key, conditionally, and the staging key is
  deleted. A body given as bytes is already hashed: it goes straight to its
  final key (multipart with a conditional completion if it is large).
- **Reads** stream. ``open(verify=True)`` checks a body before returning a
  byte of it, as the local store does: a small body is read and checked in
  memory; a larger one is hashed in a first streaming pass, then streamed
  again (``If-Match`` the first pass's ETag) re-hashing what it returns, and
  raising :class:`~kontextual_engine.errors.CorruptObjectError` at the end
  if the bytes changed between the passes.
- **Durability.** The service acknowledges a PUT once the object is stored,
  so a body is durable when ``add`` returns; ``batch`` and ``flush`` do
  nothing (as for :class:`~kontextual_engine.storage.bodies.MemoryBodyStore`).
- **Errors.** A service that does not answer raises
  :class:`~kontextual_engine.errors.RemoteStoreUnreachableError` naming the
  endpoint; access denied raises
  :class:`~kontextual_engine.errors.RemoteStoreAccessError` naming
  ``s3://bucket/prefix``; any other refusal
  :class:`~kontextual_engine.errors.RemoteStoreError` with the service's code.
  Credentials come only from boto3's standard chain (the ``AWS_*``
  environment variables, ``~/.aws`` profiles, instance roles) or a session
  the caller passes, and never appear in a message.
"""

from __future__ import annotations

import contextlib
import io
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

from ..digests import (
    CHUNK_SIZE,
    PREFIX,
    Digest,
    digest_bytes,
    finish,
    hex_of,
    new_hasher,
    one_match,
    parse_digest,
    parse_prefix,
)
from ..errors import (
    CorruptObjectError,
    DamagedStoreError,
    ObjectNotFound,
    RemoteStoreAccessError,
    RemoteStoreError,
    RemoteStoreUnreachableError,
    ValidationError,
)
from .objects.reader import VERIFY_IN_MEMORY, ReadCheck, check_bytes, mismatch
from .objects.store import byte_view

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from .bodies import BodyStore

__all__ = ["S3BodyStore"]

MIB = 1 << 20
# S3 refuses parts under 5 MiB (except the last) and a single CopyObject over 5 GiB.
MIN_PART_SIZE = 5 * MIB
MAX_COPY_SIZE = 5 << 30
# Keys per DeleteObjects request: S3's limit.
DELETE_BATCH = 1000
_OBJECT_KEY = re.compile(r"([0-9a-f]{2})/([0-9a-f]{62})")
_PREFIX = re.compile(r"[A-Za-z0-9!_.*'()=+,;@&$ -]+(?:/[A-Za-z0-9!_.*'()=+,;@&$ -]+)*")
_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_MISSING = {"NoSuchKey", "404", "NotFound"}


@dataclass(frozen=True)
class StoredObject:
    """One key of the store as the bucket lists it: a body (``digest`` set) or
    anything else under the prefix; ``modified`` is the service's time, in
    seconds since the epoch."""

    key: str
    digest: Digest | None
    size: int
    modified: float


class S3BodyStore:
    """A :class:`~kontextual_engine.storage.bodies.BodyStore` in one bucket and prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        session: Any = None,
        # Parts of 16 MiB: a 256 MiB body is 16 parts, a 10 GiB one 640 (S3 allows
        # 10,000), and a stream costs about one part of memory while it uploads.
        part_size: int = 16 * MIB,
        # Bodies up to this size are copied from staging in one CopyObject (S3's
        # limit); larger ones part by part (UploadPartCopy).
        copy_limit: int = MAX_COPY_SIZE,
        # A service that does not accept a connection in 5 s is unreachable; one
        # that accepted but sends nothing for 60 s has stalled.
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        # botocore's "standard" retry mode: this many attempts in all, with
        # backoff, for throttling, 5xx answers and dropped connections.
        max_attempts: int = 3,
        # Called with the digests of bodies before they are written under their
        # keys, so a shared store can record that a writer is about to reference them.
        before_write: Callable[[Sequence[Digest]], None] | None = None,
        # Bodies of one add_many written at once.
        concurrency: int = 8,
    ) -> None:
        import boto3
        from botocore.config import Config

        if not isinstance(bucket, str) or not bucket:
            raise ValidationError(f"invalid S3 bucket {bucket!r}: expected a bucket name")
        prefix = prefix.strip("/") if isinstance(prefix, str) else prefix
        if not isinstance(prefix, str) or (
            prefix and (not _PREFIX.fullmatch(prefix) or {".", ".."} & set(prefix.split("/")))
        ):
            raise ValidationError(
                f"invalid S3 prefix {prefix!r}: expected '/'-separated names of letters, "
                "digits and -_.!*'()=+,;@&$ (no '.' or '..' segment)"
            )
        if part_size < MIN_PART_SIZE:
            raise ValidationError(
                f"invalid part_size {part_size}: S3 needs parts of at least {MIN_PART_SIZE} bytes"
            )
        if copy_limit < 1:
            raise ValidationError(f"invalid copy_limit {copy_limit}: expected at least 1 byte")
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self.copy_limit = copy_limit
        self.before_write = before_write
        if concurrency < 1:
            raise ValidationError(f"invalid concurrency {concurrency}: expected at least 1")
        self.concurrency = concurrency
        self._root = f"{prefix}/" if prefix else ""
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
        )
        session = session if session is not None else boto3.session.Session()
        self._client = session.client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )
        self.endpoint = str(self._client.meta.endpoint_url)

    def __repr__(self) -> str:
        return f"S3BodyStore({self.location!r}, endpoint={self.endpoint!r})"

    @property
    def location(self) -> str:
        """``s3://bucket/prefix``: where the bodies are, for messages."""
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, digest: str) -> str:
        """The object key of ``digest``: ``<prefix>/objects/<2 hex>/<62 hex>``."""
        hexd = hex_of(parse_digest(digest))
        return f"{self._root}objects/{hexd[:2]}/{hexd[2:]}"

    def check(self) -> None:
        """Raise the typed error of an unreachable service, a bucket that does not
        exist or credentials that may not use it; return if the bucket answers."""
        try:
            self._call("check", self._root or "/", self._client.head_bucket, _missing=True)
        except _Missing:
            self._refused("check", self._root or "/", "NoSuchBucket", 404, "")

    # -- writing -----------------------------------------------------------------

    def add(self, data: bytes) -> Digest:
        """Store ``data``; return its digest. An existing body is not rewritten."""
        view = byte_view(data, "object data")
        digest = digest_bytes(view)  # type: ignore[arg-type]  # blake3 hashes any buffer
        self._announce([digest])
        self._write(digest, view)
        return digest

    def add_many(self, bodies: Sequence[bytes]) -> list[Digest]:
        """Store several bodies; return their digests in order. They are announced
        together (one ``before_write`` call) before any is written, then written
        up to ``concurrency`` at once; the first failure is raised once the
        writes already started have ended."""
        views = [byte_view(data, "object data") for data in bodies]
        digests = [digest_bytes(view) for view in views]  # type: ignore[arg-type]
        unique = dict(zip(digests, views, strict=True))
        if not unique:
            return []
        self._announce(list(unique))
        if len(unique) <= 1 or self.concurrency == 1:
            for digest, view in unique.items():
                self._write(digest, view)
            return digests
        with ThreadPoolExecutor(min(self.concurrency, len(unique))) as pool:
            futures = [pool.submit(self._write, digest, view) for digest, view in unique.items()]
        for future in futures:
            future.result()
        return digests

    def _write(self, digest: Digest, view: memoryview) -> None:
        """Write an announced body under its key (a no-op if it is there)."""
        key = self.key(digest)
        size = view.nbytes
        if size <= self.part_size:
            self._put(key, view)
        elif not self._present(key, size):
            self._multipart(key, _slices(view, self.part_size), conditional=True)

    def add_stream(self, stream: BinaryIO) -> tuple[Digest, int]:
        """Store everything ``stream`` yields, hashing while uploading; memory is
        about one part whatever the size."""
        hasher = new_hasher()
        first = _read_part(stream, self.part_size)
        rest = _read_part(stream, 1) if len(first) >= self.part_size else bytearray()
        if not rest:
            hasher.update(first)
            digest = finish(hasher)
            self._announce([digest])
            self._put(self.key(digest), first)
            return digest, len(first)
        staging = f"{self._root}tmp/{uuid.uuid4().hex}"
        total = 0

        def parts() -> Iterator[bytes | bytearray]:
            nonlocal total
            pending = first + rest
            while True:
                while len(pending) >= self.part_size:
                    part = pending[: self.part_size]
                    del pending[: self.part_size]
                    hasher.update(part)
                    total += len(part)
                    yield part
                more = _read_part(stream, self.part_size - len(pending))
                if not more:
                    break
                pending += more
            if pending:
                hasher.update(pending)
                total += len(pending)
                yield pending

        try:
            self._multipart(staging, parts(), conditional=False)
            digest = finish(hasher)
            self._announce([digest])
            key = self.key(digest)
            if not self._present(key, total):
                self._copy(staging, key, total)
        finally:
            with contextlib.suppress(RemoteStoreError):
                self._call("delete", staging, self._client.delete_object, Key=staging)
        return digest, total

    def delete(self, digest: str) -> bool:
        """Remove the body; return whether there was one. For gc only."""
        key = self.key(digest)
        if self._head(key) is None:
            return False
        self._call("delete", key, self._client.delete_object, Key=key)
        return True

    # -- reading -----------------------------------------------------------------

    def open(self, digest: str, *, verify: bool = False) -> BinaryIO:
        """A streaming reader of the body. With ``verify``, a damaged body raises
        CorruptObjectError before a byte of it is returned."""
        parsed = parse_digest(digest)
        key = self.key(parsed)
        response = self._get(parsed, key)
        size = int(response["ContentLength"])
        if not verify:
            return _reader(self, key, response["Body"], None)
        if size <= VERIFY_IN_MEMORY:
            data = self._read_all(key, response["Body"])
            check_bytes(parsed, data)
            return io.BytesIO(data)
        actual, count = self._hash_body(key, response["Body"])
        if actual != parsed:
            raise CorruptObjectError(parsed, f"{mismatch(actual, count)} (object {key})")
        again = self._get(parsed, key, if_match=str(response["ETag"]))
        return _reader(self, key, again["Body"], (parsed, count))

    def get(self, digest: str, *, verify: bool = False) -> bytes:
        """The body's bytes; ``verify`` re-hashes them first."""
        parsed = parse_digest(digest)
        key = self.key(parsed)
        data = self._read_all(key, self._get(parsed, key)["Body"])
        if verify:
            check_bytes(parsed, data)
        return data

    def exists(self, digest: str) -> bool:
        return self._head(self.key(digest)) is not None

    def __contains__(self, digest: object) -> bool:
        return self.exists(digest)  # type: ignore[arg-type]

    def size(self, digest: str) -> int:
        parsed = parse_digest(digest)
        head = self._head(self.key(parsed))
        if head is None:
            raise ObjectNotFound(parsed)
        return int(head["ContentLength"])

    def verify(self, digest: str) -> None:
        """Re-hash the body as it streams; CorruptObjectError if it is damaged."""
        parsed = parse_digest(digest)
        key = self.key(parsed)
        actual, count = self._hash_body(key, self._get(parsed, key)["Body"])
        if actual != parsed:
            raise CorruptObjectError(parsed, f"{mismatch(actual, count)} (object {key})")

    def all(self) -> Iterator[Digest]:
        """Every body's digest in digest order (S3 lists keys in byte order, and
        hex sorts the same way). Keys under ``objects/`` that are not a digest's
        are not bodies and are skipped."""
        for entry in self.entries():
            if entry.digest is not None:
                yield entry.digest

    def resolve(self, prefix: str) -> Digest:
        """The one body whose digest starts with ``prefix`` (4 to 64 hex digits)."""
        hexp = parse_prefix(prefix)
        if len(hexp) == 64:
            return one_match(prefix, {hexp} if self.exists(PREFIX + hexp) else set())
        under = f"{hexp[:2]}/{hexp[2:]}"
        return one_match(prefix, {hex_of(e.digest) for e in self.entries(under) if e.digest})

    def entries(self, under: str = "", *, staging: bool = False) -> Iterator[StoredObject]:
        """Every key under ``objects/`` (or, with ``staging``, under ``tmp/``, where
        large streams are assembled) with its size and time, in key order;
        ``under`` narrows the listing to keys that start with it there."""
        area = f"{self._root}{'tmp' if staging else 'objects'}/"
        start = area + under
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=start)
        iterator = iter(pages)
        while True:
            page = self._call("list", start, next, iterator, None, _bucket=False)
            if page is None:
                return
            for item in page.get("Contents", ()):
                match = None if staging else _OBJECT_KEY.fullmatch(item["Key"][len(area) :])
                digest = Digest(f"blake3:{match.group(1)}{match.group(2)}") if match else None
                modified = item["LastModified"].timestamp()
                yield StoredObject(item["Key"], digest, int(item["Size"]), modified)

    def delete_keys(self, keys: Sequence[str]) -> None:
        """Remove these keys (bodies or staging objects) in requests of up to
        1,000, S3's limit. For gc only."""
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start : start + DELETE_BATCH]]
            answer = self._call(
                "delete",
                batch[0]["Key"],
                self._client.delete_objects,
                Delete={"Objects": batch, "Quiet": True},
            )
            failed = answer.get("Errors", [])
            if failed:
                first = failed[0]
                self._refused(
                    "delete",
                    first.get("Key", "?"),
                    str(first.get("Code", "")),
                    None,
                    str(first.get("Message", "")),
                )

    # -- batches: every add is durable when it returns ----------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[S3BodyStore]:
        yield self

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> S3BodyStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- requests ----------------------------------------------------------------

    def _announce(self, digests: Sequence[Digest]) -> None:
        if self.before_write is not None:
            self.before_write(digests)

    def _put(self, key: str, body: bytes | bytearray | memoryview) -> None:
        try:
            self._call(
                "put",
                key,
                self._client.put_object,
                Key=key,
                Body=bytes(body),
                IfNoneMatch="*",
                _precondition=True,
            )
        except _PreconditionFailed:
            self._check_existing(key, len(body))

    def _present(self, key: str, size: int) -> bool:
        """Whether ``key`` holds a body of ``size`` bytes; damage if another size."""
        head = self._head(key)
        if head is None:
            return False
        self._check_size(key, int(head["ContentLength"]), size)
        return True

    def _check_existing(self, key: str, size: int) -> None:
        head = self._head(key)
        if head is None:  # deleted since the 412: write again
            raise RemoteStoreError(
                f"object {key} in {self.location} was refused as existing, then found absent; "
                "a gc ran at the same time? retry the write"
            )
        self._check_size(key, int(head["ContentLength"]), size)

    def _check_size(self, key: str, found: int, size: int) -> None:
        if found != size:
            raise DamagedStoreError(
                f"object {key} in {self.location} holds {found} bytes but the body its "
                f"name digests has {size}: the object is damaged; delete it and add the "
                "body again, or restore it from a backup"
            )

    def _multipart(
        self, key: str, parts: Iterator[bytes | bytearray], *, conditional: bool
    ) -> None:
        created = self._call("multipart upload", key, self._client.create_multipart_upload, Key=key)
        upload_id = created["UploadId"]
        done: list[dict[str, Any]] = []
        try:
            for number, part in enumerate(parts, start=1):
                answer = self._call(
                    "upload part",
                    key,
                    self._client.upload_part,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=bytes(part),
                )
                done.append({"ETag": answer["ETag"], "PartNumber": number})
            self._complete(key, upload_id, done, conditional=conditional)
        except BaseException:
            with contextlib.suppress(RemoteStoreError):
                self._call(
                    "abort upload",
                    key,
                    self._client.abort_multipart_upload,
                    Key=key,
                    UploadId=upload_id,
                )
            raise

    def _complete(
        self, key: str, upload_id: str, parts: list[dict[str, Any]], *, conditional: bool
    ) -> None:
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if conditional else {}
        self._call(
            "complete upload",
            key,
            self._client.complete_multipart_upload,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
            _precondition=conditional,
            **extra,
        )

    def _copy(self, source: str, key: str, size: int) -> None:
        """Copy the staging object ``source`` to ``key`` unless ``key`` exists."""
        copy_source = {"Bucket": self.bucket, "Key": source}
        try:
            if size <= self.copy_limit:
                self._call(
                    "copy",
                    key,
                    self._client.copy_object,
                    Key=key,
                    CopySource=copy_source,
                    IfNoneMatch="*",
                    _precondition=True,
                )
                return
            created = self._call(
                "multipart copy", key, self._client.create_multipart_upload, Key=key
            )
            upload_id = created["UploadId"]
            parts: list[dict[str, Any]] = []
            try:
                for number, start in enumerate(range(0, size, self.copy_limit), start=1):
                    end = min(start + self.copy_limit, size) - 1
                    answer = self._call(
                        "copy part",
                        key,
                        self._client.upload_part_copy,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource=copy_source,
                        CopySourceRange=f"bytes={start}-{end}",
                    )
                    parts.append({"ETag": answer["CopyPartResult"]["ETag"], "PartNumber": number})
                self._complete(key, upload_id, parts, conditional=True)
            except BaseException:
                with contextlib.suppress(RemoteStoreError):
                    self._call(
                        "abort copy",
                        key,
                        self._client.abort_multipart_upload,
                        Key=key,
                        UploadId=upload_id,
                    )
                raise
        except _PreconditionFailed:
            self._check_existing(key, size)

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self._call(
                "head", key, self._client.head_object, Key=key, _missing=True
            )
        except _Missing:
            return None
        return head

    def _get(self, digest: Digest, key: str, *, if_match: str | None = None) -> dict[str, Any]:
        extra: dict[str, Any] = {"IfMatch": if_match} if if_match is not None else {}
        try:
            response: dict[str, Any] = self._call(
                "get",
                key,
                self._client.get_object,
                Key=key,
                _missing=True,
                _precondition=if_match is not None,
                **extra,
            )
        except _Missing:
            raise ObjectNotFound(digest) from None
        except _PreconditionFailed:
            raise CorruptObjectError(
                digest, f"object {key} changed between the verifying pass and the read"
            ) from None
        return response

    def _read_all(self, key: str, body: Any) -> bytes:
        with contextlib.closing(body):
            data: bytes = self._call("read", key, body.read, _bucket=False)
        return data

    def _hash_body(self, key: str, body: Any) -> tuple[Digest, int]:
        hasher = new_hasher()
        count = 0
        with contextlib.closing(body):
            while chunk := self._call("read", key, body.read, CHUNK_SIZE, _bucket=False):
                hasher.update(chunk)
                count += len(chunk)
        return finish(hasher), count

    def _call(
        self,
        operation: str,
        key: str,
        function: Any,
        *args: Any,
        _missing: bool = False,
        _precondition: bool = False,
        _bucket: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Run one request; map what the service or the network says to a typed error."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            HTTPClientError,
            ReadTimeoutError,
            ResponseStreamingError,
        )
        from urllib3.exceptions import HTTPError as Urllib3Error

        if _bucket:
            kwargs["Bucket"] = self.bucket
        try:
            return function(*args, **kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if _missing and (code in _MISSING or status == 404):
                raise _Missing from None
            if _precondition and (code == "PreconditionFailed" or status == 412):
                raise _PreconditionFailed from None
            self._refused(operation, key, code, status, str(error.get("Message", "")))
        except (ConnectionError, HTTPClientError, ReadTimeoutError) as exc:
            self._unreachable(operation, key, exc)
        except (ResponseStreamingError, Urllib3Error, OSError) as exc:
            self._unreachable(operation, key, exc)
        except BotoCoreError as exc:
            raise RemoteStoreError(
                f"{operation} of {key} in {self.location} at {self.endpoint} failed: "
                f"{type(exc).__name__}"
            ) from None

    def _unreachable(self, operation: str, key: str, exc: BaseException) -> NoReturn:
        raise RemoteStoreUnreachableError(
            f"the object store at {self.endpoint} is unreachable: {operation} of {key} "
            f"failed ({type(exc).__name__}); nothing unacknowledged was kept, retry when "
            "it answers"
        ) from None

    def _refused(
        self, operation: str, key: str, code: str, status: object, message: str
    ) -> NoReturn:
        if code in _DENIED or status == 403:
            raise RemoteStoreAccessError(
                f"access denied to {self.location} at {self.endpoint} ({operation} of {key}, "
                f"{code or status}): check the credentials' permissions on that bucket and prefix"
            )
        if code == "NoSuchBucket":
            raise RemoteStoreError(
                f"no bucket {self.bucket!r} at {self.endpoint}: create it before storing "
                f"bodies in {self.location}"
            )
        raise RemoteStoreError(
            f"{operation} of {key} in {self.location} at {self.endpoint} was refused: "
            f"{code or status} {message}".rstrip()
        )


class _Missing(Exception):
    """A 404 where absence is an answer."""


class _PreconditionFailed(Exception):
    """A 412 where the caller asked for a condition."""


class _StreamReader(io.RawIOBase):
    """A raw reader over an S3 response body; with ``expected``, it re-hashes
    what passes through and checks it at the end."""

    def __init__(
        self, store: S3BodyStore, key: str, body: Any, expected: tuple[Digest, int] | None
    ):
        super().__init__()
        self._store = store
        self._key = key
        self._body = body
        self._check = None if expected is None else ReadCheck(*expected, "object")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        with memoryview(buffer) as view:
            chunk: bytes = self._store._call(
                "read", self._key, self._body.read, len(view), _bucket=False
            )
            count = len(chunk)
            view[:count] = chunk
        if count:
            if self._check is not None:
                self._check.update(chunk)
            return count
        if self._check is not None:
            self._check.finish()
        return 0

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _reader(
    store: S3BodyStore, key: str, body: Any, expected: tuple[Digest, int] | None
) -> BinaryIO:
    return io.BufferedReader(_StreamReader(store, key, body, expected), CHUNK_SIZE)


def _read_part(stream: BinaryIO, limit: int) -> bytearray:
    """Up to ``limit`` bytes of ``stream`` (fewer only at its end)."""
    part = bytearray()
    while len(part) < limit:
        chunk = stream.read(min(CHUNK_SIZE, limit - len(part)))
        if not chunk:
            break
        part += byte_view(chunk, "what the stream's read() returned")
    return part


def _slices(view: memoryview, size: int) -> Iterator[bytes]:
    for start in range(0, view.nbytes, size):
        yield bytes(view[start : start + size])


if TYPE_CHECKING:  # mypy checks here that the class satisfies BodyStore
    _S3_STORE: type[BodyStore] = S3BodyStore
