"""Workload sizes for each ``--scale``."""

from __future__ import annotations

from dataclasses import dataclass, replace

MAX_BULK = 1_000_000


@dataclass(frozen=True)
class Scale:
    name: str
    repetitions: int
    bulk_n: int  # documents per bulk ingest
    single_n: int  # single creates per repetition
    single_warm: int  # artifacts already in the store when single creates start
    corpus_files: int | None  # cap on stdlib files (None: all of them)
    lookup_n: int  # artifacts in the store that lookups and snapshots use
    lookup_samples: int  # lookups timed per query kind
    large_bytes: int  # size of the large body
    growth_points: tuple[int, ...]  # store sizes at which growth is measured
    growth_batch: int  # artifacts per timed growth batch
    text_samples: int  # ranked text queries timed per query kind
    text_n: int  # artifacts in the store of the text-scale workload
    text_body_bytes: int  # size of the single text body indexed whole
    startup_runs: int  # whole processes timed per start-up contender


SCALES: dict[str, Scale] = {
    "tiny": Scale(
        name="tiny",
        repetitions=2,
        bulk_n=200,
        single_n=10,
        single_warm=300,
        corpus_files=150,
        lookup_n=500,
        lookup_samples=50,
        large_bytes=8 << 20,
        growth_points=(300, 900),
        growth_batch=100,
        text_samples=20,
        text_n=3_000,
        text_body_bytes=2 << 20,
        startup_runs=5,
    ),
    "default": Scale(
        name="default",
        repetitions=5,
        bulk_n=20_000,
        single_n=300,
        single_warm=2_000,
        corpus_files=None,
        lookup_n=100_000,
        lookup_samples=2_000,
        large_bytes=1 << 30,
        growth_points=(10_000, 100_000, 1_000_000),
        growth_batch=10_000,
        text_samples=200,
        text_n=1_000_000,
        text_body_bytes=50 << 20,
        startup_runs=40,
    ),
    "large": Scale(
        name="large",
        repetitions=5,
        bulk_n=100_000,
        single_n=1_000,
        single_warm=2_000,
        corpus_files=None,
        lookup_n=100_000,
        lookup_samples=5_000,
        large_bytes=1 << 30,
        growth_points=(10_000, 100_000, 1_000_000),
        growth_batch=10_000,
        text_samples=500,
        text_n=1_000_000,
        text_body_bytes=50 << 20,
        startup_runs=40,
    ),
}


def scale_for(name: str, *, n: int | None = None, repetitions: int | None = None) -> Scale:
    scale = SCALES[name]
    if n is not None:
        scale = replace(scale, bulk_n=n)
    if repetitions is not None:
        scale = replace(scale, repetitions=repetitions)
    return scale
