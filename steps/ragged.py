"""Ragged (CSR) arrays: one flat value array plus row offsets, and padded views of row buckets.

Impressions have in-view lists of different lengths. They are kept flat (``offsets`` of length
``n_rows + 1`` and a ``values`` array), and processed in buckets of rows of similar length that are
padded to a rectangle, so that every operation is a vectorised 2-D NumPy call with little padding.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

# Rows are grouped by length into these ranges (upper bounds); longer rows go to the last bucket.
DEFAULT_BUCKET_EDGES = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def lengths(offsets: np.ndarray) -> np.ndarray:
    return np.diff(offsets).astype(np.int64, copy=False)


def row_ids(offsets: np.ndarray) -> np.ndarray:
    """Row index of every flat element."""
    return np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), lengths(offsets))


def segment_sum(offsets: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per-row sums (rows must be non-empty)."""
    return np.add.reduceat(values, offsets[:-1]) if len(values) else np.zeros(len(offsets) - 1, values.dtype)


def segment_softmax(offsets: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Softmax within each row of a ragged array (rows must be non-empty), in float64."""
    x = logits.astype(np.float64, copy=False)
    if len(x) == 0:
        return x.copy()
    starts = offsets[:-1]
    row_max = np.maximum.reduceat(x, starts)
    e = np.exp(x - np.repeat(row_max, lengths(offsets)))
    return e / np.repeat(np.add.reduceat(e, starts), lengths(offsets))


def iter_buckets(
    offsets: np.ndarray, edges: tuple[int, ...] = DEFAULT_BUCKET_EDGES, max_cells: int = 4_000_000
) -> Iterator[tuple[np.ndarray, int]]:
    """Yield ``(rows, width)``: row indices of similar length and the padded width for them.

    Rows are grouped by the first edge not below their length (rows longer than the last edge
    form their own bucket of width = their max length); a bucket is split so that
    ``len(rows) * width`` stays under ``max_cells``. Rows keep their original relative order.
    """
    lens = lengths(offsets)
    if len(lens) == 0:
        return
    edges_arr = np.asarray(edges, dtype=np.int64)
    bucket = np.searchsorted(edges_arr, lens, side="left")
    for b in np.unique(bucket):
        rows = np.flatnonzero(bucket == b)
        width = int(edges_arr[b]) if b < len(edges_arr) else int(lens[rows].max())
        width = min(width, int(lens[rows].max()))
        step = max(1, max_cells // max(width, 1))
        for i in range(0, len(rows), step):
            yield rows[i : i + step], width


def padded_index(offsets: np.ndarray, rows: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices ``(len(rows), width)`` of each padded cell, and the mask of real cells.

    Padding cells get index 0 (use the mask to ignore them).
    """
    starts = offsets[rows][:, None]
    lens = (offsets[rows + 1] - offsets[rows])[:, None]
    col = np.arange(width, dtype=np.int64)[None, :]
    valid = col < lens
    idx = np.where(valid, starts + col, 0)
    return idx, valid


def gather_padded(values: np.ndarray, idx: np.ndarray, valid: np.ndarray, fill) -> np.ndarray:
    """``values[idx]`` with ``fill`` in padding cells."""
    out = values[idx]
    out[~valid] = fill
    return out
