"""The content-addressed object store (docs/store-format.md)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kontextual_engine.digests import digest_bytes
from kontextual_engine.errors import (
    AmbiguousPrefixError,
    CorruptObjectError,
    KontextualError,
    ObjectNotFound,
    ReadOnlyStoreError,
    StoreFormatError,
    ValidationError,
)
from kontextual_engine.storage import durable
from kontextual_engine.storage.objects import (
    MARKER_TEXT,
    SYNCFS_MIN,
    Durability,
    ObjectStats,
    ObjectStore,
    Problem,
)

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
WORKER = HERE / "objects_worker.py"
MIB = 1 << 20


def _load_worker() -> Any:
    spec = importlib.util.spec_from_file_location("objects_worker", WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()


def worker_cmd(*args: str) -> list[str]:
    return [sys.executable, str(WORKER), *args]


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return env


def object_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "objects").rglob("*") if p.is_file())


def tree(path: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every entry under ``path`` with its type bits and (for files) contents."""
    out: dict[str, tuple[int, bytes | None]] = {}
    for p in sorted(path.rglob("*")):
        st_ = os.lstat(p)
        data = p.read_bytes() if stat.S_ISREG(st_.st_mode) else None
        out[str(p.relative_to(path))] = (stat.S_IFMT(st_.st_mode), data)
    return out


@contextlib.contextmanager
def writable(path: Path) -> Iterator[None]:
    """Make a read-only object file writable for a moment, to damage it."""
    mode = stat.S_IMODE(os.lstat(path).st_mode)
    os.chmod(path, 0o644)
    try:
        yield
    finally:
        os.chmod(path, mode)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(root: Path) -> ObjectStore:
    return ObjectStore(root)


# -- creating and opening a store ---------------------------------------------------


def test_init_creates_layout_and_marker(root: Path) -> None:
    store = ObjectStore(root)
    assert store.root == root
    assert store.durability is Durability.FULL
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    assert (root / "objects").is_dir() and not (root / "objects").is_symlink()
    assert (root / "tmp").is_dir()
    marker = (root / "kontextual.json").read_text()
    assert marker == MARKER_TEXT
    assert json.loads(marker) == {"format": "kontextual-store", "version": 1, "digest": "blake3"}
    assert sorted(os.listdir(root)) == ["kontextual.json", "objects", "tmp"]
    assert os.listdir(root / "tmp") == []


def test_reopen_keeps_objects(root: Path) -> None:
    digest = ObjectStore(root).add(b"kept")
    again = ObjectStore(root, create=False)
    assert again.get(digest) == b"kept"
    assert ObjectStore(root, read_only=True).get(digest) == b"kept"


def test_init_in_existing_empty_directory(tmp_path: Path) -> None:
    tmp_path.joinpath("empty").mkdir()
    store = ObjectStore(tmp_path / "empty")
    assert (tmp_path / "empty" / "kontextual.json").is_file()
    assert store.add(b"x") == digest_bytes(b"x")


def test_init_completes_an_interrupted_init(root: Path) -> None:
    # A crash between creating the directories and writing the marker leaves this.
    (root / "objects").mkdir(parents=True)
    (root / "tmp").mkdir()
    (root / "tmp" / "123.0.tmp").write_text("half a marker")
    ObjectStore(root)
    assert (root / "kontextual.json").read_text() == MARKER_TEXT


@pytest.mark.parametrize("kwargs", [{"create": False}, {"read_only": True}])
def test_missing_store_is_not_created_without_create(
    tmp_path: Path, kwargs: dict[str, bool]
) -> None:
    with pytest.raises(StoreFormatError, match="does not exist"):
        ObjectStore(tmp_path / "nope", **kwargs)
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("kwargs", [{"create": False}, {"read_only": True}])
def test_empty_directory_without_marker_refused_without_create(
    tmp_path: Path, kwargs: dict[str, bool]
) -> None:
    with pytest.raises(StoreFormatError, match=r"kontextual\.json is missing"):
        ObjectStore(tmp_path, **kwargs)
    assert os.listdir(tmp_path) == []


def test_missing_marker_with_objects_is_refused(root: Path) -> None:
    ObjectStore(root).add(b"body")
    (root / "kontextual.json").unlink()
    with pytest.raises(StoreFormatError, match=r"objects/ with content but no kontextual\.json"):
        ObjectStore(root)
    assert not (root / "kontextual.json").exists()


