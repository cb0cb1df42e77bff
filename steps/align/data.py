"""Reading and validating prediction dumps in the NAILS / EB-NeRD test-scores layout.

A dump is one parquet file, one row per impression:

* ``impression_id`` (u32) — ``0`` marks the beyond-accuracy (BA) block, whose rows all rank the
  same shared candidate list; ``> 0`` an ordinary impression;
* ``article_ids_inview`` (list[i32]) and ``scores`` (list[f32], raw logits, same length);
* optionally ``article_ids_clicked`` (list[i32]) — the labels.

:func:`prepare_dump` reads it once, in batches, checks every row, and writes a compact columnar
copy (memory-mapped arrays) that the alignment tasks stream through:

* the BA block as a dense (rows × candidates) matrix of softmax probabilities, after removing
  excluded categories from the candidate list;
* the labelled block as flat arrays (offsets, category index, logits, click flags).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import polars as pl
import pyarrow as pa

from steps import ragged
from steps.align.categories import to_codes
from steps.errors import ConfigError, InputError
from steps.storage import ArrayAppender, FileRef, file_ref, read_slice, rebase_refs, save_array, staged_dir
from steps.validate import Field, check_field, fields_table, first_repeat, iter_parquet_batches, read_parquet_schema, smallest_int_dtype

IMPRESSION_ID = "impression_id"
INVIEW = "article_ids_inview"
SCORES = "scores"
CLICKED = "article_ids_clicked"
ARTICLE_ID = "article_id"
CATEGORY_STR = "category_str"

#: Internal name for articles that have no category (see ``missing_category``).
MISSING_CATEGORY = "<missing>"
MISSING_POLICIES = ("error", "exclude")

#: The dump's exact layout (what NewsRecFlow and the synthetic dump write; the reader accepts any
#: integer / floating widths, see :func:`check_prediction_schema`); without labels: the first three.
PREDICTION_SCHEMA = pa.schema(
    [
        (IMPRESSION_ID, pa.uint32()),
        (INVIEW, pa.list_(pa.int32())),
        (SCORES, pa.list_(pa.float32())),
        (CLICKED, pa.list_(pa.int32())),
    ]
)
PREDICTION_SCHEMA_NO_LABELS = pa.schema(list(PREDICTION_SCHEMA)[:3])

#: Valid range of every stored field of a dump and of the articles file (what is refused; README).
FIELDS = fields_table([
    Field(IMPRESSION_ID, "uint32", 0, None, "impression ids (0: the beyond-accuracy rows)"),
    Field(INVIEW, "int32", 0, None, "article ids"),
    Field(CLICKED, "int32", 0, None, "article ids"),
    Field(SCORES, "float32", None, None, "finite logits"),
    Field(ARTICLE_ID, "int32", 0, None, "article ids"),
])


# --------------------------------------------------------------------------- schema checks
def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


_SHORT = {"int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64", "uint8": "u8", "uint16": "u16",
          "uint32": "u32", "uint64": "u64", "float": "f32", "double": "f64", "halffloat": "f16", "string": "str",
          "large_string": "str", "bool": "bool"}


def _describe(t: pa.DataType) -> str:
    """A dtype the way Polars prints it: ``list[f32]``, ``u32``, ``str``."""
    if _is_list(t):
        return f"list[{_describe(t.value_type)}]"
    return _SHORT.get(str(t), str(t))


def check_prediction_schema(path: str | os.PathLike) -> pa.Schema:
    """Open the dump's schema and check columns and dtypes; returns the schema."""
    schema = read_parquet_schema(path, "prediction file", (IMPRESSION_ID, INVIEW, SCORES))
    path, names = Path(path), set(schema.names)
    if not pa.types.is_integer(schema.field(IMPRESSION_ID).type):
        raise InputError(
            f"{path}: column {IMPRESSION_ID!r} has dtype {_describe(schema.field(IMPRESSION_ID).type)}, expected an integer (u32)"
        )
    for col, want, check in (
        (INVIEW, "list[i32]", pa.types.is_integer),
        (SCORES, "list[f32]", pa.types.is_floating),
        (CLICKED, "list[i32]", pa.types.is_integer),
    ):
        if col not in names:
            continue
        t = schema.field(col).type
        if not (_is_list(t) and check(t.value_type)):
            raise InputError(f"{path}: column {col!r} has dtype {_describe(t)}, expected {want}")
    return schema


