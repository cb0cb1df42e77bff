"""Top-k lists for held-out users and the metrics of TailFlow's results table.

Lists: scores = X_fold-in · B for a batch of users (sparse × dense on the model's device), items
the user folded in get −∞, and the k best items are taken **deterministically**: by score, equal
scores by lower item index (so two implementations with the same B give the same lists). Slots a
user cannot fill (fewer than k candidate items) hold −1.

The reference code (``qiulingxu/POSIT``, ``train_body.evaluate``) scores its user-level metrics on
masked lists, as here, but its item-level recall/DCG and its coverage on **unmasked** lists (the
user's own fold-in items can take list slots); :func:`reference_metrics` adds those under their own
names, so the paper's figures can be compared (see the README's TailFlow section).

``pop_rerank`` re-ranks EASE's scores: s'_ui = s_ui − γ · max(0, max_j s_uj) · π_i with
π_i = log(1 + count_i) / log(1 + max count) ∈ [0, 1] (count = training users of item i).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import scipy.sparse as sp

from steps import metrics
from steps.errors import InputError
from steps.tail.config import Evaluation, TailSpec
from steps.uncertainty import AggregateBootstrap, CoverageBootstrap, MeanBootstrap, UncertaintySpec, WeightStream, interval_columns

if TYPE_CHECKING:
    import torch


def no_grad(fn):
    """``torch.no_grad()`` around ``fn``, importing torch when ``fn`` is first called: the tasks
    that only join and report results import this module without paying torch's import (seconds)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)
    return wrapper


def popularity_penalty(item_counts: np.ndarray) -> np.ndarray:
    c = np.log1p(np.asarray(item_counts, dtype=np.float64))
    return c / c.max() if c.max() > 0 else c


