"""The candidate-list layout: any recommender's top-M lists, as one folder AlignFlow can calibrate.

A *candidate bundle* is a folder with

* ``candidates.parquet`` — one row per user (or impression):
  ``user_id`` (i64), ``item_ids`` (list[i64], the M candidates, best first), ``scores``
  (list[f32|f64], the model's scores of those candidates, same length), and optionally
  ``heldout_item_ids`` (list[i64], the items held out for the user / clicked in the impression:
  the labels of the accuracy metrics). Every row holds the same number M of distinct candidates.
* ``items.parquet`` — ``item_id`` (i64) and ``categories`` (list[str], at least one per item). An
  item with g categories counts 1/g to each: Steck's p(g|i).
* ``history.parquet`` (optional) — ``user_id`` (i64), ``item_ids`` (list[i64]) and optionally
  ``timestamps`` (list[i64], seconds, same length): what each user consumed before the lists were
  made; the source of per-user ``history`` targets. An item listed twice counts twice (a re-read, a
  re-watch); history rows of users without candidates are ignored.
* ``manifest.json`` — the layout version, the dataset and model that produced the lists, and the
  SHA-256 of every file above (checked before the bundle is read).

:func:`write_candidate_bundle` writes a bundle atomically (a temporary folder renamed on success);
:func:`read_candidate_bundle` checks the manifest's checksums and every row, and returns a
:class:`CandidateSet` of dense arrays. Each bad input is an :class:`InputError` naming the file,
column, row (with its ``user_id``) and value.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from steps import ragged
from steps.errors import InputError
from steps.storage import atomic_export_dir, sha256_file
from steps.validate import read_parquet_columns, read_parquet_schema, require_dir

LAYOUT = "recalign.candidates/1"
CANDIDATES_FILE = "candidates.parquet"
ITEMS_FILE = "items.parquet"
HISTORY_FILE = "history.parquet"
MANIFEST_FILE = "manifest.json"

USER_ID = "user_id"
ITEM_IDS = "item_ids"
SCORES = "scores"
HELDOUT = "heldout_item_ids"
ITEM_ID = "item_id"
CATEGORIES = "categories"
TIMESTAMPS = "timestamps"

_I64_MAX = np.iinfo(np.int64).max
#: The largest timestamp accepted (seconds; year 5138): larger values are milliseconds or nanoseconds.
MAX_SECONDS = 10**11


# --------------------------------------------------------------------------- writing
def _list_column(offsets: np.ndarray, values: np.ndarray, value_type: pa.DataType) -> pa.Array:
    return pa.LargeListArray.from_arrays(pa.array(np.asarray(offsets, dtype=np.int64)), pa.array(values, type=value_type))


def _dense_list(matrix: np.ndarray, value_type: pa.DataType) -> pa.Array:
    u, m = matrix.shape
    return _list_column(np.arange(u + 1, dtype=np.int64) * m, np.ascontiguousarray(matrix).ravel(), value_type)


def write_candidate_bundle(
    out_dir: str | os.PathLike,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    scores: np.ndarray,
    items: pl.DataFrame,
    heldout: tuple[np.ndarray, np.ndarray] | None = None,
    history: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None,
    meta: Mapping[str, object] | None = None,
) -> Path:
    """Write a bundle to ``out_dir`` (replaced in one rename; a failure leaves nothing behind).

    ``user_ids`` (U,), ``item_ids`` and ``scores`` (U, M) dense, best first; ``items`` a frame with
    ``item_id`` and ``categories`` (list[str]); ``heldout`` ``(offsets (U+1,), item ids)``;
    ``history`` ``(offsets, item ids, timestamps or None)`` over the same users. Returns the path of
    ``manifest.json``.
    """
    user_ids = np.asarray(user_ids, dtype=np.int64)
    item_ids = np.asarray(item_ids, dtype=np.int64)
    scores = np.asarray(scores)
    if item_ids.ndim != 2 or item_ids.shape != scores.shape or item_ids.shape[0] != len(user_ids):
        raise ValueError(f"item_ids {item_ids.shape} and scores {scores.shape} must be (users={len(user_ids)}, M)")
    with atomic_export_dir(out_dir) as tmp:
        _write_candidates(tmp, user_ids, item_ids, scores, heldout)
        items.select(pl.col(ITEM_ID).cast(pl.Int64), pl.col(CATEGORIES).cast(pl.List(pl.String))).write_parquet(tmp / ITEMS_FILE)
        files = [CANDIDATES_FILE, ITEMS_FILE]
        if history is not None:
            _write_history(tmp, user_ids, history)
            files.append(HISTORY_FILE)
        manifest = {
            "layout": LAYOUT,
            "users": int(len(user_ids)),
            "candidates_per_user": int(item_ids.shape[1]),
            **dict(meta or {}),
            "files": {f: sha256_file(tmp / f) for f in files},
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str))
    return Path(out_dir).absolute() / MANIFEST_FILE


def _write_candidates(folder: Path, user_ids: np.ndarray, item_ids: np.ndarray, scores: np.ndarray,
                      heldout: tuple[np.ndarray, np.ndarray] | None) -> None:
    cols = {
        USER_ID: pa.array(user_ids, type=pa.int64()),
        ITEM_IDS: _dense_list(item_ids, pa.int64()),
        SCORES: _dense_list(scores.astype(np.float32 if scores.dtype == np.float32 else np.float64),
                            pa.float32() if scores.dtype == np.float32 else pa.float64()),
    }
    if heldout is not None:
        cols[HELDOUT] = _list_column(heldout[0], np.asarray(heldout[1], dtype=np.int64), pa.int64())
    pq.write_table(pa.table(cols), folder / CANDIDATES_FILE)


def _write_history(folder: Path, user_ids: np.ndarray, history: tuple[np.ndarray, np.ndarray, np.ndarray | None]) -> None:
    h_off, h_items, h_times = history
    hcols = {USER_ID: pa.array(user_ids, type=pa.int64()),
             ITEM_IDS: _list_column(h_off, np.asarray(h_items, dtype=np.int64), pa.int64())}
    if h_times is not None:
        hcols[TIMESTAMPS] = _list_column(h_off, np.asarray(h_times, dtype=np.int64), pa.int64())
    pq.write_table(pa.table(hcols), folder / HISTORY_FILE)


# --------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class CandidateSet:
    """A validated bundle as dense arrays. Item *rows* index ``item_ids_sorted``/``item_genre``."""

    path: str
    meta: dict
    user_ids: np.ndarray  # (U,) int64
    candidate_rows: np.ndarray  # (U, M) int64 item rows
    scores: np.ndarray  # (U, M) float64
    item_ids_sorted: np.ndarray  # (I,) int64
    genres: tuple[str, ...]  # (G,)
    item_genre: sp.csr_matrix  # (I, G) p(g|i), rows sum to 1
    heldout_offsets: np.ndarray | None  # (U + 1,)
    heldout_ids: np.ndarray | None  # item ids (may lie outside the item table)
    history_offsets: np.ndarray | None  # (U + 1,) aligned with user_ids
    history_rows: np.ndarray | None  # item rows
    history_times: np.ndarray | None  # int64 seconds, or None

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_candidates(self) -> int:
        return self.candidate_rows.shape[1]

    @property
    def single_genre(self) -> bool:
        """Every item has exactly one category (the fast Steck/NAILS path applies)."""
        return bool((np.diff(self.item_genre.indptr) == 1).all())

    def item_id_of(self, rows: np.ndarray) -> np.ndarray:
        return self.item_ids_sorted[rows]


def _open_schema(path: Path, what: str) -> pa.Schema:
    return read_parquet_schema(path, f"{what} file")


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _check_columns(path: Path, schema: pa.Schema, spec: Mapping[str, tuple[str, object]], optional: Sequence[str] = ()) -> None:
    """``spec``: column -> (expected dtype text, predicate on the arrow type)."""
    for col, (want, ok) in spec.items():
        if col not in schema.names:
            if col in optional:
                continue
            raise InputError(f"{path}: missing column {col!r} (found: {', '.join(schema.names)})")
        if not ok(schema.field(col).type):
            raise InputError(f"{path}: column {col!r} has dtype {schema.field(col).type}, expected {want}")


def _int_list(t):
    return _is_list(t) and pa.types.is_integer(t.value_type)


def _float_list(t):
    return _is_list(t) and pa.types.is_floating(t.value_type)


def _str_list(t):
    return _is_list(t) and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type))


def _int_values(values: pa.Array, path: Path, column: str, offsets: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
    """Flat integer list values as int64, refusing uint64 values that do not fit."""
    if pa.types.is_uint64(values.type):
        raw = values.to_numpy(zero_copy_only=False)
        big = raw > _I64_MAX
        if big.any():
            flat = int(np.flatnonzero(big)[0])
            r = int(np.searchsorted(offsets, flat, side="right") - 1)
            raise InputError(f"{path}: row {r} (user_id {user_ids[r]}): column {column!r} holds {raw[flat]}, outside i64")
    return values.to_numpy(zero_copy_only=False).astype(np.int64)


def _row_of(offsets: np.ndarray, flat: int) -> int:
    return int(np.searchsorted(offsets, flat, side="right") - 1)


def _id_column(table: pa.Table, column: str, path: Path) -> tuple[np.ndarray, int | None]:
    """The column's ids as i64 (no null, none beyond i64) and the first row repeating an earlier id (or None)."""
    col = table.column(column).combine_chunks()
    if col.null_count:
        r = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{path}: row {r}: column {column!r} is null")
    raw = col.to_numpy(zero_copy_only=False)
    if raw.dtype == np.uint64 and (raw > _I64_MAX).any():
        r = int(np.flatnonzero(raw > _I64_MAX)[0])
        raise InputError(f"{path}: row {r}: column {column!r} holds {raw[r]}, outside i64")
    ids = raw.astype(np.int64)
    dup = ~pl.Series(ids).is_first_distinct().to_numpy()
    return ids, (int(np.flatnonzero(dup)[0]) if dup.any() else None)


