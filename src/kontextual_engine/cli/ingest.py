"""What ``kontextual add`` reads: input files, their names and guessed types.

Every input is checked before anything is written (:func:`scan`): a file that
cannot be stored (unreadable, special, gone, or named in a way the store
refuses) fails the command with nothing stored, or, when invalid files are to
be skipped, is set aside with its reason. Which files of a folder are taken
is its :class:`Selection`: the include and exclude patterns and the folder's
``.kontextualignore``.
"""

from __future__ import annotations

import bisect
import io
import mimetypes
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ValidationError
from ..models import check_artifact_name, check_name
from .app import PathNotFound

if TYPE_CHECKING:
    from pathspec import GitIgnoreSpec

# Files per put_artifacts call, and bytes of searchable bodies held for it
# (larger bodies are streamed, never held): bounds memory while keeping the
# per-call overhead of the bulk API small.
BATCH_FILES = 500
BATCH_BYTES = 16 << 20
# The index's page cache while adding (KiB): the library's 64 MiB would hold a
# whole store of 20,000 small documents and double the peak RSS of the command;
# pages it drops are read back from the system's file cache.
ADD_CACHE_KIB = 8 << 10

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


# Exclude patterns of a folder, in gitignore syntax, read from this file at its top.
IGNORE_FILE = ".kontextualignore"
SKIP_HINT = "--skip-invalid skips such files and stores the rest"


class UnstorableFile(ValidationError):
    """An input file that cannot be stored; ``reason`` says why."""

    def __init__(
        self, path: str | Path, reason: str, *, verb: str = "read", hint: bool = False
    ) -> None:
        self.path = path
        self.reason = reason
        self.verb = verb
        message = f"cannot {verb} {path}: {reason}"
        super().__init__(f"{message}; {SKIP_HINT}" if hint else message)

    def with_hint(self) -> UnstorableFile:
        """The same error, telling how to store the other files anyway."""
        return UnstorableFile(self.path, self.reason, verb=self.verb, hint=True)


@dataclass(frozen=True, slots=True)
class InputFile:
    path: str | Path  # str for a walked folder's files: a third of the memory of a Path
    name: str
    size: int


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file (or a folder) left out because it cannot be stored."""

    name: str  # as it would have been named, bytes that are not UTF-8 as \xNN escapes
    path: str
    reason: str
    directory: bool = False

    def covers(self, name: str) -> bool:
        """Whether the artifact ``name`` is this file, or lies in this folder."""
        return name == self.name or (self.directory and name.startswith(self.name + "/"))


def skip_or_raise(
    exc: UnstorableFile,
    name: str,
    *,
    into: list[Skipped],
    skip_invalid: bool,
    directory: bool = False,
) -> None:
    """Set an unstorable file aside in ``into`` (kept in name order), or (not skipping)
    fail, saying how to skip."""
    if not skip_invalid:
        raise exc.with_hint() from None
    skipped = Skipped(shown(name), shown(str(exc.path)), exc.reason, directory)
    bisect.insort(into, skipped, key=lambda item: item.name)


def shown(text: str) -> str:
    """A file name as text: the bytes that are not UTF-8 (surrogate escapes) as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True, slots=True)