def _topk_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k best scores per row, best first; ties go to the lower index; −1 for −∞."""
    import torch

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


@no_grad
def topk_lists(B: np.ndarray | torch.Tensor, fold_in: sp.csr_matrix, k: int, batch_users: int = 1000,
               device: torch.device | str = "cpu", penalty: np.ndarray | None = None, gamma: float = 0.0,
               mask_seen: bool = True) -> np.ndarray:
    """(users × k) int32 item indices of every user's list (see the module docstring);
    ``mask_seen=False`` leaves the fold-in items in (the reference's unmasked lists)."""
    import torch

    from steps.tail.models import to_torch_sparse

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
        if mask_seen:
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
class UserValues:
    """Per evaluated user (rows ``users`` of the split, increasing) the user-level metrics, and the
    lists: what a paired comparison against another method on the same users needs."""

    users: np.ndarray
    names: tuple[str, ...]
    values: np.ndarray  # (users, names)
    lists: np.ndarray  # (users, k_max) item indices, −1 = empty slot
    n_units: int  # rows of the split (the bootstrap weights are keyed by row)


@dataclass(frozen=True)
class ListMetrics:
    summary: dict  # metric name -> value (users averaged); with intervals also <metric>_lo / _hi
    exposure: np.ndarray  # (n_items,) slots in the top-k_report lists
    item_recall: dict  # k -> (n_items,) item-level Recall@k (NaN where nobody holds the item out)
    per_user: UserValues | None = None


def user_metric_values(hits: Hits, ev: Evaluation) -> tuple[tuple[str, ...], np.ndarray]:
    """The user-level metrics (recall, nDCG, hit rate at every k) of every evaluated user."""
    names, cols = [], []
    found = (hits.positions[:, None] < np.asarray(ev.ks)[None, :]).astype(np.int64)
    any_hit = np.add.reduceat(found, hits.offsets[:-1], axis=0) > 0
    for j, k in enumerate(ev.ks):
        names += [f"recall_at_{k}", f"ndcg_at_{k}", f"hit_rate_at_{k}"]
        cols += [metrics.recall_at_k(hits.offsets, hits.positions, k), metrics.ndcg_at_k(hits.offsets, hits.positions, k),
                 any_hit[:, j].astype(np.float64)]
    return tuple(names), np.column_stack(cols)


def _aggregate_specs(lists: np.ndarray, n_items: int, ev: Evaluation):
    """(name, cell lists) of the aggregate list metrics bootstrapped by recomputation: coverage@k."""
    return [(f"coverage_at_{k}", lists[:, :k]) for k in ev.ks]


def _gini_bootstrap(pu: UserValues, n_items: int, spec: UncertaintySpec, stream: WeightStream | None = None) -> AggregateBootstrap:
    """Weighted top-20 exposure of the resampled users (sparse users × items), for Gini. Like
    coverage, Gini is biased under resampling (a resample's exposure is more unequal), so its
    intervals are centred on the estimate (``steps.uncertainty.CoverageBootstrap``)."""
    sel = pu.lists[:, :20]
    rows = np.repeat(np.arange(len(sel)), sel.shape[1])
    ok = sel.ravel() >= 0
    e = sp.csr_matrix((np.ones(int(ok.sum()), dtype=np.float32), (rows[ok], sel.ravel()[ok])), shape=(len(sel), n_items))
    acc = AggregateBootstrap(pu.n_units, n_items, spec, stream)
    acc.add(pu.users, e)
    return acc


def list_intervals(pu: UserValues, n_items: int, ev: Evaluation, spec: UncertaintySpec) -> dict:
    """``<metric>_lo`` / ``_hi`` of the user-level metrics, coverage@k and Gini (users resampled)."""
    out: dict = {}
    w = WeightStream(spec, pu.n_units)  # one set of weights for every collector of these users
    means = mean_bootstrap(pu, spec, stream=w).means()
    for j, name in enumerate(pu.names):
        out.update(interval_columns(name, means, j))
    cov = CoverageBootstrap(pu.n_units, len(ev.ks), n_items, spec, w)
    for c, (name, lists) in enumerate(_aggregate_specs(pu.lists, n_items, ev)):
        cov.add(c, pu.users, lists)
    for c, (name, _) in enumerate(_aggregate_specs(pu.lists, n_items, ev)):
        out.update(interval_columns(name, cov.interval([c]), 0))
    out.update(interval_columns("gini", _gini_bootstrap(pu, n_items, spec, w).interval(lambda t, w: metrics.gini_rows(t), centre=True), 0))
    return out


def mean_bootstrap(pu: UserValues, spec: UncertaintySpec, base: UserValues | None = None,
                   stream: WeightStream | None = None) -> MeanBootstrap:
    m = len(pu.names)
    values = pu.values if base is None else np.hstack([pu.values, base.values])
    acc = MeanBootstrap(pu.n_units, values.shape[1], spec, [] if base is None else [(j, m + j) for j in range(m)], stream)
    acc.add(pu.users, values)
    return acc


def baseline_deltas(pu: UserValues, base: UserValues, n_items: int, ev: Evaluation, spec: UncertaintySpec) -> dict:
    """``delta_<metric>``, its interval and ``p_<metric>`` of a method against the baseline (EASE) on
    the same test users: user-level metrics, coverage@k and Gini, on the same resamples.
    Empty when the two were not evaluated on the same users."""
    if not np.array_equal(pu.users, base.users) or pu.n_units != base.n_units:
        return {}
    out: dict = {}
    w = WeightStream(spec, pu.n_units)
    diffs = mean_bootstrap(pu, spec, base, w).differences()
    for j, name in enumerate(pu.names):
        out.update({k: v for k, v in interval_columns(name, diffs, j, diffs, j).items() if not k.startswith(name)})
    specs, base_specs = _aggregate_specs(pu.lists, n_items, ev), _aggregate_specs(base.lists, n_items, ev)
    cov = CoverageBootstrap(pu.n_units, 2 * len(specs), n_items, spec, w)
    for c, ((name, lists), (_, b_lists)) in enumerate(zip(specs, base_specs)):
        cov.add(2 * c, pu.users, lists)
        cov.add(2 * c + 1, base.users, b_lists)
    for c, (name, _) in enumerate(specs):
        d = cov.paired([2 * c], [2 * c + 1])
        out.update({k: v for k, v in interval_columns(name, d, 0, d, 0).items() if not k.startswith(name)})
    ga, gb = _gini_bootstrap(pu, n_items, spec, w), _gini_bootstrap(base, n_items, spec, w)
    both = AggregateBootstrap(pu.n_units, 2 * n_items, spec)
    both.tot, both.wsum = np.hstack([ga._flushed().tot, gb._flushed().tot]), ga.wsum
    both.full, both.groups, both.group_n = np.r_[ga.full, gb.full], np.hstack([ga.groups, gb.groups]), ga.group_n
    d = both.paired(lambda t, w: metrics.gini_rows(t), slice(0, n_items), slice(n_items, 2 * n_items), centre=True)
    out.update({k: v for k, v in interval_columns("gini", d, 0, d, 0).items() if not k.startswith("gini")})
    return out


def evaluate_lists(topk: np.ndarray, heldout: sp.csr_matrix, item_counts: np.ndarray, n_train_users: int,
                   is_tail: np.ndarray, bucket: np.ndarray, ev: Evaluation,
                   uncertainty: UncertaintySpec | None = None) -> ListMetrics:
    """Every metric of a split's lists; only users with a held-out item and a fold-in list count.
    With ``uncertainty`` (enabled) the summary also holds ``<metric>_lo`` / ``_hi`` (test users
    resampled) and ``per_user`` what :func:`baseline_deltas` needs."""
    n_items = heldout.shape[1]
    hits = heldout_hits(topk, heldout)
    if len(hits.users) == 0:
        raise InputError("no held-out user has both held-out items and a recommendation list; nothing to evaluate")
    lists, offsets, positions = topk[hits.users], hits.offsets, hits.positions
    out: dict = {"users": int(len(hits.users))}
    found = (positions[:, None] < np.asarray(ev.ks)[None, :]).astype(np.int64)
    any_hit = np.add.reduceat(found, offsets[:-1], axis=0) > 0  # every evaluated user holds >= 1 item out
    for j, k in enumerate(ev.ks):
        out[f"hit_rate_at_{k}"] = float(any_hit[:, j].mean())
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
    per_user = None
    if uncertainty is not None and uncertainty.enabled:
        names, values = user_metric_values(hits, ev)
        per_user = UserValues(hits.users, names, values, lists, heldout.shape[0])
        out.update(list_intervals(per_user, n_items, ev, uncertainty))
    return ListMetrics(out, exposure, item_recall, per_user)


def coverage_per_block(lists: np.ndarray, k: int, block: int = 100) -> float:
    """The reference's coverage: distinct items in the top-k lists of each complete block of
    ``block`` consecutive users, averaged over the blocks (NaN with fewer than ``block`` users).
    Empty slots (−1) are not items."""
    n_blocks = lists.shape[0] // block
    if n_blocks == 0:
        return float("nan")
    flat = np.sort(lists[: n_blocks * block, :k].reshape(n_blocks, -1), axis=1)
    new = np.ones_like(flat, dtype=bool)
    new[:, 1:] = flat[:, 1:] != flat[:, :-1]
    return float((new & (flat >= 0)).sum(axis=1).mean())


def _per_item_mean(items: np.ndarray, values: np.ndarray, n_items: int) -> np.ndarray:
    """Mean of ``values`` over each item's held-out cells; 0 for items nobody holds out (as the
    reference divides by its count + 1e-8)."""
    holders = np.bincount(items, minlength=n_items).astype(np.float64)
    total = np.bincount(items, weights=values, minlength=n_items)
    return np.divide(total, holders, out=np.zeros(n_items), where=holders > 0)


@no_grad
def item_ndcg_over_users(B: np.ndarray, fold_in: sp.csr_matrix, heldout: sp.csr_matrix, device="cpu",
                         penalty: np.ndarray | None = None, gamma: float = 0.0, block_items: int = 512) -> np.ndarray:
    """The reference's ``i_ndcg``, per item: the users ranked by their score for the item (fold-in
    cells scored 0, as the reference zeroes them; ties by lower user row), nDCG over the whole
    ranking with the users who hold the item out as relevant; 0 for items nobody holds out."""
    import torch

    from steps.tail.models import to_torch_sparse

    fold_in, heldout = sp.csr_matrix(fold_in, dtype=np.float32), sp.csr_matrix(heldout)
    n_users, n_items = fold_in.shape
    bt = torch.as_tensor(B, dtype=torch.float32, device=device)
    x = to_torch_sparse(fold_in, device)
    seen, held = fold_in.tocsc(), heldout.tocsc()
    row_max = pen = None
    if penalty is not None and gamma != 0:  # pop_rerank: the same re-scoring as the lists'
        row_max = torch.full((n_users, 1), float("-inf"), device=device)
        for j0 in range(0, n_items, block_items):
            j1 = min(j0 + block_items, n_items)
            s = torch.sparse.mm(x, bt[:, j0:j1]).masked_fill(torch.as_tensor(seen[:, j0:j1].toarray() > 0, device=device), float("-inf"))
            row_max = torch.maximum(row_max, s.max(dim=1, keepdim=True).values)
        row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max.clamp_min(0.0))
        pen = torch.as_tensor(penalty, dtype=torch.float32, device=device)
    discount = 1.0 / torch.log2(torch.arange(n_users, device=device, dtype=torch.float64) + 2.0)
    ideal = torch.cumsum(discount, 0)
    out = np.zeros(n_items)
    for j0 in range(0, n_items, block_items):
        j1 = min(j0 + block_items, n_items)
        s = torch.sparse.mm(x, bt[:, j0:j1])
        if row_max is not None:
            s = s - gamma * row_max * pen[None, j0:j1]
        s = s.masked_fill(torch.as_tensor(seen[:, j0:j1].toarray() > 0, device=device), 0.0)
        rel = torch.as_tensor(held[:, j0:j1].toarray() > 0, device=device).to(torch.float64)
        order = torch.sort(s, dim=0, descending=True, stable=True).indices
        dcg = (rel.gather(0, order) * discount[:, None]).sum(dim=0)
        n = rel.sum(dim=0).long()
        idcg = ideal[(n - 1).clamp_min(0)]
        out[j0:j1] = torch.where(n > 0, dcg / idcg, torch.zeros_like(dcg)).cpu().numpy()
    return out


