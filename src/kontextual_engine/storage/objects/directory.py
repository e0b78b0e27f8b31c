"""The ``objects/`` directory: fan-out directories, and putting complete files in place.

An object lives at ``objects/<2 hex>/<62 hex>`` (see layout.py). An
:class:`ObjectDirectory` finds objects there, creates fan-out directories on
demand and links a complete staging file into place without ever replacing a
good object; making any of it durable is the caller's (store.py) business.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from ...digests import Digest
from ...errors import CorruptObjectError, StoreFormatError
from ..durable import link, unlink_quietly
from .layout import DIR_MODE, FAN, HEX_START, NAME, kind, object_path, require_regular


class ObjectDirectory:
    """The ``objects`` directory of one store (a path, without trailing slash).

    Fan-out directories once seen to be real directories are remembered; one
    that turns out to be something else raises :class:`StoreFormatError`.
    """

    def __init__(self, objects: str) -> None:
        self.objects = objects
        self._seen: set[str] = set()  # fan-out dirs seen to be real directories

    def target(self, hexd: str) -> str:
        """The path of the object with hex digits ``hexd`` (validated by the caller)."""
        return object_path(self.objects, hexd)

    def forget(self, fan: str) -> None:
        """Forget that ``fan`` was seen (it was removed behind our back)."""
        self._seen.discard(fan)

    def fan(self, fan: str) -> bool:
        """Whether the fan-out directory exists; raise if something else is there."""
        if fan in self._seen:
            return True
        path = f"{self.objects}/{fan}"
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            raise StoreFormatError(
                f"{path} should be a fan-out directory but is a {kind(st.st_mode)}; "
                "the store is damaged (run fsck)"
            )
        self._seen.add(fan)
        return True

    def make_fan(self, fan: str) -> bool:
        """Create a fan-out directory; return whether this call created it."""
        path = f"{self.objects}/{fan}"
        try:
            os.mkdir(path, DIR_MODE)
            created = True
        except FileExistsError:
            created = False
        except FileNotFoundError:
            raise StoreFormatError(
                f"{self.objects} is missing; the store is damaged or was never initialised"
            ) from None
        self._seen.discard(fan)
        if not self.fan(fan):
            raise StoreFormatError(f"{path} vanished while it was being created")
        return created

    def present(self, digest: Digest, hexd: str, size: int) -> bool | None:
        """True: a whole-looking object is there (mtime refreshed). None: absent.
        False: a file of the wrong size is there, to be replaced."""
        if not self.fan(hexd[:2]):
            return None
        target = self.target(hexd)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return None
        require_regular(st, digest)
        if st.st_size != size:
            return False
        os.utime(target)
        return True

    def install(self, tmp: str, digest: Digest, size: int, *, replace: bool) -> bool:
        """Link ``tmp`` to the object path (never overwriting a good object) and
        remove ``tmp``. Return whether a fan-out directory was created."""
        hexd = digest[HEX_START:]
        fan = hexd[:2]
        target = self.target(hexd)
        created = False
        if not self.fan(fan):
            created = self.make_fan(fan)
        for attempt in range(3):
            try:
                if replace:
                    os.replace(tmp, target)
                    return created
                linked = link(tmp, target)
            except FileNotFoundError:
                if not os.path.lexists(tmp):
                    # Installed by an earlier, interrupted flush, or taken by gc.
                    try:
                        st = os.lstat(target)
                    except FileNotFoundError:
                        raise CorruptObjectError(
                            digest,
                            f"its staged file {tmp} vanished before it was put in place "
                            "(was tmp/ cleaned while a write was in progress?)",
                        ) from None
                    require_regular(st, digest)
                    return created
                if attempt:
                    raise
                # The fan-out directory was removed since we last saw it.
                self._seen.discard(fan)
                created |= self.make_fan(fan)
                continue
            if not linked:
                # Someone else put it there first: keep theirs unless it is damaged.
                st = os.lstat(target)
                require_regular(st, digest)
                if st.st_size != size:
                    os.replace(tmp, target)
                    return created
                os.utime(target)
            unlink_quietly(tmp)
            return created
        raise AssertionError("unreachable")  # pragma: no cover

    def entries(self) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """(fan, entry) of every object file, in digest order (:func:`object_entries`)."""
        return object_entries(self.objects)

    def matches(self, hexp: str) -> set[str]:
        """The hex digits of every object file whose name starts with ``hexp``
        (at least 2 hex digits)."""
        found: set[str] = set()
        fan, rest = hexp[:2], hexp[2:]
        if self.fan(fan):
            with os.scandir(f"{self.objects}/{fan}") as listing:
                for entry in listing:
                    name = entry.name
                    if (
                        name.startswith(rest)
                        and NAME.fullmatch(name)
                        and entry.is_file(follow_symlinks=False)
                    ):
                        found.add(fan + name)
        return found


def object_entries(objects: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """(fan, entry) for every object file under ``objects``, in digest order.

    Only names of the layout count: other files, and fan-out paths that are
    not real directories, are skipped (the scan reports them).
    """
    try:
        with os.scandir(objects) as it:
            fans = sorted(
                (entry for entry in it if FAN.fullmatch(entry.name)),
                key=lambda entry: entry.name,
            )
    except FileNotFoundError:
        return
    for fan in fans:
        if not fan.is_dir(follow_symlinks=False):
            continue
        with os.scandir(fan.path) as it:
            entries = sorted(it, key=lambda entry: entry.name)
        for entry in entries:
            if NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                yield fan.name, entry
