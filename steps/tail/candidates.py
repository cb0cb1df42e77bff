"""TailFlow's candidate bundles (the layout of :mod:`steps.candidates`) and the side tables they need.

For every method, the test users' top-M items (``candidates_top_m``, default 100) with the scores
the lists were ranked by (EASE-style ``X_fold-in · B``, the user's fold-in items excluded; for
``pop_rerank`` the penalised scores), the users' held-out items as labels, their fold-in items as
history (with rating timestamps where the data has them: ML-100K), and the item table with genres.

Users: the *evaluable* test users (non-empty fold-in and held-out sets), as in TailFlow's metrics;
``user_id`` is the dataset's own user id. M is ``candidates_top_m`` cut to the smallest number of
items any of those users has not folded in (every row of a bundle holds M distinct candidates).

Genres: ML-100K (either source) and ML-20M with ``items_path`` (``movies.csv``) carry them; the
synthetic data gets each item's latent cluster as its genre (``cluster_00`` …, from
:func:`steps.tail.synthetic.item_truth`); Netflix and MSD have none, so no bundle is written for
them (the flow records a note).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import scipy.sparse as sp

from steps.candidates import write_candidate_bundle
from steps.errors import InputError
from steps.storage import localize
from steps.movielens import genre_table, load_ml100k, read_ml20m_movies
from steps.tail.config import DatasetSpec
from steps.tail.evaluate import _topk_rows, no_grad
from steps.tail.synthetic import item_truth

if TYPE_CHECKING:
    from steps.tail.data import PreparedData

ITEMS_FILE = "items.parquet"
TIMES_FILE = "test_times.parquet"
TEST_USERS_FILE = "test_user_ids.npy"
NO_GENRES = "{name} ({source}): the data has no item genres, so no candidate bundle is written"


def dataset_items(spec: DatasetSpec) -> pl.DataFrame | None:
    """``item_id, categories`` of a dataset's items, or None when it has no genres."""
    if spec.source == "ml100k":
        return genre_table(load_ml100k(spec.path or "recbole").items)
    if spec.source == "ml20m" and spec.items_path:
        return genre_table(read_ml20m_movies(spec.items_path))
    if spec.source == "synthetic":
        truth = item_truth(spec.synthetic)
        return pl.DataFrame({"item_id": truth.movie_ids.astype(np.int64),
                             "categories": [[f"cluster_{c:02d}"] for c in truth.cluster.tolist()]})
    return None


def rating_times(ratings: pl.DataFrame, test_user_ids: np.ndarray) -> pl.DataFrame | None:
    """``user, item, timestamp`` (earliest) of the test users' ratings, when the loader gave timestamps."""
    if "timestamp" not in ratings.columns:
        return None
    return (ratings.filter(pl.col("user").is_in(pl.Series(test_user_ids).implode()))
            .group_by("user", "item").agg(pl.col("timestamp").min()).sort("user", "item"))