def reference_metrics(B: np.ndarray, fold_in: sp.csr_matrix, heldout: sp.csr_matrix, ev: Evaluation, batch_users: int = 1000,
                      device="cpu", penalty: np.ndarray | None = None, gamma: float = 0.0) -> dict:
    """The reference code's item-level metrics and coverage as it computes them, over the users
    with held-out items (those :func:`heldout_hits` evaluates), in row order:

    * ``coverage_per_100_users_at_k`` — distinct items per block of 100 users, unmasked lists
      (the reference's ``coverage{k}``);
    * ``item_recall_unmasked_at_k`` — per item, the share of the users who hold it out that have it
      in their unmasked top k (0 where nobody holds it out: the reference's ``i_recall{k}_pos``),
      averaged over the catalogue;
    * ``item_dcg_unmasked_at_100`` — the same with gain 1/log2(position + 2) (``i_dcg100_pos``);
    * ``item_recall_dist_unmasked_at_100`` — the same with gain hit / min(100, #held-out of the
      user) (``i_recall100_dist_pos`` as defined; the reference's evaluation divides by a sum that
      includes the −100 fold-in markers of its label matrix, so its printed values differ);
    * ``item_ndcg_over_users`` — :func:`item_ndcg_over_users` (``i_ndcg``), averaged over the catalogue.
    """
    fold_in, heldout = sp.csr_matrix(fold_in), sp.csr_matrix(heldout)
    n_items = heldout.shape[1]
    users = np.flatnonzero(np.diff(heldout.indptr) > 0)
    lists = topk_lists(B, fold_in[users], ev.k_max, batch_users, device, penalty, gamma, mask_seen=False)
    hits = heldout_hits(lists, heldout[users])
    out: dict = {}
    for k in ev.ks:
        out[f"coverage_per_100_users_at_{k}"] = coverage_per_block(lists, k, 100)
    pos, items = hits.positions, hits.items
    for k in ev.ks:
        out[f"item_recall_unmasked_at_{k}"] = float(_per_item_mean(items, (pos < k).astype(np.float64), n_items).mean())
    k = min(100, ev.k_max)
    out["item_dcg_unmasked_at_100"] = float(_per_item_mean(items, np.where(pos < k, 1.0 / np.log2(pos + 2.0), 0.0), n_items).mean())
    n_held = np.repeat(np.diff(hits.offsets), np.diff(hits.offsets)).astype(np.float64)
    out["item_recall_dist_unmasked_at_100"] = float(_per_item_mean(items, (pos < k) / np.minimum(n_held, k), n_items).mean())
    out["item_ndcg_over_users"] = float(item_ndcg_over_users(B, fold_in[users], heldout[users], device, penalty, gamma).mean())
    return out


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
