"""Loaders for the real EB-NeRD layout (and the synthetic copy of it): articles, document vectors,
histories and behaviors, each validated against the published schema.

Articles are addressed by a dense index: ``0`` = padding (masked out), ``1`` = an article that is
not in ``articles.parquet``, ``k + 2`` = the k-th article of ``articles.parquet`` in id order.
An unknown article (``unknown_article: zeros``, the default; ``error`` rejects it) gets the zero
*input*: an all-padding token row for NRMS (its encoding is then the zero vector) and a zero
document vector for NRMSDocVec — which the dense layers (biases, batch norm) still map to a
learned, non-zero encoding shared by every unknown article. It is not masked like padding.
Behaviors are streamed in record batches and written as flat memory-mappable arrays.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl
import pyarrow as pa

from steps import ragged
from steps.errors import ConfigError, InputError
from steps.newsrec import schema as S
from steps.storage import ArrayAppender, FileRef, load_array
from steps.validate import check_field, iter_parquet_batches, read_parquet_columns

PAD = 0
UNKNOWN = 1
FIRST_ARTICLE = 2
UNKNOWN_POLICIES = ("zeros", "error")


# --------------------------------------------------------------------------- articles
def read_articles(path: str | os.PathLike, text_columns: Sequence[str] = ()) -> pl.DataFrame:
    """``article_id`` (i64, sorted), ``category_str`` and the requested text columns (nulls → "")."""
    schema = S.read_checked_schema(path, [*S.ARTICLES_REQUIRED, *text_columns], {S.ARTICLE_ID: pa.int32()}, "articles file")
    for col in (S.CATEGORY_STR, *text_columns):
        t = schema.field(col).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise InputError(f"{path}: column {col!r} has dtype {S.polars_name(t)}, expected str")
    cols = list(dict.fromkeys([S.ARTICLE_ID, S.CATEGORY_STR, *text_columns]))
    df = pl.from_arrow(read_parquet_columns(path, cols))
    if df.is_empty():
        raise InputError(f"{path}: the articles file has no rows")
    if df[S.ARTICLE_ID].null_count():
        raise InputError(f"{path}: column 'article_id' is null in row {int(df[S.ARTICLE_ID].is_null().arg_max())}")
    dup = df[S.ARTICLE_ID].is_duplicated()
    if dup.any():
        row = int(dup.arg_max())
        raise InputError(f"{path}: column 'article_id' repeats article_id {df[S.ARTICLE_ID][row]} (row {row})")
    check_field(df[S.ARTICLE_ID].to_numpy(), S.FIELDS[S.ARTICLE_ID], path)
    return df.with_columns(pl.col(S.ARTICLE_ID).cast(pl.Int64), *[pl.col(c).fill_null("") for c in text_columns]).sort(S.ARTICLE_ID)


def article_index(article_ids_sorted: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Dense index of each id (``k + 2``), or :data:`UNKNOWN` for ids not in the articles file."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(article_ids_sorted) == 0:
        return np.full(len(ids), UNKNOWN, dtype=np.int32)
    pos = np.searchsorted(article_ids_sorted, ids)
    pos_c = np.minimum(pos, len(article_ids_sorted) - 1)
    found = article_ids_sorted[pos_c] == ids
    return np.where(found, pos_c + FIRST_ARTICLE, UNKNOWN).astype(np.int32)


def _check_unknown(policy: str, index: np.ndarray, ids: np.ndarray, offsets: np.ndarray, path, column: str, row0: int) -> None:
    if policy not in UNKNOWN_POLICIES:
        raise ConfigError(f"unknown_article: expected one of {UNKNOWN_POLICIES}, got {policy!r}")
    if policy == "error" and (index == UNKNOWN).any():
        flat = int(np.flatnonzero(index == UNKNOWN)[0])
        row = row0 + int(np.searchsorted(offsets, flat, side="right") - 1)
        raise InputError(
            f"{path}: row {row}: column {column!r} holds article_id {int(ids[flat])}, which is not in the articles "
            "file (set unknown_article: zeros to give unknown articles the zero input: an all-padding token row, a zero "
            "document vector)"
        )


# --------------------------------------------------------------------------- document vectors
def load_document_vectors(path: str | os.PathLike, article_ids_sorted: np.ndarray, column: str = "auto") -> np.ndarray:
    """The embedding artifact (``article_id`` + one vector column) as a ``(N + 2, D)`` float32 table in
    article-index order; padding, unknown articles and articles without a vector get zeros.

    ``InputError`` (naming the file, row and value) for a null or repeated ``article_id``, a null,
    ragged or non-finite vector, and a file none of whose ids is an article of ``articles.parquet``
    (ids of other articles are ignored, but a file of another data set would give an all-zero table)."""
    schema = S.read_checked_schema(path, [S.ARTICLE_ID], {S.ARTICLE_ID: pa.int32()}, "document-vector file")
    others = [n for n in schema.names if n != S.ARTICLE_ID]
    if column == "auto":
        if len(others) != 1:
            raise InputError(f"{path}: expected one vector column besides 'article_id', found {others}; set vector_column")
        column = others[0]
    if column not in schema.names:
        raise InputError(f"{path}: missing column {column!r} (found: {', '.join(schema.names)})")
    t = schema.field(column).type
    if not ((pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) and pa.types.is_floating(t.value_type)):
        raise InputError(f"{path}: column {column!r} has dtype {S.polars_name(t)}, expected list[f32]")
    table = read_parquet_columns(path, [S.ARTICLE_ID, column])
    id_col = table.column(S.ARTICLE_ID).combine_chunks()
    if id_col.null_count:
        row = int(np.flatnonzero(id_col.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{path}: column 'article_id' is null in row {row}")
    ids = id_col.to_numpy().astype(np.int64)
    order = np.argsort(ids, kind="stable")
    dup = np.flatnonzero(np.diff(ids[order]) == 0)
    if len(dup):
        second = order[dup + 1]  # later row of each repeated pair (stable sort: order[d] < order[d + 1])
        row = int(second.min())
        first = int(np.flatnonzero(ids == ids[row])[0])
        raise InputError(f"{path}: column 'article_id' repeats article_id {ids[row]} (rows {first} and {row})")
    vectors = _vector_matrix(table.column(column).combine_chunks(), ids, path, column)
    out = np.zeros((len(article_ids_sorted) + FIRST_ARTICLE, vectors.shape[1]), dtype=np.float32)
    idx = article_index(article_ids_sorted, ids)
    known = idx != UNKNOWN
    if not known.any():
        raise InputError(
            f"{path}: column 'article_id' matches no article of the articles file (none of its {len(ids)} rows does; "
            f"row 0 holds article_id {ids[0]}), so every article would get a zero vector; is it the document-vector "
            "file of this data set?"
        )
    out[idx[known]] = vectors[known]
    return out


def _vector_matrix(vec_col: pa.Array, ids: np.ndarray, path, column: str) -> np.ndarray:
    """A list column of vectors as a (rows, D) float32 matrix: no null, ragged or non-finite vector."""
    if vec_col.null_count:
        row = int(np.flatnonzero(vec_col.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{path}: column {column!r} is null in row {row} (article_id {ids[row]})")
    offsets = vec_col.offsets.to_numpy().astype(np.int64) if not pa.types.is_fixed_size_list(vec_col.type) else None
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: refused below
        values = vec_col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    if offsets is not None:
        offsets = offsets - offsets[0]
        lens = np.diff(offsets)
        if len(lens) and (lens != lens[0]).any():
            row = int(np.flatnonzero(lens != lens[0])[0])
            raise InputError(f"{path}: row {row} (article_id {ids[row]}) has a {lens[row]}-dim vector, row 0 has {lens[0]}")
    dim = len(values) // max(len(ids), 1)
    if dim == 0:
        raise InputError(f"{path}: the vectors are empty")
    vectors = values.reshape(len(ids), dim)
    if not np.isfinite(vectors).all():  # checked after the cast to float32: a float64 1e300 becomes inf
        row = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
        raise InputError(f"{path}: row {row} (article_id {ids[row]}) holds a NaN or infinite value (or one outside "
                         "float32's range)")
    return vectors


def _list_values(arr: pa.Array, name: str, path, row0: int, key: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets rebased to 0, int64 values) of a list column (see :func:`ragged.arrow_list_parts`)."""
    offsets, values = ragged.arrow_list_parts(arr, name, path, row0, key, keys)
    return offsets, values.to_numpy().astype(np.int64)