def test_directory_with_unrelated_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreFormatError, match=r"not empty \(notes\.txt\)"):
        ObjectStore(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_index_without_marker_is_refused(tmp_path: Path) -> None:
    (tmp_path / "index.sqlite").write_bytes(b"SQLite format 3\x00")
    with pytest.raises(StoreFormatError):
        ObjectStore(tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"format": "git", "version": 1, "digest": "blake3"}', "names format 'git'"),
        ('{"version": 1, "digest": "blake3"}', "names format None"),
        ('{"format": "kontextual-store", "version": 2, "digest": "blake3"}', "newer"),
        ('{"format": "kontextual-store", "version": 99, "digest": "blake3"}', "upgrade"),
        ('{"format": "kontextual-store", "version": 0, "digest": "blake3"}', "invalid format"),
        ('{"format": "kontextual-store", "version": "1", "digest": "blake3"}', "invalid format"),
        ('{"format": "kontextual-store", "version": true, "digest": "blake3"}', "invalid format"),
        ('{"format": "kontextual-store", "version": 1, "digest": "sha256"}', "'sha256'"),
        ('{"format": "kontextual-store", "version": 1}', "digest algorithm None"),
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("\xff\xfe", "not valid JSON"),
        ("[1]", "JSON object"),
    ],
)
def test_bad_marker_is_refused(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "kontextual.json").write_bytes(text.encode("latin-1"))
    for kwargs in ({}, {"read_only": True}, {"create": False}):
        with pytest.raises(StoreFormatError, match=message):
            ObjectStore(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert sorted(os.listdir(tmp_path)) == ["kontextual.json"]


def test_marker_symlink_is_refused(root: Path, tmp_path: Path) -> None:
    ObjectStore(root)
    real = tmp_path / "elsewhere.json"
    real.write_text(MARKER_TEXT)
    (root / "kontextual.json").unlink()
    (root / "kontextual.json").symlink_to(real)
    with pytest.raises(StoreFormatError, match="symbolic link"):
        ObjectStore(root)


@pytest.mark.parametrize("name", ["objects", "tmp"])
def test_layout_directory_replaced_by_symlink_or_file_is_refused(
    root: Path, tmp_path: Path, name: str
) -> None:
    ObjectStore(root)
    shutil.rmtree(root / name)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / name).symlink_to(outside)
    with pytest.raises(StoreFormatError, match="symbolic link, expected a directory"):
        ObjectStore(root)
    (root / name).unlink()
    (root / name).write_text("a file")
    with pytest.raises(StoreFormatError, match="regular file, expected a directory"):
        ObjectStore(root)
    assert os.listdir(outside) == []


def test_durability_and_options_are_validated(root: Path) -> None:
    assert ObjectStore(root, durability="batch").durability is Durability.BATCH
    assert ObjectStore(root, durability=Durability.NONE).durability is Durability.NONE
    with pytest.raises(ValidationError, match="invalid durability 'fast'"):
        ObjectStore(root, durability="fast")
    for bad in (0o200, 0o644, 0o044, 0o4444, True, "0o444"):
        with pytest.raises(ValidationError, match="file_mode"):
            ObjectStore(root, file_mode=bad)  # type: ignore[arg-type]


# -- layout, reading and writing ------------------------------------------------------


def test_add_get_and_layout(store: ObjectStore, root: Path) -> None:
    data = b"hello, world\n"
    digest = store.add(data)
    hexd = blake3.blake3(data).hexdigest()
    assert digest == "blake3:" + hexd == digest_bytes(data)
    path = root / "objects" / hexd[:2] / hexd[2:]
    assert store.path(digest) == path
    assert store.path(hexd) == path  # the bare form a user types
    assert path.read_bytes() == data  # raw bytes: no header, no compression
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o444
    assert store.get(digest) == data
    assert store.get(digest, verify=True) == data
    assert store.exists(digest) and digest in store and hexd in store
    assert store.size(digest) == len(data)
    with store.open(digest) as reader:
        assert reader.read() == data
    with store.open(digest, verify=True) as reader:
        assert reader.read() == data
    store.verify(digest)
    assert store.tmp_files() == []


def test_object_mode_ignores_umask(root: Path) -> None:
    old = os.umask(0o077)
    try:
        store = ObjectStore(root)
        digest = store.add(b"umask")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.lstat(store.path(digest)).st_mode) == 0o444


def test_custom_file_mode(root: Path) -> None:
    store = ObjectStore(root, file_mode=0o400)
    assert stat.S_IMODE(os.lstat(store.path(store.add(b"private"))).st_mode) == 0o400


def test_empty_body(store: ObjectStore) -> None:
    digest = store.add(b"")
    assert digest == "blake3:" + blake3.blake3(b"").hexdigest()
    assert store.get(digest, verify=True) == b""
    assert store.size(digest) == 0
    store.verify(digest)
    assert store.add_stream(io.BytesIO(b"")) == (digest, 0)


def test_add_stream_and_add_file(store: ObjectStore, tmp_path: Path) -> None:
    body = b"".join(worker.generated(b"multi-chunk", 3 * MIB + 12345))
    digest, size = store.add_stream(io.BytesIO(body))
    assert (digest, size) == (digest_bytes(body), len(body))
    assert store.get(digest, verify=True) == body
    source = tmp_path / "source.bin"
    source.write_bytes(body + b"!")
    digest2, size2 = store.add_file(source)
    assert (digest2, size2) == (digest_bytes(body + b"!"), len(body) + 1)
    assert store.path(digest2).read_bytes() == body + b"!"
    assert store.tmp_files() == []


def test_add_rejects_non_bytes(store: ObjectStore) -> None:
    with pytest.raises(ValidationError, match="object data must be bytes"):
        store.add("text")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="must be bytes, not str"):
        store.add_stream(io.StringIO("text"))  # type: ignore[arg-type]
    assert store.tmp_files() == []
    assert list(store.all()) == []


def test_failing_stream_leaves_nothing(store: ObjectStore) -> None:
    class Broken:
        calls = 0

        def read(self, size: int = -1) -> bytes:
            self.calls += 1
            if self.calls > 2:
                raise OSError("source went away")
            return b"y" * 1000

    with pytest.raises(OSError, match="source went away"):
        store.add_stream(Broken())  # type: ignore[arg-type]
    assert store.tmp_files() == []
    assert list(store.all()) == []