def load_articles(path: str | os.PathLike) -> pl.DataFrame:
    """``article_id`` (i32) and ``category`` (paper code, or the raw name; null if missing)."""
    schema = read_parquet_schema(path, "articles file", (ARTICLE_ID, CATEGORY_STR))
    path = Path(path)
    if not pa.types.is_integer(schema.field(ARTICLE_ID).type):
        raise InputError(f"{path}: column {ARTICLE_ID!r} has dtype {_describe(schema.field(ARTICLE_ID).type)}, expected i32")
    t = schema.field(CATEGORY_STR).type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)):
        raise InputError(f"{path}: column {CATEGORY_STR!r} has dtype {_describe(t)}, expected str")
    try:
        df = pl.read_parquet(path, columns=[ARTICLE_ID, CATEGORY_STR])
    except Exception as exc:  # a corrupt page behind a valid footer
        raise InputError(f"{path}: cannot read columns {ARTICLE_ID!r}, {CATEGORY_STR!r}: the file is damaged or "
                         f"truncated ({type(exc).__name__}: {exc})") from exc
    if df[ARTICLE_ID].null_count():
        row = int(df[ARTICLE_ID].is_null().arg_max())
        raise InputError(f"{path}: column {ARTICLE_ID!r} is null in row {row}")
    dup = ~df[ARTICLE_ID].is_first_distinct()
    if dup.any():
        row = int(dup.arg_max())
        raise InputError(f"{path}: column {ARTICLE_ID!r} repeats article_id {df[ARTICLE_ID][row]} (row {row})")
    check_field(df[ARTICLE_ID].to_numpy(), FIELDS[ARTICLE_ID], path)
    return df.select(
        pl.col(ARTICLE_ID).cast(pl.Int64),
        to_codes(pl.col(CATEGORY_STR).cast(pl.String).str.strip_chars()).replace("", None).alias("category"),
    )


# --------------------------------------------------------------------------- prepared dump
@dataclass(frozen=True)
class PreparedDump:
    """A validated dump, stored as memory-mappable arrays (see module docstring)."""

    predictions_path: str
    articles_path: str
    categories: tuple[str, ...]
    excluded_categories: tuple[str, ...]
    n_rows: int
    # beyond-accuracy block
    n_ba_rows: int
    ba_candidate_ids: np.ndarray  # (K,) article ids after exclusion
    ba_category_index: np.ndarray  # (K,) index into ``categories``
    n_ba_candidates_excluded: int
    ba_probs: FileRef | None  # (n_ba_rows, K) float32 softmax probabilities
    # labelled / ordinary impressions
    n_impressions: int
    n_labelled: int
    impression_ids: FileRef  # (n,) uint32
    offsets: FileRef  # (n + 1,) int64
    category_index: FileRef  # (nnz,) int16 (int32 beyond 32,767 categories)
    logits: FileRef  # (nnz,) float32
    clicked: FileRef  # (nnz,) bool
    # distributions over ``categories``
    model_distribution: np.ndarray  # p(E): mean summed probability per category
    candidate_frequency: np.ndarray  # category counts of the BA candidate list (or fallback)
    distribution_source: str  # "beyond-accuracy block" or "labelled impressions"
    n_missing_category_articles: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def has_ba(self) -> bool:
        return self.n_ba_rows > 0

    @property
    def candidate_categories(self) -> list[str]:
        """Category of each BA candidate (or, without a BA block, the categories seen)."""
        if self.has_ba:
            return [self.categories[i] for i in self.ba_category_index]
        return [c for c, n in zip(self.categories, self.candidate_frequency) for _ in range(int(n))]