# --------------------------------------------------------------------------- histories
@dataclass(frozen=True)
class Histories:
    """Users of one split (sorted ids) and their last ``history_size`` clicks as article indices,
    right-aligned (most recent last) and left-padded with :data:`PAD`."""

    user_ids: np.ndarray  # (U,) int64, sorted
    matrix: np.ndarray  # (U, H) int32

    def user_index(self, ids: np.ndarray) -> np.ndarray:
        """Row of each user id, or -1 for users without a history."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.user_ids, ids), len(self.user_ids) - 1)
        return np.where(self.user_ids[pos] == ids, pos, -1)


def load_histories(
    path: str | os.PathLike,
    article_ids_sorted: np.ndarray,
    history_size: int,
    unknown_article: str = "zeros",
    batch_rows: int = 50_000,
) -> Histories:
    """Read ``history.parquet`` in batches of users; every user needs a non-empty
    ``article_id_fixed`` list. Only the last ``history_size`` clicks of each user are kept, so
    memory grows with users x ``history_size``, not with the length of the click histories."""
    path = Path(path)
    S.read_checked_schema(path, S.HISTORY_REQUIRED, what="history file")
    if history_size < 1:
        raise ConfigError(f"history_size must be >= 1, got {history_size}")
    user_parts: list[np.ndarray] = []
    matrix_parts: list[np.ndarray] = []
    row0 = 0
    # pre_buffer=False: pre-buffered row groups stay alive while iterating (see steps/align/data.py)
    for batch in iter_parquet_batches(path, batch_rows, [S.USER_ID, S.HISTORY_ARTICLES]):
        users = batch.column(S.USER_ID)
        if users.null_count:
            r = int(np.flatnonzero(users.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError(f"{path}: column 'user_id' is null in row {row0 + r}")
        user_ids = users.to_numpy().astype(np.int64)
        offsets, ids = _list_values(batch.column(S.HISTORY_ARTICLES), S.HISTORY_ARTICLES, path, row0, "user_id", user_ids)
        check_field(ids, S.FIELDS[S.HISTORY_ARTICLES], path, lambda r: f"row {row0 + r} (user_id {user_ids[r]})",
                    lambda flat: int(np.searchsorted(offsets, flat, side="right") - 1))
        lens = np.diff(offsets)
        if (lens == 0).any():
            r = int(np.flatnonzero(lens == 0)[0])
            raise InputError(f"{path}: row {row0 + r} (user_id {user_ids[r]}): empty history (column 'article_id_fixed')")
        idx = article_index(article_ids_sorted, ids)
        _check_unknown(unknown_article, idx, ids, offsets, path, S.HISTORY_ARTICLES, row0)
        # keep the last history_size clicks, right-aligned
        keep = np.minimum(lens, history_size)
        rows = np.repeat(np.arange(len(lens)), keep)
        within = np.arange(int(keep.sum())) - np.repeat(np.cumsum(keep) - keep, keep)
        src = np.repeat(offsets[1:] - keep, keep) + within
        col = history_size - np.repeat(keep, keep) + within
        matrix = np.zeros((len(lens), history_size), dtype=np.int32)
        matrix[rows, col] = idx[src]
        user_parts.append(user_ids)
        matrix_parts.append(matrix)
        row0 += len(user_ids)
    if row0 == 0:
        raise InputError(f"{path}: the history file has no rows")
    user_ids = np.concatenate(user_parts)
    order = np.argsort(user_ids, kind="stable")
    dup = np.flatnonzero(np.diff(user_ids[order]) == 0)
    if len(dup):
        row = int(order[dup[0] + 1])
        raise InputError(f"{path}: user_id {user_ids[row]} appears twice (row {row})")
    return Histories(user_ids[order], np.concatenate(matrix_parts)[order])


# --------------------------------------------------------------------------- behaviors
@dataclass(frozen=True)
class SplitArrays:
    """One split's impressions as flat arrays on disk (see :func:`read_behaviors`)."""

    name: str
    behaviors_path: str
    n_impressions: int
    n_ba_rows: int
    has_labels: bool
    impression_ids: FileRef  # (n,) uint32
    user_index: FileRef  # (n,) int32, row in the split's Histories
    offsets: FileRef  # (n + 1,) int64
    inview_ids: FileRef  # (nnz,) int32 article ids
    inview_index: FileRef  # (nnz,) int32 article indices
    clicked: FileRef  # (nnz,) bool
    n_dropped_without_negative: int = 0  # train/validation impressions skipped (drop_without_negative)
    n_unlabelled_without_negative: int = 0  # test impressions kept with their clicks removed (drop_without_negative)