# --------------------------------------------------------------------------- scoring
@no_grad
def scored_topk(B: np.ndarray, fold_in: sp.csr_matrix, k: int, batch_users: int = 1000, device="cpu",
                penalty: np.ndarray | None = None, gamma: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``(rows (users × k) int64, scores float32)``: the lists of :func:`steps.tail.evaluate.topk_lists`
    (same scores, same tie rule) together with the scores they were ranked by."""
    import torch

    from steps.tail.models import to_torch_sparse

    fold_in = sp.csr_matrix(fold_in)
    n_users, n_items = fold_in.shape
    bt = torch.as_tensor(B, dtype=torch.float32, device=device)
    pen = None if penalty is None or gamma == 0 else torch.as_tensor(penalty, dtype=torch.float32, device=device)
    k = min(k, n_items)
    rows = np.full((n_users, k), -1, dtype=np.int64)
    scores = np.full((n_users, k), -np.inf, dtype=np.float32)
    for start in range(0, n_users, batch_users):
        xb = fold_in[start : start + batch_users]
        s = torch.sparse.mm(to_torch_sparse(xb, device), bt)
        s = s.masked_fill(torch.as_tensor(xb.toarray() > 0, device=device), float("-inf"))
        if pen is not None:
            top = s.max(dim=1, keepdim=True).values.clamp_min(0.0)
            top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
            s = s - gamma * top * pen[None, :]
        idx = _topk_rows(s, k)
        stop = start + xb.shape[0]
        rows[start:stop] = idx.cpu().numpy()
        scores[start:stop] = s.gather(1, idx.clamp_min(0)).cpu().numpy()
    bad = ~np.isfinite(scores) & (rows >= 0)
    if bad.any():
        r = int(np.flatnonzero(bad.any(axis=1))[0])
        raise InputError(f"the scores of test user row {r} hold NaN or infinite values (a diverged model?)")
    return rows, scores


def _local(ref) -> str:
    ref = localize(ref)
    ref.verify()
    return ref.path


def _rows_of(m: sp.csr_matrix, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sub = sp.csr_matrix(m)[keep]
    sub.sort_indices()
    return sub.indptr.astype(np.int64), sub.indices.astype(np.int64)


def write_tail_candidates(prepared: "PreparedData", method: str, B: np.ndarray, top_m: int, out_dir: str | os.PathLike,
                          batch_users: int = 1000, device="cpu", penalty: np.ndarray | None = None,
                          gamma: float = 0.0) -> Path | None:
    """Write one method's bundle for ``prepared``'s test users to ``out_dir``; returns the path of
    its ``manifest.json``, or None when the dataset has no item genres (or ``top_m`` is 0)."""
    if top_m <= 0 or prepared.items is None or prepared.test_user_ids is None:
        return None
    fold_in, heldout = prepared.load("test_tr"), prepared.load("test_te")
    keep = np.flatnonzero((np.diff(fold_in.indptr) > 0) & (np.diff(heldout.indptr) > 0))
    if len(keep) == 0:
        raise InputError(f"{prepared.name}: no test user has both fold-in and held-out items; no candidates to write")
    fold_k = fold_in[keep]
    m = int(min(top_m, prepared.n_items - np.diff(fold_k.indptr).max()))
    rows, scores = scored_topk(B, fold_k, m, batch_users, device, penalty, gamma)
    item_ids = prepared.item_ids.astype(np.int64)
    items = pl.read_parquet(_local(prepared.items)).filter(pl.col("item_id").is_in(pl.Series(item_ids).implode()))
    missing = np.setdiff1d(item_ids, items["item_id"].to_numpy())
    if len(missing):
        raise InputError(f"{prepared.name}: {len(missing)} catalogue item(s) have no genres in the item table "
                         f"(first: item {missing[0]}); every candidate item needs a category")
    users = prepared.test_user_ids[keep].astype(np.int64)
    h_off, h_cols = _rows_of(fold_in, keep)
    t_off, t_cols = _rows_of(heldout, keep)
    h_ids, times = item_ids[h_cols], None
    if prepared.test_times is not None:
        hist = pl.DataFrame({"user": np.repeat(users, np.diff(h_off)), "item": h_ids, "_pos": np.arange(len(h_ids))})
        joined = hist.join(pl.read_parquet(_local(prepared.test_times)), on=["user", "item"], how="left").sort("_pos")
        if joined["timestamp"].null_count():
            r = int(joined["timestamp"].is_null().arg_max())
            raise InputError(f"{prepared.name}: no timestamp for test user {joined['user'][r]}'s item {joined['item'][r]}")
        t = joined["timestamp"].to_numpy().astype(np.int64)
        order = np.lexsort((t, np.repeat(np.arange(len(users)), np.diff(h_off))))  # each user's history by time
        h_ids, times = h_ids[order], t[order]
    meta = {"dataset": prepared.name, "source": prepared.source, "model": method, "flow": "TailFlow", "split": "test",
            "candidates_top_m": int(top_m), "excludes_history": True}
    return write_candidate_bundle(out_dir, users, item_ids[rows], scores, items,
                                  heldout=(t_off, item_ids[t_cols]), history=(h_off, h_ids, times), meta=meta)