def _user_ids(table: pa.Table, path: Path) -> np.ndarray:
    ids, r = _id_column(table, USER_ID, path)
    if r is not None:
        first = int(np.flatnonzero(ids == ids[r])[0])
        raise InputError(f"{path}: row {r}: column {USER_ID!r} repeats user_id {ids[r]} (first in row {first})")
    return ids


def read_items(path: str | os.PathLike) -> tuple[np.ndarray, tuple[str, ...], sp.csr_matrix]:
    """``(item ids sorted, genre names, p(g|i) as a CSR matrix)`` from ``items.parquet``."""
    path = Path(path)
    schema = _open_schema(path, "items")
    _check_columns(path, schema, {ITEM_ID: ("i64", pa.types.is_integer), CATEGORIES: ("list[str]", _str_list)})
    table = read_parquet_columns(path, [ITEM_ID, CATEGORIES])
    ids, r = _id_column(table, ITEM_ID, path)
    if r is not None:
        raise InputError(f"{path}: row {r}: column {ITEM_ID!r} repeats item_id {ids[r]}")
    off, vals = ragged.arrow_list_parts(table.column(CATEGORIES).combine_chunks(), CATEGORIES, path, 0, ITEM_ID, ids)
    lens = np.diff(off)
    if (lens == 0).any():
        r = int(np.flatnonzero(lens == 0)[0])
        raise InputError(f"{path}: row {r} (item_id {ids[r]}): column {CATEGORIES!r} is empty; every item needs a category")
    names = pl.Series(vals.to_pylist(), dtype=pl.String).str.strip_chars()
    if (names == "").any():
        flat = int(np.flatnonzero((names == "").to_numpy())[0])
        r = _row_of(off, flat)
        raise InputError(f"{path}: row {r} (item_id {ids[r]}): column {CATEGORIES!r} holds an empty category name")
    ragged.refuse_repeat_in_rows(
        off, names.cast(pl.Categorical).to_physical().to_numpy().astype(np.int64),
        lambda r, a, _: f"{path}: row {r} (item_id {ids[r]}): category {names[int(off[r]) + a]!r} is listed twice")
    genres = tuple(sorted(names.unique().to_list()))
    g_index = names.replace_strict(list(genres), list(range(len(genres))), return_dtype=pl.Int64).to_numpy()
    order = np.argsort(ids, kind="stable")
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    rows = rank[ragged.row_ids(off)]
    weights = (1.0 / lens)[ragged.row_ids(off)]
    item_genre = sp.csr_matrix((weights, (rows, g_index)), shape=(len(ids), len(genres)))
    item_genre.sort_indices()
    return ids[order], genres, item_genre