@dataclass(frozen=True)
class SplitData:
    """:class:`SplitArrays` loaded (memory-mapped)."""

    impression_ids: np.ndarray
    user_index: np.ndarray
    offsets: np.ndarray
    inview_ids: np.ndarray
    inview_index: np.ndarray
    clicked: np.ndarray
    has_labels: bool

    @property
    def n(self) -> int:
        return len(self.impression_ids)


def load_split(ref: SplitArrays) -> SplitData:
    return SplitData(
        load_array(ref.impression_ids), load_array(ref.user_index), np.asarray(load_array(ref.offsets)),
        load_array(ref.inview_ids), load_array(ref.inview_index), load_array(ref.clicked), ref.has_labels,
    )


def read_behaviors(
    path: str | os.PathLike,
    split: str,
    article_ids_sorted: np.ndarray,
    histories: Histories,
    out_dir: str | os.PathLike,
    unknown_article: str = "zeros",
    labels: str = "required",
    drop_without_negative: bool = False,
    batch_rows: int = 100_000,
) -> SplitArrays:
    """Validate ``behaviors.parquet`` batch by batch and write it as flat arrays under ``out_dir``.

    ``labels``: ``required`` (train/validation: ``article_ids_clicked`` must exist, every ordinary
    impression needs a click and a non-clicked article) or ``optional`` (test: used when present).
    Errors name the file, row, impression and value: missing file/column, wrong dtype, null values,
    empty in-view list, an article listed twice in one in-view list, a repeated non-zero
    ``impression_id``, user without history, unknown article (``unknown_article: error``), clicked
    article not in view, impression without a negative (unless ``drop_without_negative``).

    ``drop_without_negative``: with ``labels="required"`` such impressions are skipped (counted in
    ``n_dropped_without_negative``); with ``labels="optional"`` (the test split) they are kept — the
    submission must rank every impression — but their clicks are removed, so they are scored and
    dumped without labels and left out of the metrics (counted in ``n_unlabelled_without_negative``).
    """
    path = Path(path)
    if labels not in ("required", "optional"):
        raise ConfigError(f"labels must be 'required' or 'optional', got {labels!r}")
    required = [*S.BEHAVIORS_REQUIRED, *([S.CLICKED] if labels == "required" else [])]
    schema = S.read_checked_schema(path, required, what=f"{split} behaviors file")
    scan = _BehaviorsScan(path, article_ids_sorted, histories, Path(out_dir) / split, unknown_article, labels,
                          drop_without_negative, S.CLICKED in schema.names)
    refs = scan.run(batch_rows)
    return SplitArrays(
        name=split, behaviors_path=str(path.absolute()), n_impressions=scan.n_rows, n_ba_rows=scan.n_ba,
        has_labels=scan.has_labels, n_dropped_without_negative=scan.n_dropped,
        n_unlabelled_without_negative=scan.n_unlabelled, **refs,
    )