def test_missing_object(store: ObjectStore) -> None:
    missing = digest_bytes(b"never added")
    assert not store.exists(missing)
    assert missing not in store
    for call in (store.get, store.open, store.size, store.verify):
        with pytest.raises(ObjectNotFound, match=missing):
            call(missing)
    assert store.delete(missing) is False


def test_all_stats_delete(store: ObjectStore, root: Path) -> None:
    bodies = [b"a", b"bb", b"ccc", b"dddd" * 100]
    digests = [store.add(body) for body in bodies]
    store.add(b"a")  # a duplicate counts once
    # Things that are not objects are ignored by all() and stats().
    (root / "objects" / "zz").mkdir()
    (root / "objects" / "README").write_text("x")
    fan = store.path(digests[0]).parent
    (fan / "notes.txt").write_text("x")
    (fan / ("0" * 64)).write_text("x")
    (root / "tmp" / "leftover").write_text("x")
    assert list(store.all()) == sorted(digests)
    assert store.stats() == ObjectStats(count=4, bytes=sum(map(len, bodies)))
    assert store.delete(digests[1]) is True
    assert store.delete(digests[1]) is False
    assert not store.exists(digests[1])
    assert digests[1] not in list(store.all())
    assert store.stats() == ObjectStats(count=3, bytes=sum(map(len, bodies)) - 2)


def test_all_is_sorted_across_fanouts(root: Path) -> None:
    store = ObjectStore(root, durability="none")
    digests = [store.add(b"body %d" % i) for i in range(300)]
    assert list(store.all()) == sorted(set(digests))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=st.lists(st.binary(max_size=3000), max_size=8))