@dataclass
class _Accumulators:
    ba_ids: list[np.ndarray] = field(default_factory=list)
    ba_scores: list[np.ndarray] = field(default_factory=list)
    ba_reference: np.ndarray | None = None
    ba_first_row: int = -1


def _article_category_lookup(articles: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    cats = sorted(articles["category"].drop_nulls().unique().to_list())
    df = articles.sort(ARTICLE_ID).with_columns(
        pl.col("category").replace_strict(cats, list(range(len(cats))), default=-1, return_dtype=pl.Int64).alias("idx")
    )
    return df[ARTICLE_ID].to_numpy(), df["idx"].to_numpy(), cats


def _lookup(ids_sorted: np.ndarray, cat_idx: np.ndarray, article_ids: np.ndarray) -> np.ndarray:
    """Category index of each article id; -1 for ids not in the articles file or without category."""
    pos = np.searchsorted(ids_sorted, article_ids)
    pos_c = np.minimum(pos, len(ids_sorted) - 1) if len(ids_sorted) else pos
    found = (pos < len(ids_sorted)) & (ids_sorted[pos_c] == article_ids) if len(ids_sorted) else np.zeros(len(article_ids), bool)
    return np.where(found, cat_idx[pos_c] if len(ids_sorted) else -1, -1)


def prepare_dump(
    predictions_path: str | os.PathLike,
    articles_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    exclude_categories: Sequence[str] = ("auto",),
    missing_category: str = "error",
    batch_rows: int = 25_000,
) -> PreparedDump:
    """Validate the dump row by row and write its compact copy to ``out_dir``.

    Raises :class:`InputError` naming the file, column, row, impression and value for: a missing
    column, a wrong dtype, a value outside its field's range (:data:`FIELDS`: a negative or
    too-large article id, an impression id outside u32, a score that is not finite in float32), a
    repeated non-zero ``impression_id``, in-view/scores length mismatch, an empty in-view list, an
    article twice in one in-view list, a clicked article that is not in view, a labelled impression
    without a non-clicked article, BA rows whose candidate lists differ, a damaged parquet page,
    and articles without a category (unless ``missing_category="exclude"``, which removes them
    from the BA candidate list and treats them as outside every target elsewhere).

    Everything is written into a temporary folder inside ``out_dir`` and moved into place only
    when the whole dump has been validated, so a failure leaves no final-named file.
    """
    predictions_path, articles_path = Path(predictions_path), Path(articles_path)
    with staged_dir(out_dir) as tmp:
        if missing_category not in MISSING_POLICIES:
            raise ConfigError(f"missing_category must be one of {MISSING_POLICIES}, got {missing_category!r}")
        if batch_rows < 1:
            raise ConfigError(f"batch_rows must be positive, got {batch_rows}")
        schema = check_prediction_schema(predictions_path)
        articles = load_articles(articles_path)
        scan = _DumpScan(predictions_path, articles, CLICKED in schema.names, tmp)
        scan.run(batch_rows, articles_path, missing_category)
        prepared = scan.prepared(articles_path, exclude_categories, tmp)
    return rebase_refs(prepared, tmp, out_dir)


class _DumpScan:
    """One pass over a dump: every batch checked, the ordinary impressions appended to the
    prepared arrays, the BA rows gathered, the fallback distributions summed."""

    def __init__(self, path: Path, articles: pl.DataFrame, has_clicks: bool, out_dir: Path):
        self.path = path
        self.has_clicks = has_clicks
        self.ids_sorted, self.art_cat, categories = _article_category_lookup(articles)
        self.missing_index = len(categories)
        self.categories_all = [*categories, MISSING_CATEGORY]
        self.writers = {
            "impression_ids": ArrayAppender(out_dir / "impression_ids", np.uint32),
            "offsets": ArrayAppender(out_dir / "offsets", np.int64),
            # int16 while the categories fit (EB-NeRD has ~30); a wider index rather than a wrapped one
            "category_index": ArrayAppender(out_dir / "category_index", smallest_int_dtype(len(self.categories_all))),
            "logits": ArrayAppender(out_dir / "logits", np.float32),
            "clicked": ArrayAppender(out_dir / "clicked", np.bool_),
        }
        self.writers["offsets"].append(np.zeros(1, np.int64))
        self.acc = _Accumulators()
        self.nnz_written = 0
        self.n_impressions = self.n_labelled = 0
        self.missing_articles: dict[int, int] = {}  # article id -> first row seen
        self.fallback_mass = np.zeros(len(self.categories_all))
        self.fallback_freq = np.zeros(len(self.categories_all))
        self.row0 = 0
        self.impression_parts: list[np.ndarray] = []  # every row's impression_id, for the repeat check
        self.refs: dict[str, FileRef] = {}

    def run(self, batch_rows: int, articles_path: Path, missing_category: str) -> None:
        """Read every batch, then the whole-file checks; the writers are closed (or aborted)."""
        columns = [IMPRESSION_ID, INVIEW, SCORES] + ([CLICKED] if self.has_clicks else [])
        try:
            # pre_buffer=False (in iter_parquet_batches): with pre-buffering, pyarrow keeps every row
            # group's buffers alive and the memory grows with the file (seen: +4 MB per 1,000 rows).
            for batch in iter_parquet_batches(self.path, batch_rows, columns):
                self._batch(batch)
                self.row0 += batch.num_rows
            self._check_repeated_impressions()
            if self.missing_articles and missing_category == "error":
                first_id, first_row = next(iter(self.missing_articles.items()))
                raise InputError(
                    f"{articles_path}: {len(self.missing_articles)} article(s) referenced by {self.path} have no "
                    f"category (e.g. article_id {first_id}, first seen in row {first_row}); add them to "
                    f"{articles_path} or set missing_category: exclude"
                )
        except BaseException:
            for w in self.writers.values():
                w.abort()
            raise
        self.refs = {k: w.close() for k, w in self.writers.items()}

    def _batch(self, batch: pa.RecordBatch) -> None:
        imp, off, lens, aids, scores = self._lists(batch)
        cat = self._categories(aids, off)
        clicked, n_click = self._clicks(batch, imp, off, lens, aids)
        is_ba = imp == 0
        if is_ba.any():
            _collect_ba(self.acc, off, aids, scores, np.flatnonzero(is_ba), self.row0, self.path)
        keep = np.flatnonzero(~is_ba)
        if len(keep):
            self._append_impressions(keep, imp, off, lens, cat, scores, clicked, n_click)

    def _impression_ids(self, batch: pa.RecordBatch) -> np.ndarray:
        row0, path = self.row0, self.path
        imp_arr = batch.column(IMPRESSION_ID)
        if imp_arr.null_count:
            row = row0 + int(np.flatnonzero(imp_arr.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError(f"{path}: column {IMPRESSION_ID!r} is null in row {row}")
        imp_raw = imp_arr.to_numpy()
        check_field(imp_raw, FIELDS[IMPRESSION_ID], path, lambda r: f"row {row0 + r}")
        imp = imp_raw.astype(np.int64)
        self.impression_parts.append(imp.astype(np.uint32))
        return imp

    def _lists(self, batch: pa.RecordBatch):
        """The batch's impression ids, in-view offsets and lengths, article ids and scores, checked."""
        row0, path = self.row0, self.path
        imp = self._impression_ids(batch)
        off, inview_vals = ragged.arrow_list_parts(batch.column(INVIEW), INVIEW, path, row0, IMPRESSION_ID, imp)
        off_s, score_vals = ragged.arrow_list_parts(batch.column(SCORES), SCORES, path, row0, IMPRESSION_ID, imp)
        lens = np.diff(off)
        lens_s = np.diff(off_s)
        if (lens != lens_s).any():
            r = int(np.flatnonzero(lens != lens_s)[0])
            raise InputError(
                f"{path}: row {row0 + r} (impression_id {imp[r]}): {INVIEW!r} has {lens[r]} "
                f"articles but {SCORES!r} has {lens_s[r]} values"
            )
        if (lens == 0).any():
            r = int(np.flatnonzero(lens == 0)[0])
            raise InputError(f"{path}: row {row0 + r} (impression_id {imp[r]}): empty {INVIEW!r} list")
        aids_raw = inview_vals.to_numpy()
        in_row = lambda flat: int(np.searchsorted(off, flat, side="right") - 1)  # noqa: E731
        check_field(aids_raw, FIELDS[INVIEW], path, self._row_text(imp), in_row)
        aids = aids_raw.astype(np.int64)
        ragged.refuse_repeat_in_rows(off, aids, lambda r, a, b: (
            f"{path}: row {row0 + r} (impression_id {imp[r]}): article {aids[off[r] + a]} appears "
            f"twice in {INVIEW!r} (positions {a} and {b})"))
        scores = score_vals.to_numpy().astype(np.float64)
        self._check_scores(scores, imp, off, aids)
        return imp, off, lens, aids, scores

    def _row_text(self, imp: np.ndarray):
        row0 = self.row0
        return lambda r: f"row {row0 + r} (impression_id {imp[r]})"

    def _check_scores(self, scores: np.ndarray, imp: np.ndarray, off: np.ndarray, aids: np.ndarray) -> None:
        with np.errstate(over="ignore"):
            bad = ~np.isfinite(scores.astype(np.float32))  # checked after the cast: 1e300 is inf in f32
        if bad.any():
            flat = int(np.flatnonzero(bad)[0])
            r = int(np.searchsorted(off, flat, side="right") - 1)
            overflow = " (outside float32's range: stored as inf)" if np.isfinite(scores[flat]) else ""
            raise InputError(
                f"{self.path}: row {self.row0 + r} (impression_id {imp[r]}): column {SCORES!r} holds "
                f"{scores[flat]}{overflow} at position {flat - off[r]} (article {aids[flat]})"
            )

    def _categories(self, aids: np.ndarray, off: np.ndarray) -> np.ndarray:
        """Category index of each in-view article; articles without one are noted and get the missing index."""
        cat = _lookup(self.ids_sorted, self.art_cat, aids)
        if (cat < 0).any():
            miss = np.flatnonzero(cat < 0)
            rows_of = np.searchsorted(off, miss, side="right") - 1
            for a, r in zip(aids[miss], rows_of):
                self.missing_articles.setdefault(int(a), self.row0 + int(r))
            cat = np.where(cat < 0, self.missing_index, cat)
        return cat

    def _clicks(self, batch: pa.RecordBatch, imp, off, lens, aids) -> tuple[np.ndarray, np.ndarray]:
        """Click flag of each in-view article and clicks per row, checked against the in-view lists."""
        n, row0, path = batch.num_rows, self.row0, self.path
        if not self.has_clicks:
            return np.zeros(len(aids), dtype=bool), np.zeros(n, dtype=np.int64)
        off_c, click_vals = ragged.arrow_list_parts(batch.column(CLICKED), CLICKED, path, row0, IMPRESSION_ID, imp)
        click_raw = click_vals.to_numpy()
        check_field(click_raw, FIELDS[CLICKED], path, self._row_text(imp),
                    lambda flat: int(np.searchsorted(off_c, flat, side="right") - 1))
        click_ids = click_raw.astype(np.int64)
        click_rows = ragged.row_ids(off_c)
        view_rows = ragged.row_ids(off)
        view_key = (view_rows << 32) | (aids & 0xFFFFFFFF)
        click_key = np.unique((click_rows << 32) | (click_ids & 0xFFFFFFFF))
        clicked = _member(view_key, click_key)
        found = np.bincount(view_rows, weights=clicked, minlength=n)
        wanted = np.bincount(click_key >> 32, minlength=n)
        if (found != wanted).any():
            r = int(np.flatnonzero(found != wanted)[0])
            in_row = click_key[(click_key >> 32) == r] & 0xFFFFFFFF
            absent = in_row[~np.isin(in_row, aids[off[r] : off[r + 1]])]
            raise InputError(
                f"{path}: row {row0 + r} (impression_id {imp[r]}): clicked article "
                f"{int(absent[0])} is not in {INVIEW!r}"
            )
        pos_per_row = np.bincount(view_rows, weights=clicked, minlength=n).astype(np.int64)
        no_neg = (pos_per_row > 0) & (pos_per_row == lens) & (imp > 0)
        if no_neg.any():
            r = int(np.flatnonzero(no_neg)[0])
            raise InputError(
                f"{path}: row {row0 + r} (impression_id {imp[r]}): every in-view article "
                "is clicked, so the impression has no negative and AUC is undefined"
            )
        return clicked, pos_per_row

    def _append_impressions(self, keep, imp, off, lens, cat, scores, clicked, n_click) -> None:
        """Write the ordinary impressions ``keep`` of a batch; sum the fallback distributions."""
        idx, valid = ragged.padded_index(off, keep, int(lens[keep].max()))
        flat = idx[valid]
        sub_off = np.concatenate([[0], np.cumsum(lens[keep])])
        w = self.writers
        w["impression_ids"].append(imp[keep].astype(np.uint32))
        w["offsets"].append(sub_off[1:] + self.nnz_written)
        w["category_index"].append(cat[flat].astype(w["category_index"].dtype))
        w["logits"].append(scores[flat].astype(np.float32))
        w["clicked"].append(clicked[flat])
        self.nnz_written += len(flat)
        self.n_impressions += len(keep)
        self.n_labelled += int((n_click[keep] > 0).sum())
        # fallback distributions, used only when the dump has no BA block
        probs = ragged.segment_softmax(sub_off, scores[flat])
        self.fallback_mass += np.bincount(cat[flat], weights=probs, minlength=len(self.categories_all))
        self.fallback_freq += np.bincount(cat[flat], minlength=len(self.categories_all))

    def _check_repeated_impressions(self) -> None:
        all_imp = np.concatenate(self.impression_parts) if self.impression_parts else np.zeros(0, np.uint32)
        self.impression_parts = []
        repeat_imp = first_repeat(all_imp, ignore=0)
        if repeat_imp is not None:
            first, row = repeat_imp
            raise InputError(
                f"{self.path}: column {IMPRESSION_ID!r} repeats impression_id {int(all_imp[row])} (rows {first} "
                f"and {row}); only the beyond-accuracy rows (impression_id 0) share an id"
            )

    def _ba_block(self, excluded: list[str], excluded_idx: np.ndarray, out_dir: Path) -> dict:
        """The BA block's softmax probabilities (stored), kept candidates and distributions."""
        acc, n_cat = self.acc, len(self.categories_all)
        ba_ids = acc.ba_reference
        ba_cat = _lookup(self.ids_sorted, self.art_cat, ba_ids)
        ba_cat = np.where(ba_cat < 0, self.missing_index, ba_cat)
        keep_cols = ~np.isin(ba_cat, excluded_idx)
        if not keep_cols.any():
            raise InputError(
                f"{self.path}: every beyond-accuracy candidate is in an excluded category ({', '.join(excluded)})"
            )
        n_ba = sum(len(b) for b in acc.ba_scores)
        probs = np.empty((n_ba, int(keep_cols.sum())), dtype=np.float32)
        column_mass = np.zeros(probs.shape[1])
        start = 0
        for block in acc.ba_scores:  # softmax in float64, block by block; stored as float32
            p = _softmax_rows(block[:, keep_cols].astype(np.float64))
            column_mass += p.sum(axis=0)
            probs[start : start + len(p)] = p
            start += len(p)
        acc.ba_scores.clear()
        ba_ref = save_array(out_dir / "ba_probs.npy", probs)
        del probs
        return dict(
            n_ba_rows=n_ba, ba_probs=ba_ref, n_ba_candidates_excluded=int((~keep_cols).sum()),
            ba_candidate_ids=ba_ids[keep_cols], ba_category_index=ba_cat[keep_cols],
            model_distribution=np.bincount(ba_cat[keep_cols], weights=column_mass / n_ba, minlength=n_cat),
            candidate_frequency=np.bincount(ba_cat[keep_cols], minlength=n_cat).astype(np.float64),
            distribution_source="beyond-accuracy block",
        )

    def _no_ba_block(self, excluded_idx: np.ndarray, notes: list[str]) -> dict:
        """Without a BA block: the distributions of the ordinary impressions' in-view lists."""
        if self.n_impressions == 0:
            raise InputError(f"{self.path}: the file has no rows")
        freq = self.fallback_freq.copy()
        freq[excluded_idx] = 0
        if freq.sum() == 0:
            raise InputError(f"{self.path}: every in-view article is in an excluded category")
        notes.append(
            f"{self.path} has no beyond-accuracy rows (impression_id == 0): beyond-accuracy metrics "
            "are skipped, and the Editorial/Uniform targets and p(E) are estimated from the in-view lists "
            "of the ordinary impressions instead"
        )
        return dict(
            n_ba_rows=0, ba_probs=None, n_ba_candidates_excluded=0,
            ba_candidate_ids=np.zeros(0, np.int64), ba_category_index=np.zeros(0, np.int64),
            model_distribution=self.fallback_mass / self.n_impressions, candidate_frequency=freq,
            distribution_source="labelled impressions",
        )

    def prepared(self, articles_path: Path, exclude_categories: Sequence[str], out_dir: Path) -> PreparedDump:
        """The :class:`PreparedDump` of the scanned file (BA probabilities written to ``out_dir``)."""
        excluded = sorted({*exclude_categories, MISSING_CATEGORY})
        excluded_idx = np.array([i for i, c in enumerate(self.categories_all) if c in excluded], dtype=np.int64)
        notes: list[str] = []
        if self.acc.ba_reference is not None:
            block = self._ba_block(excluded, excluded_idx, out_dir)
        else:
            block = self._no_ba_block(excluded_idx, notes)
        if self.missing_articles:
            notes.append(
                f"{len(self.missing_articles)} article(s) without a category were excluded from the candidate list "
                "and treated as outside every target (missing_category: exclude)"
            )
        return PreparedDump(
            predictions_path=str(self.path.absolute()),
            articles_path=str(articles_path.absolute()),
            categories=tuple(self.categories_all),
            excluded_categories=tuple(excluded),
            n_rows=self.row0,
            n_impressions=self.n_impressions,
            n_labelled=self.n_labelled,
            **self.refs,
            **block,
            n_missing_category_articles=len(self.missing_articles),
            notes=tuple(notes),
        )


def _member(values: np.ndarray, sorted_unique: np.ndarray) -> np.ndarray:
    """``np.isin(values, sorted_unique)`` for a small sorted set, by binary search."""
    if len(sorted_unique) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_unique, values), len(sorted_unique) - 1)
    return sorted_unique[pos] == values


def _softmax_rows(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=1, keepdims=True)
    return x


def _collect_ba(acc: _Accumulators, off, aids, scores, rows, row0, path) -> None:
    """Gather BA rows as dense (rows × K) arrays, checking they share one candidate list."""
    lens = np.diff(off)[rows]
    if acc.ba_reference is None:
        r = rows[0]
        acc.ba_reference = aids[off[r] : off[r + 1]].copy()
        acc.ba_first_row = row0 + int(r)
        if len(np.unique(acc.ba_reference)) != len(acc.ba_reference):
            raise InputError(f"{path}: row {acc.ba_first_row} (beyond-accuracy block) lists an article twice")
    ref = acc.ba_reference
    k = len(ref)
    if (lens != k).any():
        r = int(rows[np.flatnonzero(lens != k)[0]])
        raise InputError(
            f"{path}: row {row0 + r} (impression_id 0) has {np.diff(off)[r]} candidates but the beyond-accuracy "
            f"block's candidate list (row {acc.ba_first_row}) has {k}; every impression_id 0 row must rank the same list"
        )
    idx = off[rows][:, None] + np.arange(k)[None, :]
    ids2 = aids[idx]
    sc2 = scores[idx]
    same = (ids2 == ref[None, :]).all(axis=1)
    if not same.all():
        # Same set in another order is accepted and re-ordered; anything else is an error.
        sorter_ref = np.argsort(ref)
        bad_rows = np.flatnonzero(~same)
        sorter = np.argsort(ids2[bad_rows], axis=1)
        sorted_ids = np.take_along_axis(ids2[bad_rows], sorter, axis=1)
        mismatch = (sorted_ids != ref[sorter_ref][None, :]).any(axis=1)
        if mismatch.any():
            r = int(rows[bad_rows[np.flatnonzero(mismatch)[0]]])
            raise InputError(
                f"{path}: row {row0 + r} (impression_id 0) ranks a different candidate list than row "
                f"{acc.ba_first_row}; every impression_id 0 row must rank the same list"
            )
        # column of ref[j] in each bad row: sorter[:, rank of ref[j] among sorted ref]
        rank_of_ref = np.empty(k, dtype=np.int64)
        rank_of_ref[sorter_ref] = np.arange(k)
        cols = sorter[:, rank_of_ref]
        sc2[bad_rows] = np.take_along_axis(sc2[bad_rows], cols, axis=1)
    acc.ba_scores.append(sc2.astype(np.float32))


# --------------------------------------------------------------------------- streaming
@dataclass(frozen=True)
class ImpressionBatch:
    """A slice of the ordinary impressions, as flat arrays with local ``offsets``."""

    start: int  # index of the first impression of the batch
    impression_ids: np.ndarray
    offsets: np.ndarray
    category_index: np.ndarray
    logits: np.ndarray
    clicked: np.ndarray

    @property
    def n(self) -> int:
        return len(self.impression_ids)

    @property
    def labelled_rows(self) -> np.ndarray:
        """Rows with at least one click."""
        pos = ragged.segment_sum(self.offsets, self.clicked.astype(np.int64)) if len(self.clicked) else np.zeros(0)
        return np.flatnonzero(pos > 0)


def iter_impressions(prepared: PreparedDump, batch_rows: int) -> Iterator[ImpressionBatch]:
    """Stream the ordinary impressions in batches of ``batch_rows`` (memory stays flat)."""
    n = prepared.impression_ids.shape[0]
    for start in range(0, n, batch_rows):
        stop = min(start + batch_rows, n)
        o = read_slice(prepared.offsets, start, stop + 1).astype(np.int64)
        lo, hi = int(o[0]), int(o[-1])
        yield ImpressionBatch(
            start=start,
            impression_ids=read_slice(prepared.impression_ids, start, stop),
            offsets=o - lo,
            category_index=read_slice(prepared.category_index, lo, hi).astype(np.int64),
            logits=read_slice(prepared.logits, lo, hi),
            clicked=read_slice(prepared.clicked, lo, hi),
        )


def iter_ba_chunks(prepared: PreparedDump, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Stream the BA probability matrix in row chunks ``(chunk_index, probs float64)``."""
    if prepared.ba_probs is None:
        return
    for i, start in enumerate(range(0, prepared.n_ba_rows, chunk_rows)):
        yield i, read_slice(prepared.ba_probs, start, start + chunk_rows).astype(np.float64)


def input_refs(prepared: PreparedDump) -> dict[str, FileRef]:
    """Checksummed references to the user's input files (recorded for provenance)."""
    return {"predictions": file_ref(prepared.predictions_path), "articles": file_ref(prepared.articles_path)}