def _lookup_rows(ids_sorted: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row of each id in ``ids_sorted``; -1 where absent."""
    if len(ids_sorted) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(ids_sorted, ids), len(ids_sorted) - 1)
    return np.where(ids_sorted[pos] == ids, pos, -1).astype(np.int64)


def verify_manifest(folder: Path) -> dict:
    """Read ``manifest.json`` and check every file's SHA-256 against it."""
    mpath = folder / MANIFEST_FILE
    if not mpath.exists():
        raise InputError(f"{folder}: not a candidate bundle ({MANIFEST_FILE} not found)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{mpath}: not valid JSON ({exc})") from exc
    if manifest.get("layout") != LAYOUT:
        raise InputError(f"{mpath}: layout {manifest.get('layout')!r}, expected {LAYOUT!r}")
    for name, digest in dict(manifest.get("files", {})).items():
        f = folder / name
        if not f.exists():
            raise InputError(f"{f}: listed in {mpath} but missing")
        actual = sha256_file(f)
        if actual != digest:
            raise InputError(f"{f}: checksum {actual[:12]}… differs from {mpath} ({str(digest)[:12]}…): the file changed after it was written")
    return manifest


def read_candidate_bundle(folder: str | os.PathLike, verify: bool = True) -> CandidateSet:
    """Validate and load a bundle (see the module docstring). ``verify``: check the manifest's
    checksums first (a folder without a manifest is read when ``verify`` is False)."""
    folder = require_dir(folder, "candidate bundle folder")
    meta = verify_manifest(folder) if verify or (folder / MANIFEST_FILE).exists() else {}
    item_ids_sorted, genres, item_genre = read_items(folder / ITEMS_FILE)

    path = folder / CANDIDATES_FILE
    schema = _open_schema(path, "candidates")
    _check_columns(path, schema, {USER_ID: ("i64", pa.types.is_integer), ITEM_IDS: ("list[i64]", _int_list),
                                  SCORES: ("list[f32] or list[f64]", _float_list), HELDOUT: ("list[i64]", _int_list)},
                   optional=(HELDOUT,))
    table = read_parquet_columns(path, [c for c in (USER_ID, ITEM_IDS, SCORES, HELDOUT) if c in schema.names])
    if table.num_rows == 0:
        raise InputError(f"{path}: the file has no rows")
    users = _user_ids(table, path)
    off, cand_ids, raw_scores = _candidate_lists(table, path, users)
    m = int(off[1] - off[0])
    rows = _lookup_rows(item_ids_sorted, cand_ids)
    if (rows < 0).any():
        flat = int(np.flatnonzero(rows < 0)[0])
        r = _row_of(off, flat)
        n_missing = len(np.unique(cand_ids[rows < 0]))
        raise InputError(
            f"{path}: row {r} (user_id {users[r]}): item {cand_ids[flat]} in {ITEM_IDS!r} is not in {folder / ITEMS_FILE} "
            f"({n_missing} candidate item(s) have no categories); add them to the item table"
        )
    heldout_offsets = heldout_ids = None
    if HELDOUT in table.column_names:
        heldout_offsets, heldout_ids = _heldout(table, path, users)

    h_off = h_rows = h_times = None
    hpath = folder / HISTORY_FILE
    if hpath.exists():
        h_off, h_rows, h_times = _read_history(hpath, users, item_ids_sorted)
    return CandidateSet(
        path=str(folder.absolute()), meta=meta, user_ids=users, candidate_rows=rows.reshape(len(users), m),
        scores=raw_scores.reshape(len(users), m), item_ids_sorted=item_ids_sorted, genres=genres, item_genre=item_genre,
        heldout_offsets=heldout_offsets, heldout_ids=heldout_ids, history_offsets=h_off, history_rows=h_rows,
        history_times=h_times,
    )


def _candidate_lists(table: pa.Table, path: Path, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets, candidate ids, float64 scores) of the candidates file: every row the same number of
    distinct candidates, each with a finite score."""
    off, vals = ragged.arrow_list_parts(table.column(ITEM_IDS).combine_chunks(), ITEM_IDS, path, 0, USER_ID, users)
    off_s, svals = ragged.arrow_list_parts(table.column(SCORES).combine_chunks(), SCORES, path, 0, USER_ID, users)
    lens, lens_s = np.diff(off), np.diff(off_s)
    if (lens != lens_s).any():
        r = int(np.flatnonzero(lens != lens_s)[0])
        raise InputError(f"{path}: row {r} (user_id {users[r]}): {ITEM_IDS!r} has {lens[r]} items but {SCORES!r} has {lens_s[r]} values")
    if (lens == 0).any():
        r = int(np.flatnonzero(lens == 0)[0])
        raise InputError(f"{path}: row {r} (user_id {users[r]}): empty {ITEM_IDS!r} list")
    if (lens != lens[0]).any():
        r = int(np.flatnonzero(lens != lens[0])[0])
        raise InputError(
            f"{path}: row {r} (user_id {users[r]}): {ITEM_IDS!r} has {lens[r]} candidates but row 0 has {lens[0]}; "
            "every row must hold the same number of candidates (write each model's top-M)"
        )
    cand_ids = _int_values(vals, path, ITEM_IDS, off, users)
    ragged.refuse_repeat_in_rows(off, _dense_codes(cand_ids), lambda r, a, b: (
        f"{path}: row {r} (user_id {users[r]}): item {cand_ids[off[r] + a]} appears twice in {ITEM_IDS!r} (positions {a} and {b})"))
    raw_scores = svals.to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~np.isfinite(raw_scores)
    if bad.any():
        flat = int(np.flatnonzero(bad)[0])
        r = _row_of(off, flat)
        raise InputError(f"{path}: row {r} (user_id {users[r]}): column {SCORES!r} holds {raw_scores[flat]} at position {flat - off[r]} (item {cand_ids[flat]})")
    return off, cand_ids, raw_scores


def _heldout(table: pa.Table, path: Path, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, ids) of the held-out items: no item twice in a row."""
    heldout_offsets, hv = ragged.arrow_list_parts(table.column(HELDOUT).combine_chunks(), HELDOUT, path, 0, USER_ID, users)
    heldout_ids = _int_values(hv, path, HELDOUT, heldout_offsets, users)
    ragged.refuse_repeat_in_rows(heldout_offsets, _dense_codes(heldout_ids), lambda r, a, b: (
        f"{path}: row {r} (user_id {users[r]}): item {heldout_ids[heldout_offsets[r] + a]} appears twice in {HELDOUT!r}"))
    return heldout_offsets, heldout_ids


def _dense_codes(values: np.ndarray) -> np.ndarray:
    """Values renumbered 0..k-1 (order-preserving), so 64-bit ids compare exactly in 32-bit keys."""
    return np.unique(values, return_inverse=True)[1].astype(np.int64)


def _read_history(path: Path, users: np.ndarray, item_ids_sorted: np.ndarray):
    """History lists laid out in the candidates' user order (users without a row get an empty list)."""
    schema = _open_schema(path, "history")
    _check_columns(path, schema, {USER_ID: ("i64", pa.types.is_integer), ITEM_IDS: ("list[i64]", _int_list),
                                  TIMESTAMPS: ("list[i64]", _int_list)}, optional=(TIMESTAMPS,))
    table = read_parquet_columns(path, [c for c in (USER_ID, ITEM_IDS, TIMESTAMPS) if c in schema.names])
    h_users = _user_ids(table, path)
    off, vals = ragged.arrow_list_parts(table.column(ITEM_IDS).combine_chunks(), ITEM_IDS, path, 0, USER_ID, h_users)
    ids = _int_values(vals, path, ITEM_IDS, off, h_users)
    rows = _lookup_rows(item_ids_sorted, ids)
    if (rows < 0).any():
        flat = int(np.flatnonzero(rows < 0)[0])
        r = _row_of(off, flat)
        raise InputError(f"{path}: row {r} (user_id {h_users[r]}): history item {ids[flat]} is not in the item table")
    times = None
    if TIMESTAMPS in table.column_names:
        off_t, tv = ragged.arrow_list_parts(table.column(TIMESTAMPS).combine_chunks(), TIMESTAMPS, path, 0, USER_ID, h_users)
        if (np.diff(off_t) != np.diff(off)).any():
            r = int(np.flatnonzero(np.diff(off_t) != np.diff(off))[0])
            raise InputError(f"{path}: row {r} (user_id {h_users[r]}): {ITEM_IDS!r} has {np.diff(off)[r]} items but {TIMESTAMPS!r} has {np.diff(off_t)[r]}")
        times = _int_values(tv, path, TIMESTAMPS, off, h_users)
        bad = (times < 0) | (times > MAX_SECONDS)
        if bad.any():
            flat = int(np.flatnonzero(bad)[0])
            r = _row_of(off, flat)
            hint = " (milliseconds? timestamps are seconds since 1970)" if times[flat] > MAX_SECONDS else ""
            raise InputError(f"{path}: row {r} (user_id {h_users[r]}): column {TIMESTAMPS!r} holds {times[flat]}{hint}")
    # re-lay in candidate user order
    order = np.argsort(h_users, kind="stable")
    pos = np.searchsorted(h_users[order], users)
    pos_c = np.minimum(pos, max(len(h_users) - 1, 0))
    found = (pos < len(h_users)) & (h_users[order][pos_c] == users) if len(h_users) else np.zeros(len(users), bool)
    src = np.where(found, order[pos_c], -1)
    lens = np.where(found, np.diff(off)[np.maximum(src, 0)], 0)
    new_off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    starts = np.where(found, off[np.maximum(src, 0)], 0)
    take = np.repeat(starts - new_off[:-1], lens) + np.arange(int(new_off[-1]), dtype=np.int64)
    return new_off, rows[take], (times[take] if times is not None else None)
