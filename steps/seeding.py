"""Deterministic random streams keyed by names, independent of execution order.

Every random draw in recalign comes from ``rng_for(seed, "part", "of", "the", "key")``: the same
seed and key give the same stream whether a task runs first, last, alone or after a resume.
Keys are hashed with CRC32 (stable across processes, unlike Python's salted ``hash``).
"""

from __future__ import annotations

import zlib

import numpy as np


def _key_words(parts: tuple[object, ...]) -> list[int]:
    return [zlib.crc32(repr(p).encode("utf-8")) for p in parts]


def rng_for(seed: int, *key: object) -> np.random.Generator:
    """A ``numpy.random.Generator`` for ``seed`` and a key of names/numbers."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), *_key_words(key)]))