class _BehaviorsScan:
    """One pass over a behaviors file (see :func:`read_behaviors`): each batch checked and appended."""

    def __init__(self, path: Path, article_ids_sorted: np.ndarray, histories: Histories, out: Path,
                 unknown_article: str, labels: str, drop_without_negative: bool, has_labels: bool):
        self.path, self.article_ids_sorted, self.histories = path, article_ids_sorted, histories
        self.unknown_article, self.labels, self.drop_without_negative = unknown_article, labels, drop_without_negative
        self.has_labels = has_labels
        self.writers = {
            "impression_ids": ArrayAppender(out / "impression_ids", np.uint32),
            "user_index": ArrayAppender(out / "user_index", np.int32),
            "offsets": ArrayAppender(out / "offsets", np.int64),
            "inview_ids": ArrayAppender(out / "inview_ids", np.int32),
            "inview_index": ArrayAppender(out / "inview_index", np.int32),
            "clicked": ArrayAppender(out / "clicked", np.bool_),
        }
        self.writers["offsets"].append(np.zeros(1, np.int64))
        self.nnz = self.n_rows = self.n_ba = self.n_dropped = self.n_unlabelled = 0
        self.row0 = 0
        self.impression_parts: list[np.ndarray] = []  # every row's impression_id, for the repeat check

    def run(self, batch_rows: int) -> dict[str, FileRef]:
        """Every batch, then the whole-file checks; the closed writers' refs."""
        columns = [*S.BEHAVIORS_REQUIRED, *([S.CLICKED] if self.has_labels else [])]
        try:
            for batch in iter_parquet_batches(self.path, batch_rows, columns):
                self._batch(batch)
                self.row0 += batch.num_rows
            if self.impression_parts:
                _check_impression_ids_unique(np.concatenate(self.impression_parts), self.path)
        except BaseException:
            for w in self.writers.values():
                w.abort()
            raise
        if self.n_rows == 0:
            for w in self.writers.values():
                w.abort()
            raise InputError(f"{self.path}: the behaviors file has no usable rows")
        return {k: w.close() for k, w in self.writers.items()}

    def _row_text(self, imp: np.ndarray):
        row0 = self.row0
        return lambda r: f"row {row0 + r} (impression_id {imp[r]})"

    def _batch(self, batch: pa.RecordBatch) -> None:
        path, row0, n = self.path, self.row0, batch.num_rows
        for col in (S.IMPRESSION_ID, S.IMPRESSION_TIME, S.USER_ID):
            if batch.column(col).null_count:
                r = int(np.flatnonzero(batch.column(col).is_null().to_numpy(zero_copy_only=False))[0])
                raise InputError(f"{path}: column {col!r} is null in row {row0 + r}")
        imp = batch.column(S.IMPRESSION_ID).to_numpy().astype(np.int64)
        users = batch.column(S.USER_ID).to_numpy().astype(np.int64)
        off, ids = _list_values(batch.column(S.INVIEW), S.INVIEW, path, row0, "impression_id", imp)
        check_field(ids, S.FIELDS[S.INVIEW], path, self._row_text(imp), lambda flat: int(np.searchsorted(off, flat, side="right") - 1))
        lens = np.diff(off)
        if (lens == 0).any():
            r = int(np.flatnonzero(lens == 0)[0])
            raise InputError(f"{path}: row {row0 + r} (impression_id {imp[r]}): empty {S.INVIEW!r} list")
        view_rows = ragged.row_ids(off)
        view_key = (view_rows << 32) | (ids & 0xFFFFFFFF)
        view_sorted = np.sort(view_key)
        if (np.diff(view_sorted) == 0).any():
            _raise_inview_repeat(ids, off, imp, path, row0)
        self.impression_parts.append(imp.astype(np.uint32))
        uidx = self.histories.user_index(users)
        if (uidx < 0).any():
            r = int(np.flatnonzero(uidx < 0)[0])
            raise InputError(
                f"{path}: row {row0 + r} (impression_id {imp[r]}): user_id {users[r]} has no history in the "
                "split's history.parquet"
            )
        aidx = article_index(self.article_ids_sorted, ids)
        _check_unknown(self.unknown_article, aidx, ids, off, path, S.INVIEW, row0)
        clicked = np.zeros(len(ids), dtype=bool)
        keep = np.ones(n, dtype=bool)
        if self.has_labels:
            clicked, keep = self._labels(batch, imp, lens, view_rows, view_key, view_sorted, clicked, keep)
        self._append(np.flatnonzero(keep), imp, off, lens, ids, uidx, aidx, clicked)

    def _labels(self, batch, imp, lens, view_rows, view_key, view_sorted, clicked, keep):
        """Click flags of the in-view articles, checked; impressions without a negative dropped or unlabelled."""
        path, row0, n, labels = self.path, self.row0, batch.num_rows, self.labels
        off_c, click_ids = _list_values(batch.column(S.CLICKED), S.CLICKED, path, row0, "impression_id", imp)
        check_field(click_ids, S.FIELDS[S.CLICKED], path, self._row_text(imp),
                    lambda flat: int(np.searchsorted(off_c, flat, side="right") - 1))
        click_rows = ragged.row_ids(off_c)
        click_key = np.unique((click_rows << 32) | (click_ids & 0xFFFFFFFF))
        pos = np.minimum(np.searchsorted(click_key, view_key), max(len(click_key) - 1, 0))
        clicked = (click_key[pos] == view_key) if len(click_key) else clicked
        found = np.bincount(view_rows[clicked], minlength=n)
        present = view_sorted[np.minimum(np.searchsorted(view_sorted, click_key), len(view_sorted) - 1)] == click_key
        if not present.all():
            key = int(click_key[~present][0])
            r = key >> 32
            raise InputError(
                f"{path}: row {row0 + r} (impression_id {imp[r]}): clicked article {key & 0xFFFFFFFF} is not in "
                f"{S.INVIEW!r}"
            )
        ordinary = imp != 0
        if labels == "required":
            no_click = ordinary & (found == 0)
            if no_click.any():
                r = int(np.flatnonzero(no_click)[0])
                raise InputError(f"{path}: row {row0 + r} (impression_id {imp[r]}): no clicked article")
        no_neg = ordinary & (found > 0) & (found == lens)
        if no_neg.any():
            if not self.drop_without_negative:
                r = int(np.flatnonzero(no_neg)[0])
                remedy = ("skip such impressions" if labels == "required" else
                          "keep such test impressions without their labels: scored and submitted, not evaluated")
                raise InputError(
                    f"{path}: row {row0 + r} (impression_id {imp[r]}): every in-view article is clicked, so the "
                    f"impression has no negative to train or evaluate on (set drop_without_negative: true to {remedy})"
                )
            if labels == "required":
                keep &= ~no_neg
                self.n_dropped += int(no_neg.sum())
            else:  # the test split: every impression must stay in the submission
                clicked &= ~no_neg[view_rows]
                self.n_unlabelled += int(no_neg.sum())
        return clicked, keep

    def _append(self, rows, imp, off, lens, ids, uidx, aidx, clicked) -> None:
        idx, valid = ragged.padded_index(off, rows, int(lens[rows].max()) if len(rows) else 0)
        flat = idx[valid]
        sub_off = np.cumsum(lens[rows]) + self.nnz
        w = self.writers
        w["impression_ids"].append(imp[rows].astype(np.uint32))
        w["user_index"].append(uidx[rows].astype(np.int32))
        w["offsets"].append(sub_off)
        w["inview_ids"].append(ids[flat].astype(np.int32))
        w["inview_index"].append(aidx[flat])
        w["clicked"].append(clicked[flat])
        self.nnz += len(flat)
        self.n_rows += len(rows)
        self.n_ba += int((imp[rows] == 0).sum())


def _raise_inview_repeat(ids: np.ndarray, offsets: np.ndarray, imp: np.ndarray, path, row0: int) -> None:
    """An article listed twice in one impression's in-view list: name the earliest such row, the
    article and both positions."""
    ragged.refuse_repeat_in_rows(offsets, ids, lambda r, a, b: (
        f"{path}: row {row0 + r} (impression_id {imp[r]}): column {S.INVIEW!r} lists article "
        f"{int(ids[offsets[r] + a])} twice (positions {a} and {b})"))


def _check_impression_ids_unique(imp: np.ndarray, path) -> None:
    """Every non-zero ``impression_id`` of the file (all batches) once; 0 marks the beyond-accuracy rows."""
    order = np.argsort(imp, kind="stable")
    s = imp[order]
    dup = np.flatnonzero((np.diff(s) == 0) & (s[1:] != 0))
    if len(dup):
        second = order[dup + 1]  # the later row of each repeated pair
        row = int(second.min())
        first = int(np.flatnonzero(imp == imp[row])[0])
        raise InputError(f"{path}: column 'impression_id' repeats impression_id {int(imp[row])} (rows {first} and {row})")