class Patterns:
    """The ``--include`` and ``--exclude`` patterns, gitignore syntax."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


class Selection:
    """Which files under one input are taken, by their ``/``-separated path relative to it.

    A file is taken when it matches the include patterns (or there are none)
    and not the exclude patterns, and no folder on its way is skipped: a
    dot-directory, the store, or one the exclude patterns match (as git
    does, a file in an excluded folder cannot be taken back by negation).
    ``skip_files`` are never taken, whatever the patterns say. ``None`` is no
    patterns at all.
    """

    def __init__(
        self,
        include: GitIgnoreSpec | None,
        exclude: GitIgnoreSpec | None,
        skip_dirs: frozenset[str] = frozenset(),
        skip_files: frozenset[str] = frozenset(),
    ) -> None:
        self._include = include
        self._exclude = exclude
        self._skip_dirs = skip_dirs
        self._skip_files = skip_files

    def takes_dir(self, relative: str) -> bool:
        return (
            not relative.rpartition("/")[2].startswith(".")
            and relative not in self._skip_dirs
            and not (self._exclude is not None and self._exclude.match_file(relative + "/"))
        )

    def takes_file(self, relative: str) -> bool:
        """Whether the patterns take this file (its folders are not looked at)."""
        if relative in self._skip_files:
            return False
        included = self._include is None or self._include.match_file(relative)
        return included and not (self._exclude is not None and self._exclude.match_file(relative))

    def takes(self, relative: str) -> bool:
        """Whether a file at this path would be taken, its folders included."""
        parts = relative.split("/")
        folders = ("/".join(parts[:depth]) for depth in range(1, len(parts)))
        return all(self.takes_dir(folder) for folder in folders) and self.takes_file(relative)


def _compile(lines: Sequence[str], where: str) -> GitIgnoreSpec | None:
    """The patterns of ``lines``; ``None`` for none (and ``pathspec`` is not imported)."""
    if not lines:
        return None
    from pathspec import GitIgnoreSpec

    try:
        return GitIgnoreSpec.from_lines(lines)
    except ValueError as exc:
        raise ValidationError(f"{where}: {exc}") from None


def _ignore_lines(folder: Path) -> list[str]:
    path = folder / IGNORE_FILE
    if not os.path.lexists(path):
        return []
    content = read(InputFile(path, IGNORE_FILE, check_file(path).st_size))
    try:
        return content.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValidationError(f"cannot read {path}: it is not UTF-8 text") from None


def selection(given: Path, patterns: Patterns, *, store: str) -> Selection:
    """The selection of an input: of a folder, with its ignore file and without the store."""
    include = _compile(patterns.include, "--include")
    exclude = _compile(patterns.exclude, "--exclude")
    if not given.is_dir():
        return Selection(include, exclude)
    ignored = _compile(_ignore_lines(given), str(given / IGNORE_FILE))
    if ignored is not None:
        exclude = ignored if exclude is None else ignored + exclude
    skip_dirs: frozenset[str] = frozenset()
    real = os.path.realpath(given)
    if store.startswith(real + os.sep):
        skip_dirs = frozenset({Path(os.path.relpath(store, real)).as_posix()})
    # The folder's own ignore file is never stored, whatever the patterns say.
    return Selection(include, exclude, skip_dirs, frozenset({IGNORE_FILE}))


def guess_types(name: str) -> tuple[str, str]:
    """``(artifact_type, media_type)`` for a file name."""
    # The suffix as PurePosixPath(name).suffix has it, without making a path.
    base = name.rpartition("/")[2]
    dot = base.rfind(".")
    suffix = base[dot:].lower() if 0 < dot < len(base) - 1 else ""
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix]
    media_type, _ = _MIME.guess_type(name, strict=False)
    if media_type is None:
        return _UNKNOWN
    return _BY_MAJOR.get(media_type.partition("/")[0], "file"), media_type


def check_file(path: str | Path) -> os.stat_result:
    """The status of a readable regular file, or an error naming what is wrong with it."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise UnstorableFile(path, "dangling symbolic link") from None
        raise PathNotFound(path) from None
    except OSError as exc:
        raise UnstorableFile(path, exc.strerror or str(exc)) from None
    if not stat.S_ISREG(status.st_mode):
        kind = _FILE_KINDS.get(stat.filemode(status.st_mode)[0], "special file")
        raise UnstorableFile(path, f"it is a {kind}, not a regular file")
    if not os.access(path, os.R_OK):
        raise UnstorableFile(path, "permission denied")
    return status


def read(item: InputFile) -> bytes:
    with open_input(item) as source:
        return source.read()


def _unreadable(path: str | Path, exc: OSError) -> UnstorableFile:
    if isinstance(exc, FileNotFoundError):
        return UnstorableFile(path, "it vanished before it was read")
    return UnstorableFile(path, exc.strerror or str(exc))


class InputReader(io.RawIOBase):
    """An input file open for reading, a failure to read it an :class:`UnstorableFile`
    (not an OSError, so that it is never taken for a failure to write the store)."""

    def __init__(self, item: InputFile) -> None:
        super().__init__()
        self._path = item.path
        try:
            self._file = io.FileIO(item.path, "rb")
        except OSError as exc:
            raise _unreadable(item.path, exc) from None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self._file.readall() if size is None or size < 0 else self._file.read(size)
        except OSError as exc:
            raise _unreadable(self._path, exc) from None

    def readinto(self, buffer: Any) -> int:
        try:
            return self._file.readinto(buffer)
        except OSError as exc:
            raise _unreadable(self._path, exc) from None

    def close(self) -> None:
        self._file.close()
        super().close()


def open_input(item: InputFile) -> InputReader:
    """The input file open for reading; failures to open or read it are
    :class:`UnstorableFile`."""
    return InputReader(item)


def _inside(path: Path, directory: str) -> bool:
    real = os.path.realpath(path)
    return real == directory or real.startswith(directory + os.sep)


