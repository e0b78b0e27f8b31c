"""S3BodyStore against a real S3-compatible server (SeaweedFS, started by a fixture).

The body-store contract runs on it in ``test_body_stores.py``; these are what
only an object store has: its key layout, conditional writes, multipart
streaming in bounded memory, and the service failing or refusing.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence

import blake3
import pytest

from kontextual_engine.digests import digest_bytes
from kontextual_engine.errors import (
    CorruptObjectError,
    DamagedStoreError,
    RemoteStoreAccessError,
    RemoteStoreUnreachableError,
    ValidationError,
)
from kontextual_engine.storage.s3 import MIN_PART_SIZE, S3BodyStore

from .s3server import ACCESS_KEY, SECRET_KEY, SeaweedServer

MIB = 1 << 20


def store(server: SeaweedServer, bucket: str, **policy: object) -> S3BodyStore:
    return S3BodyStore(
        bucket,
        "team/bodies",
        endpoint_url=server.endpoint,
        session=server.session(),
        part_size=MIN_PART_SIZE,
        **policy,  # type: ignore[arg-type]
    )


def raw(server: SeaweedServer, bucket: str, key: str) -> bytes:
    body: bytes = server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def keys(server: SeaweedServer, bucket: str) -> list[str]:
    listing = server.client().list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", ()))


def test_each_body_is_one_object_of_its_exact_bytes_under_its_digest(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    bodies = store(s3_server, s3_bucket)
    small = b"a small body"
    large = os.urandom(2 * MIN_PART_SIZE + 17)  # multipart, straight to its key
    streamed = os.urandom(MIN_PART_SIZE + 5)  # multipart through a staging key
    digests = [bodies.add(small), bodies.add(large), bodies.add_stream(io.BytesIO(streamed))[0]]
    for digest, data in zip(digests, (small, large, streamed), strict=True):
        hexd = digest.removeprefix("blake3:")
        key = f"team/bodies/objects/{hexd[:2]}/{hexd[2:]}"
        assert bodies.key(digest) == key
        stored = raw(s3_server, s3_bucket, key)
        assert stored == data
        assert blake3.blake3(stored).hexdigest() == hexd  # no tool of ours needed
    # Nothing else is left behind: no staging key, no unfinished upload.
    assert keys(s3_server, s3_bucket) == sorted(bodies.key(d) for d in digests)
    uploads = s3_server.client().list_multipart_uploads(Bucket=s3_bucket)
    assert not uploads.get("Uploads")


def test_add_many_announces_every_body_once_before_writing_any(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    """One announcement for the batch (repeats once), made before the first
    write; the digests come back in the order given, and each body is stored."""
    announced: list[list[str]] = []
    present_when_announced: list[bool] = []
    bodies = store(s3_server, s3_bucket, concurrency=4)

    def before_write(digests: Sequence[str]) -> None:
        announced.append(list(digests))
        present_when_announced.extend(bodies.exists(digest) for digest in digests)

    bodies.before_write = before_write
    data = [b"first", os.urandom(2 * MIN_PART_SIZE + 3), b"third", b"first"] + [
        f"body {number}".encode() for number in range(10)
    ]
    digests = bodies.add_many(data)
    assert digests == [digest_bytes(item) for item in data]
    assert announced == [list(dict.fromkeys(digests))]
    assert present_when_announced == [False] * len(announced[0])
    for digest, item in zip(digests, data, strict=True):
        assert bodies.get(digest, verify=True) == item
    assert bodies.add_many([]) == []


def test_add_many_raises_the_first_failure_after_the_other_writes_end(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    bodies = store(s3_server, s3_bucket, concurrency=4)
    damaged = b"will be another size"
    s3_server.client().put_object(
        Bucket=s3_bucket, Key=bodies.key(digest_bytes(damaged)), Body=b"short"
    )
    good = [f"good {number}".encode() for number in range(6)]
    with pytest.raises(DamagedStoreError, match="holds 5 bytes"):
        bodies.add_many([*good, damaged])
    assert all(bodies.exists(digest_bytes(item)) for item in good)


def test_an_existing_body_of_the_same_size_is_success_without_rewriting(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    bodies = store(s3_server, s3_bucket)
    client = s3_server.client()
    for data in (b"same body", os.urandom(MIN_PART_SIZE + 3)):
        digest = bodies.add(data)
        before = client.head_object(Bucket=s3_bucket, Key=bodies.key(digest))
        assert bodies.add(data) == digest
        assert bodies.add_stream(io.BytesIO(data)) == (digest, len(data))
        after = client.head_object(Bucket=s3_bucket, Key=bodies.key(digest))
        assert (after["ETag"], after["LastModified"]) == (before["ETag"], before["LastModified"])


@pytest.mark.parametrize("size", [100, MIN_PART_SIZE + 3], ids=["put", "multipart"])
def test_an_existing_object_of_another_size_is_damage_naming_the_key(
    s3_server: SeaweedServer, s3_bucket: str, size: int
) -> None:
    bodies = store(s3_server, s3_bucket)
    data = os.urandom(size)
    key = bodies.key(digest_bytes(data))
    s3_server.client().put_object(Bucket=s3_bucket, Key=key, Body=b"truncated")
    with pytest.raises(DamagedStoreError, match=f"{key}.*holds 9 bytes.*has {size}"):
        bodies.add(data)
    with pytest.raises(DamagedStoreError, match=key):
        bodies.add_stream(io.BytesIO(data))
    assert raw(s3_server, s3_bucket, key) == b"truncated"  # refused, not overwritten
    assert [k for k in keys(s3_server, s3_bucket) if "/tmp/" in k] == []


def test_a_body_over_the_copy_limit_is_copied_part_by_part(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    bodies = store(s3_server, s3_bucket, copy_limit=MIN_PART_SIZE)
    data = os.urandom(2 * MIN_PART_SIZE + 11)
    digest, size = bodies.add_stream(io.BytesIO(data))
    assert (digest, size) == (digest_bytes(data), len(data))
    assert raw(s3_server, s3_bucket, bodies.key(digest)) == data
    assert keys(s3_server, s3_bucket) == [bodies.key(digest)]


def test_a_corrupted_object_fails_verified_reads(s3_server: SeaweedServer, s3_bucket: str) -> None:
    bodies = store(s3_server, s3_bucket)
    data = os.urandom(3 * MIB)
    digest = bodies.add(data)
    damaged = bytearray(data)
    damaged[MIB] ^= 0xFF
    s3_server.client().put_object(Bucket=s3_bucket, Key=bodies.key(digest), Body=bytes(damaged))
    with pytest.raises(CorruptObjectError, match=digest):
        bodies.open(digest, verify=True)
    with pytest.raises(CorruptObjectError, match=digest):
        bodies.verify(digest)
    with bodies.open(digest) as reader:
        assert reader.read() == damaged


def test_streaming_a_body_many_parts_long_keeps_memory_bounded(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    """A child process streams 16 parts' worth in and out; its peak RSS grows
    by a few parts, not by the body."""
    program = textwrap.dedent(
        f"""
        import hashlib, io, sys
        import boto3
        from kontextual_engine.storage.s3 import S3BodyStore

        def hwm():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024

        class Zeros(io.RawIOBase):
            def __init__(self, size):
                self.left = size
            def readable(self):
                return True
            def readinto(self, buffer):
                n = min(len(buffer), self.left)
                buffer[:n] = bytes(n)
                self.left -= n
                return n

        session = boto3.session.Session(
            aws_access_key_id={ACCESS_KEY!r}, aws_secret_access_key={SECRET_KEY!r},
            region_name="us-east-1")
        part = {MIN_PART_SIZE}
        store = S3BodyStore({s3_bucket!r}, "m", endpoint_url={s3_server.endpoint!r},
                            session=session, part_size=part)
        store.add(b"warm up")
        base = hwm()
        size = int(sys.argv[1]) * part + 1
        digest, n = store.add_stream(io.BufferedReader(Zeros(size)))
        assert n == size, n
        with store.open(digest, verify=True) as reader:
            while reader.read(1 << 20):
                pass
        print(hwm() - base, size)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", program, "16"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    growth, size = map(int, out.stdout.split())
    # Measured: about 6 parts (the pending part, its copy, the request's) for
    # 8 parts as for 16; the body is 16 parts.
    assert growth < 7 * MIN_PART_SIZE and size > 15 * MIN_PART_SIZE, (growth, size)


