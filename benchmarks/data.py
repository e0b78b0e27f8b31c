"""Deterministic documents and the stdlib corpus."""

from __future__ import annotations

import itertools
import os
import random
import shutil
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

VOCABULARY_SIZE = 8_000
WORDS_PER_DOC = 150  # about 1 KiB of text
TOPICS = 1_000
FILES_PER_DIR = 1_000
CORPUS_SUFFIXES = (".py", ".rst", ".txt")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Doc:
    name: str  # a relative path, also the artifact name
    content: bytes
    metadata: dict[str, Any]


class Vocabulary:
    """Pseudo-words with Zipf-like frequencies: some common, most rare."""

    def __init__(self, seed: int = 8) -> None:
        rng = random.Random(seed)
        words: set[str] = set()
        while len(words) < VOCABULARY_SIZE:
            words.add("".join(rng.choices(_LETTERS, k=rng.randint(4, 10))))
        self.words = sorted(words)
        rng.shuffle(self.words)
        self.cumulative = list(
            itertools.accumulate(1.0 / (rank + 1) for rank in range(VOCABULARY_SIZE))
        )

    def common(self, index: int = 0) -> str:
        return self.words[index]

    def rare(self, index: int) -> str:
        """A word of rank ``2000 + index``: in roughly 0.5-1% of documents."""
        return self.words[2000 + index]


VOCABULARY = Vocabulary()


def documents(start: int, count: int, seed: int = 1) -> Iterator[Doc]:
    """Documents ``start`` .. ``start + count - 1``; the same numbers give the same bytes."""
    rng = random.Random(seed * 1_000_003 + start)
    words, cumulative = VOCABULARY.words, VOCABULARY.cumulative
    for number in range(start, start + count):
        body = " ".join(rng.choices(words, cum_weights=cumulative, k=WORDS_PER_DOC))
        topic = rng.randrange(TOPICS)
        text = f"# document {number:08d}\n\ntopic-{topic:04d}\n\n{body}\n"
        yield Doc(
            name=f"{number // FILES_PER_DIR:04d}/doc-{number:08d}.md",
            content=text.encode("utf-8"),
            metadata={
                "topic": f"topic-{topic:04d}",
                "priority": rng.randrange(10),
                "draft": rng.random() < 0.1,
            },
        )


def unsearchable(docs: Iterable[Doc]) -> Iterator[Doc]:
    """The same documents with a NUL byte appended: the same bytes to store and
    hash, plus one, and no words to index (a body holding NUL is binary)."""
    for doc in docs:
        yield replace(doc, content=doc.content + b"\x00")


def write_text_file(path: Path, size: int, seed: int = 3) -> None:
    """``size`` bytes of ASCII text: lines of twelve words drawn as the
    documents' words are (the last word may be cut)."""
    rng = random.Random(seed)
    words, cumulative = VOCABULARY.words, VOCABULARY.cumulative
    written = 0
    with open(path, "wb") as writer:
        while written < size:
            drawn = rng.choices(words, cum_weights=cumulative, k=12 * 1_000)
            lines = (" ".join(drawn[i : i + 12]) for i in range(0, len(drawn), 12))
            chunk = ("\n".join(lines) + "\n").encode("ascii")[: size - written]
            writer.write(chunk)
            written += len(chunk)


def write_tree(root: Path, docs: Iterator[Doc]) -> list[str]:
    """Write documents as files under ``root``; return their relative names in order."""
    names: list[str] = []
    made: set[str] = set()
    for doc in docs:
        parent = os.path.dirname(doc.name)
        if parent not in made:
            (root / parent).mkdir(parents=True, exist_ok=True)
            made.add(parent)
        (root / doc.name).write_bytes(doc.content)
        names.append(doc.name)
    return names


def list_tree(root: Path) -> list[str]:
    """Every regular file under ``root`` as a sorted relative path."""
    found: list[str] = []
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(directory, root)
        for file in sorted(files):
            found.append(file if rel == "." else f"{rel}/{file}")
    return found


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def copy_stdlib_corpus(destination: Path, limit: int | None) -> list[str]:
    """Copy the stdlib's .py/.rst/.txt files (not site-packages) to ``destination``."""
    root = stdlib_root()
    names: list[str] = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "__pycache__"))
        for file in sorted(files):
            if not file.endswith(CORPUS_SUFFIXES):
                continue
            source = Path(directory) / file
            if source.is_symlink() or not source.is_file():
                continue
            rel = source.relative_to(root).as_posix()
            target = destination / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            names.append(rel)
            if limit is not None and len(names) >= limit:
                return names
    return names


def corpus_metadata(name: str) -> tuple[str, str, dict[str, Any]]:
    """(artifact type, media type, metadata) of a stdlib file."""
    suffix = os.path.splitext(name)[1]
    top = name.split("/", 1)[0] if "/" in name else "(top)"
    artifact_type = {".py": "source", ".rst": "doc", ".txt": "text"}[suffix]
    media = {".py": "text/x-python", ".rst": "text/x-rst", ".txt": "text/plain"}[suffix]
    return artifact_type, media, {"ext": suffix, "package": top}
