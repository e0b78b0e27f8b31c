"""What ``kontextual add`` reads: input files, their names and guessed types.

Every input is checked before anything is written (:func:`scan`), so a
missing or unreadable file fails the command with nothing stored.
"""

from __future__ import annotations

import mimetypes
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import ValidationError
from ..models import check_name
from .app import PathNotFound

# Files per put_artifacts call, and bytes read ahead of it: bounds memory
# while keeping the per-call overhead of the bulk API small.
BATCH_FILES = 500
BATCH_BYTES = 64 << 20

# Types of the common formats of a knowledge store; the rest is guessed
# by mimetypes from its built-in table (not the system's, so every machine
# guesses alike).
_BY_SUFFIX: dict[str, tuple[str, str]] = {
    ".md": ("note", "text/markdown"),
    ".markdown": ("note", "text/markdown"),
    ".txt": ("text", "text/plain"),
    ".rst": ("text", "text/x-rst"),
    ".py": ("code", "text/x-python"),
    ".json": ("data", "application/json"),
    ".jsonl": ("data", "application/x-ndjson"),
    ".yaml": ("data", "application/yaml"),
    ".yml": ("data", "application/yaml"),
    ".toml": ("data", "application/toml"),
    ".csv": ("table", "text/csv"),
    ".tsv": ("table", "text/tab-separated-values"),
    ".html": ("document", "text/html"),
    ".htm": ("document", "text/html"),
    ".pdf": ("document", "application/pdf"),
}
_BY_MAJOR = {"text": "text", "image": "image", "audio": "audio", "video": "video"}
_UNKNOWN = ("file", "application/octet-stream")
_MIME = mimetypes.MimeTypes()

_FILE_KINDS = {"d": "directory", "p": "FIFO", "s": "socket", "c": "device", "b": "device"}


@dataclass(frozen=True, slots=True)
class InputFile:
    path: Path
    name: str
    size: int


def guess_types(name: str) -> tuple[str, str]:
    """``(artifact_type, media_type)`` for a file name."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix]
    media_type, _ = _MIME.guess_type(name, strict=False)
    if media_type is None:
        return _UNKNOWN
    return _BY_MAJOR.get(media_type.partition("/")[0], "file"), media_type


def check_file(path: Path) -> os.stat_result:
    """The status of a readable regular file, or an error naming what is wrong with it."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise ValidationError(f"cannot read {path}: dangling symbolic link") from None
        raise PathNotFound(path) from None
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(status.st_mode):
        kind = _FILE_KINDS.get(stat.filemode(status.st_mode)[0], "special file")
        raise ValidationError(f"cannot read {path}: it is a {kind}, not a regular file")
    if not os.access(path, os.R_OK):
        raise ValidationError(f"cannot read {path}: permission denied")
    return status


def read(item: InputFile) -> bytes:
    try:
        with open(item.path, "rb") as source:
            return source.read()
    except OSError as exc:
        raise ValidationError(f"cannot read {item.path}: {exc.strerror or exc}") from None


def _walk_error(exc: OSError) -> None:
    raise ValidationError(f"cannot read directory {exc.filename}: {exc.strerror or exc}")


def _inside(path: Path, directory: str) -> bool:
    real = os.path.realpath(path)
    return real == directory or real.startswith(directory + os.sep)


def scan(paths: Sequence[Path], *, store: Path) -> list[InputFile]:
    """Every file to add, each checked readable and named; a folder's files by name.

    A folder contributes its files recursively, named by their path relative
    to it; a file given on its own is named by its file name. Dot-directories
    (``.git``...) and the store directory are skipped; symbolic links to
    directories are not followed. Two inputs with one name are refused.
    """
    excluded = os.path.realpath(store)
    files: list[InputFile] = []
    for given in paths:
        if _inside(given, excluded):
            raise ValidationError(f"{given} is inside the store {store}; refusing to add it")
        if not given.is_dir():
            files.append(InputFile(given, given.name, check_file(given).st_size))
            continue
        found: list[InputFile] = []
        for root, dirs, names in os.walk(given, onerror=_walk_error):
            dirs[:] = [
                d
                for d in dirs
                if not d.startswith(".") and os.path.realpath(os.path.join(root, d)) != excluded
            ]
            for name in names:
                path = Path(root, name)
                relative = path.relative_to(given).as_posix()
                found.append(InputFile(path, relative, check_file(path).st_size))
        files += sorted(found, key=lambda item: item.name)
    seen: dict[str, Path] = {}
    for item in files:
        check_name(item.name, "artifact name")
        if item.name in seen:
            raise ValidationError(
                f"{seen[item.name]} and {item.path} would both be named {item.name!r}"
            )
        seen[item.name] = item.path
    return files


def batches(files: Sequence[InputFile]) -> Iterator[Sequence[InputFile]]:
    """Consecutive runs of at most BATCH_FILES files and (unless one is larger) BATCH_BYTES."""
    start = size = 0
    for index, item in enumerate(files):
        if index > start and (index - start >= BATCH_FILES or size + item.size > BATCH_BYTES):
            yield files[start:index]
            start, size = index, 0
        size += item.size
    if start < len(files):
        yield files[start:]