def test_access_denied_names_the_bucket_and_prefix_and_no_secret(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    bodies = S3BodyStore(
        s3_bucket,
        "team/bodies",
        endpoint_url=s3_server.endpoint,
        session=s3_server.session(denied=True),
    )
    for call in (lambda: bodies.add(b"x"), lambda: bodies.get(digest_bytes(b"x")), bodies.all):
        with pytest.raises(RemoteStoreAccessError) as caught:
            list(call())  # type: ignore[call-overload]
        message = str(caught.value)
        assert f"s3://{s3_bucket}/team/bodies" in message
        assert "secret" not in message and "key-" not in message.replace("/", "")


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValidationError, match="part_size"):
        S3BodyStore("bucket", part_size=MIB)
    with pytest.raises(ValidationError, match="concurrency"):
        S3BodyStore("bucket", concurrency=0)
    with pytest.raises(ValidationError, match="prefix"):
        S3BodyStore("bucket", "a/../b")
    with pytest.raises(ValidationError, match="bucket"):
        S3BodyStore("")


def test_a_stopped_server_is_a_typed_error_and_a_restarted_one_works(
    s3_server: SeaweedServer, s3_bucket: str
) -> None:
    bodies = store(s3_server, s3_bucket, connect_timeout=1, read_timeout=5, max_attempts=1)
    data = os.urandom(3 * MIB)
    digest = bodies.add(data)
    reader = bodies.open(digest)
    assert reader.read(1000) == data[:1000]
    s3_server.stop()
    try:
        endpoint = s3_server.endpoint
        with pytest.raises(RemoteStoreUnreachableError, match=f"object store at {endpoint}"):
            bodies.add(b"while stopped")
        with pytest.raises(RemoteStoreUnreachableError, match=endpoint):
            bodies.get(digest)
        with pytest.raises(RemoteStoreUnreachableError, match=endpoint):
            bodies.add_stream(io.BytesIO(os.urandom(MIN_PART_SIZE + 1)))
        reader.close()
    finally:
        s3_server.start()
    assert bodies.get(digest, verify=True) == data
    assert bodies.get(bodies.add(b"after restart")) == b"after restart"
