"""The default id source's random parts: read ahead, never shared with a fork."""

from __future__ import annotations

import os
import re
import time

import pytest

from kontextual_engine.storage.ids import RANDOM_POOL_MS, MonotonicIds


def test_ids_over_more_milliseconds_than_one_read_of_random_bytes() -> None:
    source = MonotonicIds()
    made: list[str] = []
    stamps: set[str] = set()
    while len(stamps) < 2 * RANDOM_POOL_MS + 5:
        made.append(source("artifact"))
        stamps.add(made[-1][4:16])
        time.sleep(0.0005)
    assert len(set(made)) == len(made)
    assert made == sorted(made)
    assert all(re.fullmatch(r"art_[0-9a-f]{32}", value) for value in made)
    # A new millisecond starts from new random bits, not from the last ones + 1.
    firsts: dict[str, str] = {}
    for value in made:
        firsts.setdefault(value[4:16], value[16:])
    assert len(set(firsts.values())) == len(firsts) > 2 * RANDOM_POOL_MS


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_process_draws_other_random_bits() -> None:
    source = MonotonicIds()
    source("artifact")  # the pool is read in this process
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next draw and leave at once
        try:
            os.write(writer, source._draw().to_bytes(10, "big"))
        finally:
            os._exit(0)
    os.close(writer)
    child = int.from_bytes(os.read(reader, 10), "big")
    os.close(reader)
    os.waitpid(pid, 0)
    assert child != source._draw()
