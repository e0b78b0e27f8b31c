"""What the store tells its user about damage and leftovers.

Verified reads hand out no byte that fails its digest (not even a prefix of a
large body), fsck and gc report garbage with its size and what frees it,
staging files of dead writers are recognised by checking for a live writer,
a store that lost its marker can be adopted again, fsck's findings name rows
by key and stay one per line, and a damaged index points to a backup.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kontextual_engine.errors import CorruptObjectError
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository

from .test_cli_hostile import kontextual

MIB = 1 << 20


def rewrite(path: Path, offset: int) -> None:
    """Flip one byte of a (read-only) object file in place."""
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    path.chmod(0o444)


def object_path(store: Path, digest: str) -> Path:
    hexd = digest.removeprefix("blake3:")
    return store / "objects" / hexd[:2] / hexd[2:]


# -- verified reads ------------------------------------------------------------------


@pytest.fixture
def large(tmp_path: Path) -> tuple[Path, str, str]:
    """A closed store with one 1.6 MB artifact: (store, artifact id, digest)."""
    store = tmp_path / "store"
    body = random.Random(13).randbytes(1_600_000)
    with SQLiteKnowledgeRepository.open(store, "none") as repo:
        cid = repo.create_collection("notes").id
        artifact = repo.create_artifact(cid, "big.bin", body, artifact_type="blob")
    return store, artifact.id, artifact.digest


@pytest.mark.parametrize("offset", [1000, MIB + 5])
def test_verified_reads_return_no_byte_of_a_damaged_object(
    large: tuple[Path, str, str], offset: int
) -> None:
    store, artifact_id, digest = large
    rewrite(object_path(store, digest), offset)
    with SQLiteKnowledgeRepository.open(store, "none") as repo:
        for open_ in (
            lambda: repo.open_object(digest),
            lambda: repo.objects.open(digest, verify=True),
        ):
            received = bytearray()
            with pytest.raises(CorruptObjectError, match=digest), open_() as reader:
                while chunk := reader.read(4096):
                    received += chunk
            assert received == b""
        for read in (
            lambda: repo.read_content(artifact_id),
            lambda: repo.read_object(digest),
            lambda: repo.objects.get(digest, verify=True),
        ):
            with pytest.raises(CorruptObjectError, match=digest):
                read()
    for args in (["cat", "notes/big.bin"], ["cat-object", digest]):
        result = kontextual(store, *args)
        assert result.returncode == 5, result.stderr
        assert result.stdout == b"", f"{args[0]} wrote {len(result.stdout)} unverified bytes"
        assert digest.encode() in result.stderr


def test_verified_reads_of_a_large_intact_object(large: tuple[Path, str, str]) -> None:
    store, _, digest = large
    expected = random.Random(13).randbytes(1_600_000)
    with SQLiteKnowledgeRepository.open(store, "none") as repo, repo.open_object(digest) as reader:
        assert reader.read(10) == expected[:10]
        assert reader.read() == expected[10:]
    assert kontextual(store, "cat", "notes/big.bin").stdout == expected
    assert kontextual(store, "cat-object", digest).stdout == expected
