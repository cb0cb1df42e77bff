"""NewsRecFlow's candidate bundle (the layout of :mod:`steps.candidates`): one model's scores of the
test split's **beyond-accuracy block**, with the users' EB-NeRD click histories, so AlignFlow can
calibrate the news lists toward per-user ``history`` targets.

* users: the ``user_id`` of every beyond-accuracy row (``impression_id == 0``); EB-NeRD's test set
  has one such row per user — a user with several keeps the first and the others are counted
  (``repeated_user_rows`` in the manifest);
* ``item_ids``: the shared candidate list (every BA row must rank the same set of articles), each
  row sorted by the model's logit, best first; ``scores``: the logits; no held-out items (the BA
  rows have no labels);
* ``items``: every candidate and history article with its ``category_str`` mapped to the NAILS
  paper's codes (:func:`steps.align.data.load_articles`, the mapping AlignFlow uses);
* ``history``: each user's ``article_id_fixed`` and ``impression_time_fixed`` (seconds) from the
  test split's ``history.parquet``, in file order.

Articles without a category (not in ``articles.parquet``, or an empty ``category_str``) are refused
(``missing_category: error``) or, with ``exclude`` (as AlignFlow's dump loader does), removed from
the candidate list and the histories and counted in the manifest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from steps.align.data import MISSING_POLICIES, load_articles
from steps.candidates import write_candidate_bundle
from steps.errors import ConfigError, InputError
from steps.newsrec import schema as S
from steps.newsrec.ebnerd import SplitData
from steps.newsrec.inference import select_rows
from steps.storage import localize, localize_input

if TYPE_CHECKING:
    from steps.newsrec.prepare import PreparedNewsData


def ba_block(split: SplitData, user_ids: np.ndarray, scores: np.ndarray, behaviors_path: str = "behaviors.parquet"):
    """``(rows, users, item_ids (U, M), scores (U, M), repeated)``: the beyond-accuracy rows of the
    split (first row per user), their shared list sorted by score (best first); None without BA rows."""
    imp = np.asarray(split.impression_ids)
    rows = np.flatnonzero(imp == 0)
    if len(rows) == 0:
        return None
    sub, flat = select_rows(split.offsets, rows)
    lens = np.diff(sub)
    m = int(lens[0])
    if (lens != m).any():
        r = int(np.flatnonzero(lens != m)[0])
        raise InputError(f"{behaviors_path}: row {int(rows[r])} (impression_id 0): column {S.INVIEW!r} holds {lens[r]} "
                         f"articles but the first beyond-accuracy row (row {int(rows[0])}) holds {m}; the beyond-accuracy "
                         "rows must share one candidate list")
    ids = np.asarray(split.inview_ids, dtype=np.int64)[flat].reshape(len(rows), m)
    sc = np.asarray(scores, dtype=np.float32)[flat].reshape(len(rows), m)
    ref = np.sort(ids[0])
    srt = np.sort(ids, axis=1)
    diff = srt != ref[None, :]
    if diff.any():
        r, c = (int(x) for x in np.argwhere(diff)[0])
        extra = np.setdiff1d(ids[r], ref)
        raise InputError(f"{behaviors_path}: row {int(rows[r])} (impression_id 0): column {S.INVIEW!r} holds article "
                         f"{int(extra[0]) if len(extra) else int(srt[r, c])}, not in the first beyond-accuracy row's list "
                         f"(row {int(rows[0])}); the beyond-accuracy rows must share one candidate list")
    if not np.isfinite(sc).all():
        r = int(np.flatnonzero(~np.isfinite(sc).all(axis=1))[0])
        raise InputError(f"the scores of test row {int(rows[r])} (impression_id 0) hold NaN or infinite values (a diverged model?)")
    users = np.asarray(user_ids, dtype=np.int64)[np.asarray(split.user_index)[rows]]
    first = pl.Series(users).is_first_distinct().to_numpy()
    order = np.argsort(-sc[first], axis=1, kind="stable")
    return (rows[first], users[first], np.take_along_axis(ids[first], order, axis=1),
            np.take_along_axis(sc[first], order, axis=1), int((~first).sum()))


def read_user_histories(path: str | os.PathLike, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(offsets (U+1,), article ids, times in seconds or None)`` of ``users`` (in that order) from an
    EB-NeRD ``history.parquet``; every user needs a row, and each click a non-null id and time."""
    path = Path(path)
    schema = S.read_checked_schema(path, S.HISTORY_REQUIRED, what="history file")
    has_times = S.HISTORY_TIMES in schema.names
    cols = [S.USER_ID, S.HISTORY_ARTICLES, *([S.HISTORY_TIMES] if has_times else [])]
    want = pl.DataFrame({S.USER_ID: np.asarray(users, dtype=np.int64), "_u": np.arange(len(users))})
    h = (pl.scan_parquet(path).select(cols).with_row_index("_row")  # only the BA users' rows are materialised
         .with_columns(pl.col(S.USER_ID).cast(pl.Int64))
         .join(want.lazy(), on=S.USER_ID, how="inner").sort("_u").collect())
    if h["_u"].is_duplicated().any():
        r = int(h["_row"][int(h["_u"].is_duplicated().arg_max()) + 1])
        raise InputError(f"{path}: row {r}: user_id {h[S.USER_ID][int(h['_u'].is_duplicated().arg_max())]} appears twice")
    if len(h) < len(users):
        missing = np.setdiff1d(users, h[S.USER_ID].to_numpy())
        raise InputError(f"{path}: column {S.USER_ID!r} has no row for user_id {int(missing[0])} "
                         f"({len(missing)} beyond-accuracy user(s) without a history)")
    for col in cols[1:]:
        if h[col].null_count():
            i = int(h[col].is_null().arg_max())
            raise InputError(f"{path}: row {h['_row'][i]} (user_id {h[S.USER_ID][i]}): column {col!r} is null")
    lens = h[S.HISTORY_ARTICLES].list.len().to_numpy().astype(np.int64)
    if has_times:
        t_lens = h[S.HISTORY_TIMES].list.len().to_numpy()
        if (t_lens != lens).any():
            i = int(np.flatnonzero(t_lens != lens)[0])
            raise InputError(f"{path}: row {h['_row'][i]} (user_id {h[S.USER_ID][i]}): {S.HISTORY_ARTICLES!r} has "
                             f"{lens[i]} clicks but {S.HISTORY_TIMES!r} has {t_lens[i]} times")
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    ids = pl.Series(h[S.HISTORY_ARTICLES].to_arrow().flatten())
    times = pl.Series(h[S.HISTORY_TIMES].to_arrow().flatten()).dt.epoch("s") if has_times else None
    for col, values in ((S.HISTORY_ARTICLES, ids), (S.HISTORY_TIMES, times)):
        if values is not None and values.null_count():
            i = int(np.searchsorted(offsets, int(values.is_null().arg_max()), side="right") - 1)
            raise InputError(f"{path}: row {h['_row'][i]} (user_id {h[S.USER_ID][i]}): column {col!r} holds a null")
    return offsets, ids.to_numpy().astype(np.int64), (times.to_numpy().astype(np.int64) if times is not None else None)


