"""The body-store contract, run against every BodyStore implementation."""

from __future__ import annotations

import io
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from mypy import api

from kontextual_engine.digests import digest_bytes
from kontextual_engine.errors import CorruptObjectError, ObjectNotFound, ValidationError
from kontextual_engine.storage.bodies import BodyStore, MemoryBodyStore
from kontextual_engine.storage.objects import ObjectStore
from kontextual_engine.storage.s3 import MIN_PART_SIZE, S3BodyStore

from .s3server import SeaweedServer

MIB = 1 << 20
MALFORMED = [
    "",
    "blake3:",
    "blake3:" + "0" * 63,
    "blake3:" + "A" * 64,
    "sha256:" + "0" * 64,
    "blake3:../../../etc/passwd",
    "../" + "0" * 62,
    None,
    42,
]
ABSENT = digest_bytes(b"never stored")


def make_s3(server: SeaweedServer, bucket: str) -> S3BodyStore:
    """An S3 store whose parts are as small as S3 allows, so that a few
    mebibytes already go through multipart upload and the staging copy."""
    return S3BodyStore(
        bucket,
        "bodies",
        endpoint_url=server.endpoint,
        session=server.session(),
        part_size=MIN_PART_SIZE,
    )


@pytest.fixture(params=["objects", "memory", "s3"])
def bodies(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BodyStore]:
    store: BodyStore
    if request.param == "objects":
        store = ObjectStore(tmp_path / "store")
    elif request.param == "memory":
        store = MemoryBodyStore()
    else:
        store = make_s3(request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket"))
    yield store
    store.close()


def tamper(store: BodyStore, digest: str, data: bytes) -> None:
    """Replace a body's bytes behind the store's back."""
    if isinstance(store, S3BodyStore):
        store._client.put_object(Bucket=store.bucket, Key=store.key(digest), Body=data)
    elif isinstance(store, ObjectStore):
        path = store.path(digest)
        path.chmod(0o644)
        path.write_bytes(data)
    else:
        assert isinstance(store, MemoryBodyStore)
        store._bodies[digest] = data  # type: ignore[index]


class Chunked(io.RawIOBase):
    """A stream that returns at most ``chunk`` bytes per read."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self._data = memoryview(data)
        self._chunk = chunk
        self.reads = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        piece = bytes(self._data[: self._chunk])
        self._data = self._data[len(piece) :]
        return piece


def test_both_stores_satisfy_the_protocol(tmp_path: Path) -> None:
    with ObjectStore(tmp_path / "store") as objects:
        assert isinstance(objects, BodyStore)
    assert isinstance(MemoryBodyStore(), BodyStore)
    assert isinstance(S3BodyStore("bucket", endpoint_url="http://127.0.0.1:9"), BodyStore)
    assert not isinstance(object(), BodyStore)
    assert not isinstance(io.BytesIO(), BodyStore)


def test_mypy_accepts_both_stores_as_a_body_store_and_refuses_others(tmp_path: Path) -> None:
    program = tmp_path / "uses_bodies.py"
    program.write_text(
        textwrap.dedent(
            """
            from kontextual_engine.storage.bodies import BodyStore, MemoryBodyStore
            from kontextual_engine.storage.objects import ObjectStore
            from kontextual_engine.storage.s3 import S3BodyStore

            def keep(store: BodyStore, data: bytes) -> str:
                with store.batch():
                    digest = store.add(data)
                return digest

            keep(ObjectStore("/tmp/x"), b"a")
            keep(MemoryBodyStore(), b"b")
            keep(S3BodyStore("bucket"), b"d")
            keep(dict(), b"c")  # not a body store
            """
        )
    )
    out, err, status = api.run(
        ["--strict", "--no-error-summary", "--cache-dir", str(tmp_path / "cache"), str(program)]
    )
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert status == 1, out + err
    assert len(errors) == 1 and ":14:" in errors[0] and "BodyStore" in errors[0], out + err


def test_add_and_get_round_trip(bodies: BodyStore) -> None:
    for data in (b"", b"one body", bytes(range(256)) * 100, bytearray(b"mutable")):
        digest = bodies.add(data)
        assert digest == digest_bytes(bytes(data))
        assert bodies.get(digest) == data
        assert bodies.get(digest, verify=True) == data
        assert bodies.size(digest) == len(data)
        assert bodies.exists(digest)
        bodies.verify(digest)


def test_add_refuses_what_is_not_bytes(bodies: BodyStore) -> None:
    with pytest.raises(ValidationError, match="must be bytes, not str"):
        bodies.add("text")  # type: ignore[arg-type]
    assert list(bodies.all()) == []


def test_add_stream_of_several_mebibytes_in_chunks(bodies: BodyStore) -> None:
    data = os.urandom(5 * MIB + 123)
    stream = Chunked(data, 64 * 1024 + 7)
    digest, size = bodies.add_stream(stream)  # type: ignore[arg-type]
    assert (digest, size) == (digest_bytes(data), len(data))
    assert stream.reads > 80  # really read in chunks
    assert bodies.get(digest, verify=True) == data
    with bodies.open(digest, verify=True) as reader:
        assert reader.read() == data
    assert bodies.add_stream(io.BytesIO(data)) == (digest, size)
    assert list(bodies.all()) == [digest]


def test_add_is_idempotent(bodies: BodyStore) -> None:
    first = bodies.add(b"twice")
    assert bodies.add(b"twice") == first
    assert bodies.add_stream(io.BytesIO(b"twice")) == (first, 5)
    assert list(bodies.all()) == [first]


def test_exists_delete_and_all(bodies: BodyStore) -> None:
    digests = [bodies.add(b"body %d" % i) for i in range(5)]
    assert list(bodies.all()) == sorted(digests)
    assert bodies.delete(digests[0]) is True
    assert bodies.delete(digests[0]) is False
    assert not bodies.exists(digests[0])
    assert list(bodies.all()) == sorted(digests[1:])
    with pytest.raises(ObjectNotFound):
        bodies.get(digests[0])


def test_batch_makes_bodies_readable_by_exit(bodies: BodyStore) -> None:
    with bodies.batch():
        inside = bodies.add(b"in a batch")
        assert bodies.exists(inside)
    bodies.flush()
    assert bodies.get(inside, verify=True) == b"in a batch"
    assert list(bodies.all()) == [inside]


def test_open_with_verify_refuses_a_damaged_body(bodies: BodyStore) -> None:
    small = bodies.add(b"small body")
    large_data = os.urandom(2 * MIB)
    large = bodies.add(large_data)
    tamper(bodies, small, b"SMALL body")
    tamper(bodies, large, bytes([large_data[0] ^ 1]) + large_data[1:])
    for digest in (small, large):
        with pytest.raises(CorruptObjectError, match=digest):
            bodies.open(digest, verify=True)
        with pytest.raises(CorruptObjectError, match=digest):
            bodies.get(digest, verify=True)
        with pytest.raises(CorruptObjectError, match=digest):
            bodies.verify(digest)
    with bodies.open(small) as reader:  # without verify: the bytes as they are
        assert reader.read() == b"SMALL body"


@pytest.mark.parametrize("digest", MALFORMED, ids=repr)
def test_malformed_digests_are_refused(bodies: BodyStore, digest: object) -> None:
    for call in (
        bodies.get,
        bodies.open,
        bodies.exists,
        bodies.delete,
        bodies.verify,
        bodies.size,
    ):
        with pytest.raises(ValidationError, match="invalid digest"):
            call(digest)  # type: ignore[operator]


def test_missing_digests_are_not_found(bodies: BodyStore) -> None:
    for call in (bodies.get, bodies.open, bodies.verify, bodies.size):
        with pytest.raises(ObjectNotFound, match=ABSENT):
            call(ABSENT)  # type: ignore[operator]
    assert bodies.exists(ABSENT) is False
    assert bodies.delete(ABSENT) is False


def test_bare_hex_digests_mean_the_same_body(bodies: BodyStore) -> None:
    digest = bodies.add(b"bare")
    bare = digest.removeprefix("blake3:")
    assert bodies.exists(bare) and bodies.get(bare) == b"bare"


def test_a_digest_prefix_resolves_to_its_one_body(bodies: BodyStore) -> None:
    """Every body store resolves a unique prefix (4 to 64 hex digits, with or
    without ``blake3:``), refuses an ambiguous one naming the bodies, and finds
    none for a prefix no body has."""
    from kontextual_engine.errors import AmbiguousPrefixError

    # Two bodies whose digests share their first 4 hex digits, found by hashing.
    by_prefix: dict[str, bytes] = {}
    number = 0
    while True:
        content = b"body %d" % number
        prefix = digest_bytes(content).removeprefix("blake3:")[:4]
        if prefix in by_prefix:
            break
        by_prefix[prefix] = content
        number += 1
    first, second = bodies.add(by_prefix[prefix]), bodies.add(content)
    assert bodies.resolve(first) == first
    assert bodies.resolve(first.removeprefix("blake3:")) == first
    assert bodies.resolve(second.removeprefix("blake3:")[:20]) == second
    with pytest.raises(AmbiguousPrefixError, match=rf"{prefix}.*ambiguous.*2 objects"):
        bodies.resolve(prefix)
    missing = next(p for p in ("0000", "ffff", "1234") if p != prefix)
    with pytest.raises(ObjectNotFound):
        bodies.resolve(missing)
