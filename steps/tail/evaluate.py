"""Top-k lists for held-out users and the metrics of TailFlow's results table.

Lists: scores = X_fold-in · B for a batch of users (sparse × dense on the model's device), items
the user folded in get −∞, and the k best items are taken **deterministically**: by score, equal
scores by lower item index (so two implementations with the same B give the same lists). Slots a
user cannot fill (fewer than k candidate items) hold −1.

``pop_rerank`` re-ranks EASE's scores: s'_ui = s_ui − γ · max(0, max_j s_uj) · π_i with
π_i = log(1 + count_i) / log(1 + max count) ∈ [0, 1] (count = training users of item i).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from steps import metrics
from steps.errors import InputError
from steps.tail.config import Evaluation, TailSpec
from steps.tail.models import to_torch_sparse


def popularity_penalty(item_counts: np.ndarray) -> np.ndarray:
    c = np.log1p(np.asarray(item_counts, dtype=np.float64))
    return c / c.max() if c.max() > 0 else c


def _topk_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k best scores per row, best first; ties go to the lower index; −1 for −∞."""
    b, n = scores.shape
    k = min(k, n)
    thr = torch.topk(scores, k, dim=1).values[:, -1:]
    greater = scores > thr
    equal = scores == thr
    need = k - greater.sum(dim=1, keepdim=True)
    take = greater | (equal & (torch.cumsum(equal.to(torch.int32), dim=1) <= need))
    idx = take.nonzero()[:, 1].view(b, k)
    vals = scores.gather(1, idx)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    idx = idx.gather(1, order)
    return torch.where(torch.isneginf(vals.gather(1, order)), torch.full_like(idx, -1), idx)


@torch.no_grad()
def topk_lists(B: np.ndarray | torch.Tensor, fold_in: sp.csr_matrix, k: int, batch_users: int = 1000,
               device: torch.device | str = "cpu", penalty: np.ndarray | None = None, gamma: float = 0.0) -> np.ndarray:
    """(users × k) int32 item indices of every user's list (see the module docstring)."""
    fold_in = sp.csr_matrix(fold_in)
    n_users, n_items = fold_in.shape
    bt = torch.as_tensor(B, dtype=torch.float32, device=device)
    if bt.shape != (n_items, n_items):
        raise InputError(f"item-item matrix has shape {tuple(bt.shape)}, but the data has {n_items} items")
    pen = None if penalty is None or gamma == 0 else torch.as_tensor(penalty, dtype=torch.float32, device=device)
    out = np.full((n_users, min(k, n_items)), -1, dtype=np.int32)
    for start in range(0, n_users, batch_users):
        xb = fold_in[start : start + batch_users]
        scores = torch.sparse.mm(to_torch_sparse(xb, device), bt)
        seen = torch.as_tensor(xb.toarray() > 0, device=device)
        scores = scores.masked_fill(seen, float("-inf"))
        if pen is not None:
            top = scores.max(dim=1, keepdim=True).values.clamp_min(0.0)
            top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
            scores = scores - gamma * top * pen[None, :]
        nan = torch.isnan(scores).any(dim=1)
        if bool(nan.any()):
            row = start + int(nan.int().argmax())
            n_bad = int((~torch.isfinite(bt)).sum())
            raise InputError(f"the scores X·B of fold-in row {row} hold NaN, so items cannot be ranked; the item-item "
                             f"matrix B has {n_bad} NaN or infinite entries of {n_items}² (a diverged model: lower lr?)")
        out[start : start + xb.shape[0]] = _topk_rows(scores, k).cpu().numpy()
    return out


# --------------------------------------------------------------------------- item groups
def tail_items(item_counts: np.ndarray, spec: TailSpec) -> np.ndarray:
    """Boolean mask of tail items: the least popular ``fraction`` of items (``by: items``), or the
    least popular items that together hold ``fraction`` of the training interactions."""
    c = np.asarray(item_counts, dtype=np.float64)
    order = np.argsort(c, kind="stable")  # least popular first; ties by index
    mask = np.zeros(len(c), dtype=bool)
    if spec.by == "items":
        mask[order[: int(round(spec.fraction * len(c)))]] = True
    else:
        cum = np.cumsum(c[order])
        mask[order[cum <= spec.fraction * c.sum()]] = True
    return mask


def popularity_buckets(item_counts: np.ndarray, n_buckets: int) -> np.ndarray:
    """Bucket of every item, 0 = head … n_buckets−1 = tail, each bucket holding about the same
    share of the training interactions (items sorted by popularity, most popular first)."""
    c = np.asarray(item_counts, dtype=np.float64)
    order = np.argsort(-c, kind="stable")
    total = c.sum()
    if total <= 0:
        raise InputError("every item has zero training interactions; popularity buckets are undefined")
    cum_before = np.cumsum(c[order]) - c[order]
    bucket = np.minimum((cum_before / total * n_buckets).astype(np.int64), n_buckets - 1)
    out = np.empty(len(c), dtype=np.int64)
    out[order] = bucket
    return out