def test_round_trip_property(bodies: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        store = ObjectStore(Path(scratch) / "s", durability="none")
        digests = [store.add(body) for body in bodies]
        for body, digest in zip(bodies, digests, strict=True):
            assert digest == digest_bytes(body)
            assert store.get(digest, verify=True) == body
            name = store.path(digest)
            assert name.parent.name + name.name == blake3.blake3(name.read_bytes()).hexdigest()
        assert list(store.all()) == sorted(set(digests))


# -- what a user can do with shell tools -----------------------------------------------


def test_reading_an_object_as_the_format_document_says(store: ObjectStore, root: Path) -> None:
    """docs/store-format.md, "Reading a store without this library", step by step."""
    data = b"read me with cat\n"
    digest = store.add(data)
    # 1. kontextual.json says which format and digest algorithm the store uses.
    marker = json.loads((root / "kontextual.json").read_text())
    assert (marker["format"], marker["version"], marker["digest"]) == (
        "kontextual-store",
        1,
        "blake3",
    )
    # 2. Strip "blake3:", the first two hex digits name the directory, the rest the file.
    hexd = digest.removeprefix("blake3:")
    path = os.path.join(root, "objects", hexd[:2], hexd[2:])
    # 3. The file holds exactly the bytes.
    with open(path, "rb") as handle:
        assert handle.read() == data
    # 4. Its BLAKE3 is its name.
    assert blake3.blake3(Path(path).read_bytes()).hexdigest() == hexd
    # 5. Every object, listed the way `ls objects/*/*` would.
    listed = sorted(
        "blake3:" + fan + name
        for fan in os.listdir(root / "objects")
        for name in os.listdir(root / "objects" / fan)
    )
    assert listed == [digest]


def _interop_bodies() -> list[bytes]:
    return [
        b"",
        b"a",
        b"hello\n",
        bytes(range(256)) * 4,
        b"".join(worker.generated(b"b3sum", 2 * MIB + 7)),  # several BLAKE3 chunks and tree levels
    ]


def test_every_object_file_hashes_to_its_name(store: ObjectStore, root: Path) -> None:
    for body in _interop_bodies():
        store.add(body)
    files = object_files(root)
    assert len(files) == len(_interop_bodies())
    for path in files:
        assert blake3.blake3(path.read_bytes()).hexdigest() == path.parent.name + path.name


@pytest.mark.skipif(
    shutil.which("b3sum") is None,
    reason="b3sum is not installed (Debian package b3sum; .ci/run installs it)",
)
def test_b3sum_prints_each_object_name(store: ObjectStore, root: Path) -> None:
    for body in _interop_bodies():
        store.add(body)
    files = object_files(root)
    out = subprocess.run(
        ["b3sum", "--", *map(str, files)], check=True, capture_output=True, text=True
    ).stdout
    lines = out.splitlines()
    assert len(lines) == len(files)
    for path, line in zip(files, lines, strict=True):
        hexd, name = line.split("  ", 1)
        assert name == str(path)
        assert hexd == path.parent.name + path.name


# -- dedup ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["add", "add_stream", "add_file"])
def test_dedup_keeps_one_file_and_refreshes_mtime(
    store: ObjectStore, root: Path, tmp_path: Path, how: str
) -> None:
    data = b"same content twice"
    source = tmp_path / "source"
    source.write_bytes(data)
    put: dict[str, Callable[[], object]] = {
        "add": lambda: store.add(data),
        "add_stream": lambda: store.add_stream(io.BytesIO(data)),
        "add_file": lambda: store.add_file(source),
    }
    put[how]()
    path = store.path(digest_bytes(data))
    before = os.lstat(path)
    old = time.time() - 10 * 86400
    os.utime(path, (old, old))
    put[how]()
    after = os.lstat(path)
    assert object_files(root) == [path]
    assert after.st_ino == before.st_ino  # not rewritten
    assert after.st_mtime > old + 9 * 86400  # refreshed
    assert store.tmp_files() == []


def test_readding_heals_an_object_of_the_wrong_size(store: ObjectStore) -> None:
    data = b"0123456789" * 100
    digest = store.add(data)
    path = store.path(digest)
    with writable(path):
        os.truncate(path, 10)
    store.add(data)
    store.verify(digest)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o444
    with writable(path):
        os.truncate(path, 0)
    assert store.add_stream(io.BytesIO(data)) == (digest, len(data))
    store.verify(digest)


def test_threads_adding_the_same_content(root: Path) -> None:
    import threading

    store = ObjectStore(root, durability="none")
    bodies = [b"shared %d" % (i % 25) for i in range(400)]
    errors: list[BaseException] = []

    def run(offset: int) -> None:
        try:
            for body in bodies[offset:] + bodies[:offset]:
                store.add(body)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i * 7,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.stats().count == 25
    assert list(store.scan()) == []


# -- several processes at once ----------------------------------------------------------


def test_concurrent_processes_adding_overlapping_content(root: Path) -> None:
    ObjectStore(root)  # the readers open it read-only, so it must exist first
    modes = ["full", "none", "batch", "none", "batch", "full"]
    procs = [
        subprocess.Popen(
            worker_cmd("writer", str(root), mode, str(seed)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=worker_env(),
        )
        for seed, mode in enumerate(modes)
    ]
    procs += [
        subprocess.Popen(
            worker_cmd("reader", str(root)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=worker_env(),
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.stderr
        for proc in procs:  # release them all together
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.close()
        results = []
        for proc in procs:
            assert proc.stdout is not None and proc.stderr is not None
            out, err = proc.stdout.read(), proc.stderr.read()  # workers print little
            assert proc.wait(timeout=300) == 0, (out, err)
            results.append(json.loads(out.splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    expected = worker.pool_digests()
    assert [r["added"] for r in results[: len(modes)]] == [len(expected)] * len(modes)
    assert [r["seen"] for r in results[len(modes) :]] == [len(expected)] * 2
    store = ObjectStore(root, read_only=True)
    assert list(store.all()) == sorted(set(expected))
    for digest, body in zip(expected, worker.pool(), strict=True):
        assert store.get(digest, verify=True) == body
    assert store.tmp_files() == []
    assert list(store.scan()) == []


# -- streaming in constant memory -------------------------------------------------------


def _stream_in_subprocess(root: Path, size: int) -> dict[str, Any]:
    out = subprocess.run(
        worker_cmd("stream", str(root), str(size)),
        check=True,
        capture_output=True,
        text=True,
        env=worker_env(),
        timeout=1800,
    ).stdout
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


def _check_stream(result: dict[str, Any], size: int) -> None:
    assert result["written"] == result["read"] == size
    assert result["digest"] == result["expected"] == result["read_back"]
    grown = (result["peak_kib"] - result["baseline_kib"]) * 1024
    # Chunks are 1 MiB; a reader or writer that buffered the body would grow by `size`.
    assert grown < 24 * MIB, f"peak RSS grew by {grown / MIB:.1f} MiB for a {size // MIB} MiB body"
    assert result["peak_kib"] * 1024 < size


@pytest.mark.skipif(sys.platform != "linux", reason="peak RSS is read from /proc (Linux only)")
def test_streaming_64_mib_in_constant_memory(root: Path) -> None:
    size = 64 * MIB
    _check_stream(_stream_in_subprocess(root, size), size)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="peak RSS is read from /proc (Linux only)")
def test_streaming_several_hundred_mib(root: Path) -> None:
    size = 640 * MIB
    _check_stream(_stream_in_subprocess(root, size), size)


def test_verified_reader_in_small_reads(store: ObjectStore) -> None:
    body = b"".join(worker.generated(b"small reads", MIB + 3))
    digest = store.add(body)
    parts = []
    with store.open(digest, verify=True) as reader:
        while part := reader.read(4093):
            parts.append(part)
        assert reader.read() == b""  # reading past the end again is fine
    assert b"".join(parts) == body


# -- hostile or malformed input -------------------------------------------------------------

BAD_DIGESTS = [
    "../../etc/passwd",
    "blake3:../../../../etc/passwd",
    "blake3:" + "A" * 64,
    "B" * 64,
    "blake3:" + "a" * 63,
    "blake3:" + "a" * 65,
    "a" * 63,
    "a" * 65,
    "sha256:" + "a" * 64,
    "blake3-" + "a" * 64,
    "BLAKE3:" + "a" * 64,
    " blake3:" + "a" * 64,
    "blake3:" + "a" * 64 + "\n",
    "blake3:" + "a" * 62 + "/x",
    "",
    "blake3:",
    None,
    b"a" * 64,
    42,
]


@pytest.mark.parametrize("bad", BAD_DIGESTS, ids=repr)
def test_malformed_digests_are_rejected(store: ObjectStore, root: Path, bad: object) -> None:
    store.add(b"something")
    before = tree(root.parent)
    calls: list[Callable[[Any], object]] = [
        store.path,
        store.get,
        store.open,
        store.exists,
        store.size,
        store.verify,
        store.delete,
        lambda digest: digest in store,
    ]
    for call in calls:
        with pytest.raises(ValidationError, match="invalid digest"):
            call(bad)
    assert tree(root.parent) == before


@pytest.mark.parametrize(
    "bad", ["abc", "", "../..", "ABCD", "sha256:abcd", "blake3:ab", "abcd/", None, "g" * 8]
)
def test_malformed_prefixes_are_rejected(store: ObjectStore, bad: object) -> None:
    with pytest.raises(ValidationError, match="invalid digest prefix"):
        store.resolve(bad)  # type: ignore[arg-type]


def _content_in_fan(fan: str) -> bytes:
    for i in range(100_000):
        data = b"fan %d" % i
        if digest_bytes(data)[7:9] == fan:
            return data
    raise AssertionError("no content found")  # pragma: no cover


def test_file_where_a_fanout_dir_should_be(root: Path, tmp_path: Path) -> None:
    ObjectStore(root)
    data = _content_in_fan("ab")
    (root / "objects" / "ab").write_bytes(b"not a directory")
    before = tree(tmp_path)
    store = ObjectStore(root)
    digest = digest_bytes(data)
    with pytest.raises(StoreFormatError, match="objects/ab should be a fan-out directory"):
        store.add(data)
    with pytest.raises(StoreFormatError):
        store.add_stream(io.BytesIO(data))
    for call in (store.get, store.exists, store.size, store.verify):
        with pytest.raises(StoreFormatError):
            call(digest)
    store.close()  # gives up the writer's lock file in tmp/
    assert tree(tmp_path) == before
    assert [p.kind for p in store.scan()] == ["bad-fanout"]


def test_fanout_symlink_pointing_outside(root: Path, tmp_path: Path) -> None:
    ObjectStore(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    data = _content_in_fan("cd")
    (root / "objects" / "cd").symlink_to(outside)
    store = ObjectStore(root)
    with pytest.raises(StoreFormatError, match="symbolic link"):
        store.add(data)
    with pytest.raises(StoreFormatError, match="symbolic link"):
        store.add_stream(io.BytesIO(data))
    assert os.listdir(outside) == []
    assert store.tmp_files() == []


def test_object_replaced_by_symlink(store: ObjectStore, tmp_path: Path) -> None:
    data = b"a body that will be swapped for a link"
    digest = store.add(data)
    secret = tmp_path / "secret"
    secret.write_bytes(b"outside the store")
    old = time.time() - 5 * 86400
    os.utime(secret, (old, old))
    path = store.path(digest)
    path.unlink()
    path.symlink_to(secret)
    for call in (store.get, store.open, store.exists, store.size, store.verify):
        with pytest.raises(CorruptObjectError, match="symbolic link") as info:
            call(digest)
        assert info.value.digest == digest
    with pytest.raises(CorruptObjectError, match="symbolic link"):
        store.add(data)
    with pytest.raises(CorruptObjectError, match="symbolic link"):
        store.add_stream(io.BytesIO(data))
    assert secret.read_bytes() == b"outside the store"
    assert os.lstat(secret).st_mtime == pytest.approx(old)
    assert path.is_symlink()
    assert [(p.kind, p.digest) for p in store.scan()] == [("not-a-file", digest)]
    assert digest not in list(store.all())


def test_directory_or_fifo_at_an_object_path(store: ObjectStore) -> None:
    data_dir, data_fifo = b"will be a directory", b"will be a fifo"
    for data, make in ((data_dir, os.mkdir), (data_fifo, os.mkfifo)):
        digest = store.add(data)
        path = store.path(digest)
        path.unlink()
        make(path)
        with pytest.raises(CorruptObjectError, match="not a regular file"):
            store.get(digest)  # a FIFO must not block
        with pytest.raises(CorruptObjectError, match="not a regular file"):
            store.exists(digest)
    assert sorted(p.kind for p in store.scan()) == ["not-a-file", "not-a-file"]


def test_read_only_open_refuses_writes(root: Path) -> None:
    digest = ObjectStore(root).add(b"present")
    before = tree(root)
    store = ObjectStore(root, read_only=True)
    with pytest.raises(ReadOnlyStoreError, match="read-only"):
        store.add(b"new")
    with pytest.raises(ReadOnlyStoreError):
        store.add(b"present")
    with pytest.raises(ReadOnlyStoreError):
        store.add_stream(io.BytesIO(b"new"))
    with pytest.raises(ReadOnlyStoreError):
        store.add_file(__file__)
    with pytest.raises(ReadOnlyStoreError):
        store.delete(digest)
    with store.batch():
        pass
    store.flush()
    assert store.get(digest, verify=True) == b"present"
    assert tree(root) == before


def _unprivileged(work: Callable[[], dict[str, str]]) -> dict[str, str]:
    """Run ``work`` as a user without write access (nobody, when we are root)."""
    if os.geteuid() != 0:
        return work()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            result = work()
        except BaseException as exc:
            result = {"crash": repr(exc)}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        raw = pipe.read()
    os.waitpid(pid, 0)
    answer: dict[str, str] = json.loads(raw)
    return answer


def test_store_without_write_permission_raises_read_only() -> None:
    # Not under tmp_path: an unprivileged child must be able to reach the store.
    base = Path(tempfile.mkdtemp(prefix="kontextual-ro-"))
    os.chmod(base, 0o755)
    root = base / "store"
    store = ObjectStore(root)
    present = store.add(b"present")
    os.chmod(root, 0o755)
    empty = base / "empty"
    empty.mkdir()
    dirs = [root / "objects", root / "tmp", store.path(present).parent, empty]
    try:
        for d in dirs:
            os.chmod(d, 0o555)
        before = tree(root)

        def work() -> dict[str, str]:
            unprivileged = ObjectStore(root)
            outcome: dict[str, str] = {}
            attempts: dict[str, Callable[[], object]] = {
                "add": lambda: unprivileged.add(b"new content"),
                "add_stream": lambda: unprivileged.add_stream(io.BytesIO(b"new content")),
                "delete": lambda: unprivileged.delete(present),
            }
            if os.lstat(store.path(present)).st_uid != os.geteuid():
                # Refreshing the mtime of someone else's read-only file is a write too.
                attempts["add existing"] = lambda: unprivileged.add(b"present")
            for name, attempt in attempts.items():
                try:
                    attempt()
                    outcome[name] = "ok"
                except KontextualError as exc:
                    outcome[name] = type(exc).__name__
            outcome["get"] = unprivileged.get(present, verify=True).decode()
            try:
                ObjectStore(empty)
                outcome["init"] = "ok"
            except KontextualError as exc:
                outcome["init"] = type(exc).__name__
            return outcome

        outcome = _unprivileged(work)
        assert "crash" not in outcome, outcome
        assert outcome.pop("get") == "present"
        assert outcome and set(outcome.values()) == {"ReadOnlyStoreError"}, outcome
        assert tree(root) == before
        assert os.listdir(empty) == []
    finally:
        for d in dirs:
            os.chmod(d, 0o755)
        shutil.rmtree(base)


# -- corruption ------------------------------------------------------------------------------


def _flip(path: Path) -> None:
    with writable(path):
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        path.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    with writable(path):
        os.truncate(path, os.path.getsize(path) // 2)


def _empty(path: Path) -> None:
    with writable(path):
        os.truncate(path, 0)


DAMAGE = {"flipped byte": _flip, "truncated": _truncate, "emptied": _empty}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_is_detected(store: ObjectStore, damage: str) -> None:
    data = b"".join(worker.generated(b"damage", 300_000))
    digest = store.add(data)
    other = store.add(b"an intact neighbour")
    DAMAGE[damage](store.path(digest))
    _assert_detected(store, digest)
    store.verify(other)
    assert store.get(digest) != data  # an unverified read trusts the file


def test_wrong_name_is_detected(store: ObjectStore) -> None:
    source = store.add(b"the real content")
    wrong = digest_bytes(b"what the name promises")
    target = store.path(wrong)
    target.parent.mkdir(exist_ok=True)
    shutil.copy2(store.path(source), target)
    assert store.exists(wrong)
    _assert_detected(store, wrong)
    store.verify(source)


def _assert_detected(store: ObjectStore, digest: str) -> None:
    with pytest.raises(CorruptObjectError, match=digest) as info:
        store.get(digest, verify=True)
    assert info.value.digest == digest
    with pytest.raises(CorruptObjectError, match=digest), store.open(digest, verify=True) as r:
        r.read()
    with pytest.raises(CorruptObjectError, match=digest), store.open(digest, verify=True) as r:
        while r.read(1000):
            pass
    with pytest.raises(CorruptObjectError, match=digest):
        store.verify(digest)
    problems = list(store.scan())
    assert [(p.kind, p.digest, p.path) for p in problems] == [
        ("corrupt", digest, store.path(digest))
    ]
    assert "hash" in problems[0].detail


def test_scan_reports_layout_problems(store: ObjectStore, root: Path) -> None:
    good = store.add(b"good")
    assert list(store.scan()) == []
    fan = store.path(good).parent
    (root / "objects" / "AB").mkdir()
    (root / "objects" / "stray.txt").write_text("x")
    (fan / "x.tmp").write_text("x")
    (fan / (fan.name + store.path(good).name)).write_text("a 64-hex name in a fan-out dir")
    other = fan.parent / ("ff" if fan.name != "ff" else "fe")
    other.write_text("a file as a fan-out directory")
    loose = store.add(b"made writable")
    os.chmod(store.path(loose), 0o644)
    stale = root / "tmp" / "999.1.tmp"
    stale.write_bytes(b"left by a crash")
    old = time.time() - 3 * 86400
    os.utime(stale, (old, old))
    fresh = root / "tmp" / "999.2.tmp"
    fresh.write_bytes(b"a write in progress")
    problems = list(store.scan())
    found = {(p.kind, p.path.name) for p in problems}
    assert found == {
        ("stray", "AB"),
        ("stray", "stray.txt"),
        ("stray", "x.tmp"),
        ("stray", fan.name + store.path(good).name),
        ("bad-fanout", other.name),
        ("writable", store.path(loose).name),
        ("stale-tmp", "999.1.tmp"),
    }
    assert all(isinstance(p, Problem) for p in problems)
    assert {p.kind for p in store.scan(tmp_grace_seconds=-1)} >= {"stale-tmp"}
    assert sum(p.kind == "stale-tmp" for p in store.scan(tmp_grace_seconds=-1)) == 2
    assert store.tmp_files() == [stale, fresh]


# -- digest prefixes ---------------------------------------------------------------------------


def _colliding_pair() -> tuple[bytes, bytes]:
    seen: dict[str, bytes] = {}
    for i in range(1_000_000):
        data = b"prefix %d" % i
        key = digest_bytes(data)[7:11]
        if key in seen:
            return seen[key], data
        seen[key] = data
    raise AssertionError("no pair found")  # pragma: no cover


def test_prefix_lookup(store: ObjectStore) -> None:
    first, second = _colliding_pair()
    a, b = store.add(first), store.add(second)
    lonely = store.add(b"a third object")
    shared = a[7:11]
    assert b[7:11] == shared
    with pytest.raises(AmbiguousPrefixError, match="ambiguous") as info:
        store.resolve(shared)
    assert a in str(info.value) and b in str(info.value)
    assert isinstance(info.value, ValidationError)
    with pytest.raises(AmbiguousPrefixError):
        store.resolve("blake3:" + shared)
    common = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y) - 7
    assert store.resolve(a[7 : 7 + common + 1]) == a
    assert store.resolve("blake3:" + b[7 : 7 + common + 1]) == b
    assert store.resolve(lonely[7:20]) == lonely
    assert store.resolve(a) == a
    assert store.resolve(a[7:]) == a
    missing = digest_bytes(b"not there")
    for prefix in (missing[7:], missing):
        with pytest.raises(ObjectNotFound):
            store.resolve(prefix)
    absent = next(
        p for p in (f"{i:04x}" for i in range(65536)) if p not in {a[7:11], b[7:11], lonely[7:11]}
    )
    with pytest.raises(ObjectNotFound, match=absent):
        store.resolve(absent)
    with pytest.raises(ValidationError, match="at least 4"):
        store.resolve(shared[:3])


# -- durability modes ---------------------------------------------------------------------------


@pytest.fixture
def syscalls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record fsync, link and syncfs calls, in order, with what they touched."""
    events: list[tuple[str, str]] = []
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else "?"
        events.append(("fsync", target))
        real_fsync(fd)

    def link(src: str, dst: str, *args: Any, **kwargs: Any) -> None:
        events.append(("link", str(dst)))
        real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    # Per-file fsyncs unless a test installs its own syncfs.
    monkeypatch.setattr(durable, "syncfs", lambda: None)
    return events


def test_none_mode_never_fsyncs(root: Path, syscalls: list[tuple[str, str]]) -> None:
    store = ObjectStore(root, durability="none")
    with store.batch():
        store.add(b"one")
    store.add(b"two")
    store.add_stream(io.BytesIO(b"three"))
    store.flush()
    assert [e for e in syscalls if e[0] == "fsync"] == []
    assert store.path(digest_bytes(b"one")).is_file()  # batch() does not stage in none mode


def test_full_mode_fsyncs_file_then_links_then_fsyncs_directories(
    root: Path, syscalls: list[tuple[str, str]]
) -> None:
    store = ObjectStore(root)
    syscalls.clear()
    digest = store.add(b"durable")
    path = str(store.path(digest))
    kinds = [kind for kind, _ in syscalls]
    assert kinds == ["fsync", "link", "fsync", "fsync"]
    assert syscalls[0][1].startswith(str(root / "tmp"))  # the file's bytes, before the link
    assert syscalls[1] == ("link", path)
    assert syscalls[2] == ("fsync", os.path.dirname(path))  # its new directory entry
    assert syscalls[3] == ("fsync", str(root / "objects"))  # the new fan-out directory
    syscalls.clear()
    store.add(b"durable")  # already there: nothing to make durable
    assert syscalls == []


def test_batch_stages_then_flushes_durably_before_linking(
    root: Path, syscalls: list[tuple[str, str]]
) -> None:
    store = ObjectStore(root)
    bodies = [b"batch %d" % i for i in range(5)]
    syscalls.clear()
    with store.batch():
        digests = [store.add(body) for body in bodies]
        digests.append(store.add_stream(io.BytesIO(b"streamed"))[0])
        store.add(bodies[0])  # dedup inside the batch
        assert syscalls == []  # nothing synced or linked yet
        for digest, body in zip(digests, [*bodies, b"streamed"], strict=True):
            assert not store.path(digest).exists()  # not visible before the flush
            assert store.exists(digest)
            assert store.get(digest, verify=True) == body
            assert store.size(digest) == len(body)
            with store.open(digest, verify=True) as reader:
                assert reader.read() == body
            store.verify(digest)
        assert store.resolve(digests[0][7:15]) == digests[0]
        assert len(store.tmp_files()) == 6
        assert list(store.scan(tmp_grace_seconds=-1)) == []  # staged files are not stale
    kinds = [kind for kind, _ in syscalls]
    first_link = kinds.index("link")
    assert kinds[:first_link] == ["fsync"] * 6  # every staged file's bytes first
    assert kinds[first_link : first_link + 6] == ["link"] * 6
    dir_syncs = {target for _, target in syscalls[first_link + 6 :]}
    fans = {str(store.path(d).parent) for d in digests}
    assert dir_syncs == fans | {str(root / "objects")}
    for digest in digests:
        assert store.path(digest).is_file()
    assert store.tmp_files() == []


def test_large_batch_uses_one_filesystem_sync_per_phase(
    root: Path, monkeypatch: pytest.MonkeyPatch, syscalls: list[tuple[str, str]]
) -> None:
    calls: list[str] = []

    def fake_syncfs(fd: int) -> int:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        os.sync()
        return 0

    monkeypatch.setattr(durable, "syncfs", lambda: fake_syncfs)
    store = ObjectStore(root, durability="batch")
    syscalls.clear()
    digests = [store.add(b"many %d" % i) for i in range(SYNCFS_MIN + 4)]
    assert calls == [] and syscalls == []
    store.flush()
    assert calls == [str(root / "tmp"), str(root / "objects")]
    assert [kind for kind, _ in syscalls] == ["link"] * len(digests)
    assert all(store.path(d).is_file() for d in digests)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="syncfs(2) is Linux-only")
def test_real_syncfs_is_found_and_works(root: Path) -> None:
    durable.syncfs.cache_clear()
    assert durable.syncfs() is not None
    store = ObjectStore(root, durability="batch")
    digests = [store.add(b"real %d" % i) for i in range(SYNCFS_MIN)]
    store.flush()
    assert all(store.path(d).is_file() for d in digests)


def test_configured_batch_mode_needs_flush(root: Path, syscalls: list[tuple[str, str]]) -> None:
    store = ObjectStore(root, durability="batch")
    digest = store.add(b"staged")
    assert not store.path(digest).exists() and store.exists(digest)
    store.flush()
    assert store.path(digest).is_file()
    store.flush()  # nothing pending: nothing to do
    with ObjectStore(root, durability="batch") as scoped:
        other = scoped.add(b"closed")
    assert store.path(other).is_file()


def test_nested_batches_flush_at_each_exit(root: Path) -> None:
    store = ObjectStore(root)
    with store.batch():
        outer = store.add(b"outer")
        with store.batch():
            inner = store.add(b"inner")
        assert store.path(inner).is_file() and store.path(outer).is_file()
        late = store.add(b"late")
        assert not store.path(late).exists()
    assert store.path(late).is_file()
    assert store.add(b"after") and store.path(digest_bytes(b"after")).is_file()


def test_batch_left_by_an_exception_still_flushes(root: Path) -> None:
    store = ObjectStore(root)
    with pytest.raises(RuntimeError), store.batch():
        digest = store.add(b"written before the error")
        raise RuntimeError("boom")
    assert store.path(digest).is_file()
    assert store.tmp_files() == []


def test_delete_of_a_staged_object(root: Path) -> None:
    store = ObjectStore(root, durability="batch")
    digest = store.add(b"staged then deleted")
    assert store.delete(digest) is True
    assert not store.exists(digest)
    store.flush()
    assert not store.path(digest).exists()
    assert store.tmp_files() == []


def test_unflushed_batch_is_flushed_when_the_store_is_collected(root: Path) -> None:
    store = ObjectStore(root, durability="batch")
    digest = store.add(b"left staged")
    del store
    assert ObjectStore(root, read_only=True).path(digest).is_file()


# -- crashes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["full", "batch"])
def test_killed_writer_leaves_no_partial_object(root: Path, mode: str) -> None:
    ObjectStore(root)
    proc = subprocess.Popen(
        worker_cmd("hang", str(root), mode),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=worker_env(),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        # The writer is alive and holds its lock: its staging files are in use.
        assert list(ObjectStore(root).scan(tmp_grace_seconds=0)) == []
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    store = ObjectStore(root)
    assert list(store.all()) == []  # nothing half-written became an object
    assert store.stats() == ObjectStats(0, 0)
    leftovers = store.tmp_files()
    assert len(leftovers) == (1 if mode == "full" else 5)
    if mode == "batch":
        for digest in json.loads(line)["staged"]:
            assert not store.exists(digest)
    # The writer is gone: its staging files and its lock file are garbage at once,
    # however young they are.
    stale = list(store.scan())
    assert {p.kind for p in stale} == {"stale-tmp"}
    locks = [p.path for p in stale if p.path.suffix == ".lock"]
    assert len(locks) == 1
    assert sorted(p.path for p in stale if p.path.suffix != ".lock") == leftovers
    assert all("process is gone" in p.detail for p in stale)
    assert sum(p.size for p in stale) == sum(path.stat().st_size for path in leftovers) > 0
    removed = store.collect_tmp(remove=True)
    assert all(tmp.garbage for tmp in removed) and len(removed) == len(stale)
    assert sorted((root / "tmp").iterdir()) == []


def test_sync_filesystem_syncs_only_the_store_filesystem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    monkeypatch.setattr(durable.os, "sync", lambda: synced.append("all"))
    if durable.syncfs() is not None:
        durable.sync_filesystem(tmp_path)  # syncfs(2): no machine-wide sync
        assert synced == []
    monkeypatch.setattr(durable, "syncfs", lambda: None)
    durable.sync_filesystem(tmp_path)  # no syncfs: sync(2) is the fallback
    assert synced == ["all"]