def write_news_candidates(out_dir: str | os.PathLike, split: SplitData, user_ids: np.ndarray, scores: np.ndarray,
                          articles_path: str | os.PathLike, history_path: str | os.PathLike, model: str,
                          missing_category: str = "error", behaviors_path: str = "behaviors.parquet",
                          meta: dict | None = None) -> Path | None:
    """Write ``model``'s bundle of the beyond-accuracy block (module docstring) to ``out_dir``.

    ``split``: the loaded test split; ``user_ids``: the user id of each row of the split's
    history matrix (``split.user_index`` indexes it); ``scores``: the flat logits of every in-view
    article. Returns the path of ``manifest.json``, or None when the split has no BA rows."""
    if missing_category not in MISSING_POLICIES:
        raise ConfigError(f"missing_category must be one of {MISSING_POLICIES}, got {missing_category!r}")
    block = ba_block(split, user_ids, scores, behaviors_path)
    if block is None:
        return None
    rows, users, cand, sc, repeated = block
    h_off, h_ids, h_times = read_user_histories(history_path, users)
    arts = load_articles(articles_path)
    known = arts.drop_nulls("category")
    needed = np.unique(np.concatenate([cand[0], h_ids]))
    has_cat = np.isin(needed, known["article_id"].to_numpy())
    no_cat = needed[~has_cat]
    cand_ok = ~np.isin(cand[0], no_cat)
    hist_ok = ~np.isin(h_ids, no_cat)
    if len(no_cat) and missing_category == "error":
        if not cand_ok.all():
            a = int(cand[0][~cand_ok][0])
            where = f"the beyond-accuracy candidate list of {behaviors_path} (row {int(rows[0])})"
        else:
            flat = int(np.flatnonzero(~hist_ok)[0])
            i = int(np.searchsorted(h_off, flat, side="right") - 1)
            a = int(h_ids[flat])
            where = f"{history_path} (user_id {int(users[i])}, click {flat - int(h_off[i])})"
        raise InputError(f"{articles_path}: column {S.CATEGORY_STR!r}: article_id {a}, referenced by {where}, has no "
                         f"category ({len(no_cat)} article(s) without one); add them or set missing_category: exclude")
    if not cand_ok.any():
        raise InputError(f"{articles_path}: no beyond-accuracy candidate of {behaviors_path} has a category")
    n_cand_dropped, n_clicks_dropped = int((~cand_ok).sum()), int((~hist_ok).sum())
    if n_cand_dropped:
        keep = ~np.isin(cand, no_cat)
        cand, sc = cand[keep].reshape(len(users), -1), sc[keep].reshape(len(users), -1)
    if n_clicks_dropped:
        lens = np.bincount(np.repeat(np.arange(len(users)), np.diff(h_off))[hist_ok], minlength=len(users))
        h_off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        h_ids = h_ids[hist_ok]
        h_times = h_times[hist_ok] if h_times is not None else None
    items = (known.filter(pl.col("article_id").is_in(pl.Series(needed[has_cat]).implode()))
             .select(pl.col("article_id").alias("item_id"), pl.concat_list("category").alias("categories")))
    notes = []
    if repeated:
        notes.append(f"{repeated} beyond-accuracy row(s) repeat a user; each user keeps its first row")
    if len(no_cat):
        notes.append(f"{len(no_cat)} article(s) without a category excluded: {n_cand_dropped} candidate(s), "
                     f"{n_clicks_dropped} history click(s) (missing_category: exclude)")
    info = {"dataset": "EB-NeRD", "model": model, "flow": "NewsRecFlow", "split": "test", "block": "beyond-accuracy",
            "ba_rows": int(len(rows) + repeated), "repeated_user_rows": repeated,
            "missing_category_articles": int(len(no_cat)), "candidates_without_category": n_cand_dropped,
            "history_clicks_without_category": n_clicks_dropped, "history_timestamps": h_times is not None,
            "excludes_history": False, "notes": notes, **dict(meta or {})}
    return write_candidate_bundle(out_dir, users, cand, sc, items, history=(h_off, h_ids, h_times), meta=info)


def news_candidates(data: "PreparedNewsData", test: SplitData, scores: np.ndarray, model: str, out_dir: str | os.PathLike,
                    missing_category: str = "error") -> Path | None:
    """:func:`write_news_candidates` for one model of NewsRecFlow's prepared data (None without a
    test history file or BA rows)."""
    if getattr(data, "test_history", None) is None or "test" not in data.splits:
        return None
    history = localize(data.test_history)
    history.verify()
    return write_news_candidates(out_dir, test, data.histories("test").user_ids, scores, localize_input(data.articles_path),
                                 history.path, model, missing_category, data.splits["test"].behaviors_path,
                                 {"bundle": data.bundle, "synthetic": data.synthetic})