# --------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class Hits:
    """Where the held-out items of the evaluated users (a held-out item and a fold-in list) fall in their lists."""

    users: np.ndarray  # rows of the evaluated users
    offsets: np.ndarray  # CSR offsets of their held-out items (int64, len(users) + 1)
    items: np.ndarray  # held-out item indices, user by user
    positions: np.ndarray  # list position of every held-out item (metrics.heldout_positions)


def heldout_hits(topk: np.ndarray, heldout: sp.csr_matrix) -> Hits:
    """Match the lists ``topk`` (users × k, −1 = empty slot) against the held-out items ``heldout``;
    only users with a held-out item and a non-empty list count."""
    heldout = sp.csr_matrix(heldout)
    n_held = np.diff(heldout.indptr)
    users = np.flatnonzero((n_held > 0) & (topk[:, 0] >= 0))
    sub = heldout[users]
    offsets = sub.indptr.astype(np.int64)
    positions = metrics.heldout_positions(topk[users], np.repeat(np.arange(len(users)), np.diff(offsets)), sub.indices)
    return Hits(users, offsets, sub.indices, positions)


@dataclass(frozen=True)
class ListMetrics:
    summary: dict  # metric name -> value (users averaged)
    exposure: np.ndarray  # (n_items,) slots in the top-k_report lists
    item_recall: dict  # k -> (n_items,) item-level Recall@k (NaN where nobody holds the item out)


def evaluate_lists(topk: np.ndarray, heldout: sp.csr_matrix, item_counts: np.ndarray, n_train_users: int,
                   is_tail: np.ndarray, bucket: np.ndarray, ev: Evaluation) -> ListMetrics:
    """Every metric of a split's lists; only users with a held-out item and a fold-in list count."""
    n_items = heldout.shape[1]
    hits = heldout_hits(topk, heldout)
    if len(hits.users) == 0:
        raise InputError("no held-out user has both held-out items and a recommendation list; nothing to evaluate")
    lists, offsets, positions = topk[hits.users], hits.offsets, hits.positions
    out: dict = {"users": int(len(hits.users))}
    for k in ev.ks:
        out[f"recall_at_{k}"] = float(np.nanmean(metrics.recall_at_k(offsets, positions, k)))
        out[f"ndcg_at_{k}"] = float(np.nanmean(metrics.ndcg_at_k(offsets, positions, k)))
        out[f"coverage_at_{k}"] = metrics.coverage_at_n(lists[:, :k], n_items)
    k20 = 20
    exposure = metrics.item_exposure(lists, n_items, k20)
    out["gini"] = metrics.gini_index(exposure)
    out["entropy"] = metrics.exposure_entropy(exposure)
    out["epc"] = metrics.expected_popularity_complement(lists, np.asarray(item_counts) / n_train_users, k20)
    out["tail_share"] = metrics.tail_share(lists, is_tail, k20)
    item_recall = {}
    for k in ev.ks:
        ir = metrics.item_recall_at_k(hits.items, positions, n_items, k)
        item_recall[k] = ir
        out[f"item_recall_at_{k}"] = float(np.nanmean(ir))
        per_bucket = metrics.bucket_means(ir, bucket, ev.buckets)
        out[f"item_recall_spread_at_{k}"] = float(np.nanmax(per_bucket) - np.nanmin(per_bucket))
    return ListMetrics(out, exposure, item_recall)


def bucket_table(dataset: str, method: str, split: str, exposure: np.ndarray, item_recall: dict,
                 bucket: np.ndarray, item_counts: np.ndarray, n_buckets: int) -> pl.DataFrame:
    """Per popularity bucket: items, training-interaction share, exposure share in the top-20
    lists, mean item-level Recall@k."""
    train_share = np.bincount(bucket, weights=np.asarray(item_counts, dtype=np.float64), minlength=n_buckets)
    exp_share = np.bincount(bucket, weights=exposure.astype(np.float64), minlength=n_buckets)
    cols = {
        "dataset": [dataset] * n_buckets, "method": [method] * n_buckets, "split": [split] * n_buckets,
        "bucket": np.arange(n_buckets), "items": np.bincount(bucket, minlength=n_buckets),
        "train_share": metrics.normalise(train_share), "exposure_share_at_20": metrics.normalise(exp_share),
    }
    for k, ir in item_recall.items():
        cols[f"item_recall_at_{k}"] = metrics.bucket_means(ir, bucket, n_buckets)
    return pl.DataFrame(cols)
