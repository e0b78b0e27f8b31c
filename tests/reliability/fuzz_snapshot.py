"""Coverage-guided fuzzing of the snapshot importer with atheris (optional).

The CI form of this property is ``test_fuzz.py`` (hypothesis). This entry
point runs it under libFuzzer when atheris is installed and asked for::

    KONTEXTUAL_FUZZ=1 .venv/bin/python tests/reliability/fuzz_snapshot.py -runs=20000
    KONTEXTUAL_FUZZ=1 .venv/bin/python tests/reliability/fuzz_snapshot.py -max_total_time=600 DIR

Without a corpus directory it seeds one with the valid snapshot (as a tar,
and as the starting point of edits); ``-max_len`` defaults to 64 KiB.

Each input either is a whole ``.tar`` archive, or describes edits to one file
of a valid snapshot (with the manifest's hash of that file fixed up, so the
edit reaches the parser). Importing must raise ``SnapshotError`` and leave
the target empty, or succeed; any other exception is a finding that libFuzzer
reports with the input that caused it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path


def main() -> int:
    if os.environ.get("KONTEXTUAL_FUZZ") != "1":
        print("fuzz_snapshot: set KONTEXTUAL_FUZZ=1 to run the atheris fuzzer")
        return 0
    try:
        import atheris
    except ImportError:
        print("fuzz_snapshot: atheris is not installed (pip install atheris)")
        return 0
    root = Path(__file__).resolve().parents[2]
    sys.path[:0] = [str(root / "src"), str(root)]
    with atheris.instrument_imports():
        from kontextual_engine.digests import digest_bytes
        from kontextual_engine.errors import SnapshotError
        from kontextual_engine.snapshot import KINDS, MANIFEST, export_snapshot, import_snapshot
        from kontextual_engine.storage import InMemoryKnowledgeRepository
    from tests.test_snapshot import populate

    scratch = Path(
        tempfile.mkdtemp(
            prefix="fuzz-snapshot-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
        )
    )
    source = InMemoryKnowledgeRepository()
    populate(source)
    pristine = scratch / "pristine"
    export_snapshot(source, pristine)
    members = [MANIFEST] + [f"index/{kind}.jsonl" for kind in KINDS]

    def one_input(data: bytes) -> None:
        provider = atheris.FuzzedDataProvider(data)
        work = Path(tempfile.mkdtemp(dir=scratch))
        try:
            if provider.ConsumeBool():
                target_path = work / "input.tar"
                target_path.write_bytes(provider.ConsumeBytes(atheris.ALL_REMAINING))
            else:
                target_path = work / "snap"
                shutil.copytree(pristine, target_path)
                member = members[provider.ConsumeIntInRange(0, len(members) - 1)]
                path = target_path / member
                original = path.read_bytes()
                at = provider.ConsumeIntInRange(0, len(original))
                cut = provider.ConsumeIntInRange(0, 64)
                edited = (
                    original[:at]
                    + provider.ConsumeBytes(provider.ConsumeIntInRange(0, 64))
                    + original[at + cut :]
                )
                path.write_bytes(edited)
                if member != MANIFEST:
                    manifest = json.loads((target_path / MANIFEST).read_bytes())
                    manifest["files"][member] = digest_bytes(edited)
                    (target_path / MANIFEST).write_text(json.dumps(manifest))
            target = InMemoryKnowledgeRepository()
            try:
                import_snapshot(target_path, target)
            except SnapshotError:
                if not target.is_empty():
                    raise AssertionError("a refused import left records behind") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # Without a corpus of its own, start from the valid snapshot as a tar and as-is.
    argv = list(sys.argv)
    if not any(not arg.startswith("-") for arg in argv[1:]):
        corpus = scratch / "corpus"
        corpus.mkdir()
        export_snapshot(source, scratch / "seed.tar", tar=True)
        (corpus / "tar").write_bytes(b"\x01" + (scratch / "seed.tar").read_bytes())
        (corpus / "edit").write_bytes(b"\x00" + bytes(16))
        argv.append(str(corpus))
    if not any(arg.startswith("-max_len=") for arg in argv):
        argv.append("-max_len=65536")
    try:
        atheris.Setup(argv, one_input)
        atheris.Fuzz()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
