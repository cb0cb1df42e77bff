"""Ragged (CSR) arrays: one flat value array plus row offsets, and padded views of row buckets.

Impressions have in-view lists of different lengths. They are kept flat (``offsets`` of length
``n_rows + 1`` and a ``values`` array), and processed in buckets of rows of similar length that are
padded to a rectangle, so that every operation is a vectorised 2-D NumPy call with little padding.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa

from steps.errors import InputError

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


def arrow_list_parts(
    arr: pa.Array, name: str, where: object, row0: int = 0, key: str | None = None, keys: np.ndarray | None = None
) -> tuple[np.ndarray, pa.Array]:
    """``(offsets rebased to 0, flat values)`` of a pyarrow list column read in batches.

    A null list or a null value inside one is an :class:`InputError` naming ``where`` (the file),
    the column, the row in the file (``row0`` + row in the batch) and, with ``key``/``keys``, the
    row's key (e.g. ``impression_id 7``).
    """

    def row_text(r: int) -> str:
        return f"row {row0 + r}" + (f" ({key} {keys[r]})" if key is not None and keys is not None else "")

    if arr.null_count:
        r = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{where}: {row_text(r)}: column {name!r} is null")
    offsets = arr.offsets.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]
    values = arr.flatten()
    if values.null_count:
        flat = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        r = int(np.searchsorted(offsets, flat, side="right") - 1)
        raise InputError(f"{where}: {row_text(r)}: column {name!r} holds a null value")
    return offsets, values


def refuse_repeat_in_rows(offsets: np.ndarray, values: np.ndarray, message) -> None:
    """An :class:`InputError` with ``message(row, first position, second position)`` for the first
    value listed twice in its row (see :func:`first_repeat_in_rows`); nothing when rows are distinct."""
    repeat = first_repeat_in_rows(offsets, values)
    if repeat is not None:
        raise InputError(message(*repeat))


def first_repeat_in_rows(offsets: np.ndarray, values: np.ndarray) -> tuple[int, int, int] | None:
    """The first element (in row, then position order) whose value already occurred earlier in its
    row, as ``(row, position of the value's first occurrence, position of this element)``
    (positions within the row); ``None`` when every row's values are distinct. Any integer values:
    when they span less than 2**32 they are packed with the row into one int64 key (one sort),
    otherwise sorted by (row, value) — never compared by their low 32 bits only."""
    rows = row_ids(offsets)
    v = np.asarray(values)
    if len(v) == 0:
        return None
    lo, hi = int(v.min()), int(v.max())
    if hi - lo < 2**32 and len(offsets) - 1 < 2**31:
        key = (rows << 32) | (v.astype(np.int64) - lo if v.dtype != np.uint64 else (v - np.uint64(lo)).astype(np.int64))
        order = np.argsort(key, kind="stable")
        dup = np.flatnonzero(np.diff(key[order]) == 0)
    else:
        order = np.lexsort((v, rows))  # stable: equal (row, value) pairs stay in position order
        dup = np.flatnonzero((np.diff(rows[order]) == 0) & (v[order][1:] == v[order][:-1]))
    if not len(dup):
        return None
    # equal keys sit together in position order; the repeat that comes first is the smallest second
    # element of a pair, and its partner is then the value's first occurrence
    d = dup[np.argmin(order[dup + 1])]
    first, second = int(order[d]), int(order[d + 1])
    r = int(rows[first])
    return r, first - int(offsets[r]), second - int(offsets[r])