def prefixed(prefix: str | None, relative: str) -> str:
    """The artifact name of a file at ``relative``: under ``prefix/`` if there is one."""
    return relative if prefix is None else f"{prefix}/{relative}"


def check_prefix(prefix: str) -> str:
    """A ``--prefix``: a name, without a slash at either end (one at the end is dropped)."""
    trimmed = prefix[:-1] if prefix.endswith("/") else prefix
    check_name(trimmed, "--prefix")
    if trimmed.startswith("/") or trimmed.endswith("/") or "//" in trimmed:
        raise ValidationError(f"--prefix {prefix!r} must be folder names joined by single '/'")
    return trimmed


@dataclass
class Scan:
    """What :func:`scan` found: the files to store, the ones skipped, and each
    input's selection (in the order the inputs were given)."""

    files: list[InputFile] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    selections: list[Selection] = field(default_factory=list)


class _Scanner:
    def __init__(self, prefix: str | None, skip_invalid: bool) -> None:
        self.prefix = prefix
        self.skip_invalid = skip_invalid
        self.result = Scan()

    def take(self, path: str | Path, relative: str, *, walked: bool) -> InputFile | None:
        """The input file at ``path``, or ``None`` when it is skipped as invalid."""
        name = prefixed(self.prefix, relative)
        try:
            try:
                check_artifact_name(name)
            except ValidationError as exc:
                raise UnstorableFile(path, str(exc), verb="store") from None
            try:
                return InputFile(path, name, check_file(path).st_size)
            except PathNotFound:
                if not walked:
                    raise
                raise UnstorableFile(path, "it vanished while its folder was read") from None
        except UnstorableFile as exc:
            self.skip(exc, name)
            return None

    def skip(self, exc: UnstorableFile, name: str, *, directory: bool = False) -> None:
        skip_or_raise(
            exc, name, into=self.result.skipped, skip_invalid=self.skip_invalid, directory=directory
        )

    def walk(self, given: Path, chosen: Selection) -> list[InputFile]:
        def failed(exc: OSError) -> None:
            folder = Path(exc.filename)
            problem = UnstorableFile(folder, exc.strerror or str(exc))
            if folder == given:
                raise problem
            relative = folder.relative_to(given).as_posix()
            self.skip(problem, prefixed(self.prefix, relative), directory=True)

        found: list[InputFile] = []
        base = os.fspath(given)
        for root, dirs, names in os.walk(base, onerror=failed):
            # The folder's path relative to ``given``, '/'-separated ('' at the top):
            # os.walk joins every root onto ``base``, so no path object is needed.
            top = root[len(base) :].lstrip(os.sep).replace(os.sep, "/")
            lead = f"{top}/" if top else ""
            dirs[:] = [d for d in dirs if chosen.takes_dir(lead + d)]
            for name in names:
                relative = lead + name
                if chosen.takes_file(relative):
                    item = self.take(os.path.join(root, name), relative, walked=True)
                    if item is not None:
                        found.append(item)
        found.sort(key=lambda item: item.name)
        return found


def scan(
    paths: Sequence[Path],
    *,
    store: Path,
    patterns: Patterns = Patterns(),
    prefix: str | None = None,
    skip_invalid: bool = False,
) -> Scan:
    """Every file to add, each checked readable and named; a folder's files by name.

    A folder contributes the files its selection takes, recursively, named by
    their path relative to it; a file given on its own is named by its file
    name (and taken if the patterns take that name). With ``prefix``, names go
    under ``prefix/``. Dot-directories (``.git``...) and the store directory
    are skipped; symbolic links to directories are not followed. Two inputs
    with one name are refused. A file that cannot be stored raises
    :class:`UnstorableFile`, or with ``skip_invalid`` is listed in ``skipped``.
    """
    excluded = os.path.realpath(store)
    scanner = _Scanner(prefix, skip_invalid)
    result = scanner.result
    for given in paths:
        if not os.path.lexists(given):
            raise PathNotFound(given)
        if _inside(given, excluded):
            raise ValidationError(f"{given} is inside the store {store}; refusing to add it")
        chosen = selection(given, patterns, store=excluded)
        result.selections.append(chosen)
        if given.is_dir():
            result.files += scanner.walk(given, chosen)
        elif chosen.takes_file(given.name):
            item = scanner.take(given, given.name, walked=False)
            if item is not None:
                result.files.append(item)
    seen: dict[str, str | Path] = {}
    for item in result.files:
        if item.name in seen:
            raise ValidationError(
                f"{seen[item.name]} and {item.path} would both be named {item.name!r}"
            )
        seen[item.name] = item.path
    return result


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
