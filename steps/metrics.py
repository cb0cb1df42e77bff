"""recalign's one metric library: every flow computes each metric with these functions.

Distribution metrics (alignment):
  * :func:`smoothed_kl` — KL(p* ‖ q̃) with q̃ = (1−α)·q + α·p*, natural log.
  * :func:`coverage_at_n` — distinct selected candidates / candidates.

Ranking metrics per impression (ebnerd-benchmark definitions, averaged over impressions):
  * AUC — ROC AUC of the scores within the impression (ties count ½, as scikit-learn does).
  * MRR — mean over clicked articles of 1/rank.
  * nDCG@k — gains 2^rel − 1, discounts log2(rank + 1), normalised by the ideal ranking.
Ranks come from sorting by score, highest first. Equal scores are ranked by one of
:data:`TIE_RULES` (``ties``; AUC counts ties ½ under every rule):
  * ``inview`` — the earlier article in the in-view list ranks first;
  * ``ebrec`` — the *later* one ranks first: the ebnerd-benchmark (``ebrec.evaluation``) sorts the
    scores ascending with NumPy's default (unstable) sort and reverses the order. That is exactly
    this rule wherever the sort keeps equal values in order: with the benchmark's pinned NumPy
    (< 1.26.1) on a CPU without AVX-512, lists of up to 16 articles (checked with NumPy 1.26.0 on
    an AVX2 CPU: identical MRR on every such list of a tied dump). On longer lists, and with NumPy's
    SIMD sorts (AVX-512; AVX2 in NumPy 2), the benchmark's order among ties is whatever the sort
    leaves, which no fixed rule reproduces;
  * ``mean`` — the expectation of MRR and nDCG when tied articles are shown in a uniformly random
    order (exact: each member of a tie group occupying positions f..l is equally likely at each).
Without ties the three rules agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from steps import ragged

DEFAULT_KL_ALPHA = 1e-4
#: How equal scores are ranked by MRR and nDCG (see the module docstring).
TIE_RULES = ("inview", "ebrec", "mean")
#: The ebnerd-benchmark's rule: what users of EB-NeRD compare with.
DEFAULT_TIES = "ebrec"


def check_ties(ties: str) -> str:
    """``ties`` if it names a rule of :data:`TIE_RULES`, else a ``ValueError`` naming it."""
    if ties not in TIE_RULES:
        raise ValueError(f"ties: unknown tie rule {ties!r}; choose from {list(TIE_RULES)}")
    return ties


# --------------------------------------------------------------------------- distributions
def smoothed_kl(p_star: np.ndarray, q: np.ndarray, alpha: float = DEFAULT_KL_ALPHA) -> np.ndarray | float:
    """KL(p* ‖ (1−α)·q + α·p*) over the last axis (natural log); terms with p* = 0 count 0.

    ``q`` may be one distribution (1-D) or one per row (2-D). Both are used as given: pass
    normalised distributions.
    """
    p = np.asarray(p_star, dtype=np.float64)
    qq = np.asarray(q, dtype=np.float64)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    q_tilde = (1.0 - alpha) * qq + alpha * p
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q_tilde), 0.0)
    out = terms.sum(axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def normalise(counts: np.ndarray, axis: int = -1) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, counts / np.where(total > 0, total, 1.0), 0.0)


def coverage_at_n(selected: np.ndarray, n_candidates: int) -> float:
    """Distinct selected candidate indices (any shape, negatives ignored) / ``n_candidates``."""
    sel = np.asarray(selected).ravel()
    sel = sel[sel >= 0]
    if n_candidates <= 0:
        raise ValueError(f"n_candidates must be positive, got {n_candidates}")
    return float(np.unique(sel).size / n_candidates)


# --------------------------------------------------------------------------- rankings
def tie_spans_from_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every cell of ``keys`` (B, W): its 0-based rank position, highest key first with equal
    keys in column order, and the first and last position of its tie group (equal to the
    position for an untied key). Use ``-inf`` for padding: it ranks last and never ties a finite key.
    """
    b, w = keys.shape
    order = np.argsort(-keys, axis=1, kind="stable")
    col = np.broadcast_to(np.arange(w)[None, :], (b, w))
    positions = np.empty_like(order)
    np.put_along_axis(positions, order, col, axis=1)
    sorted_keys = np.take_along_axis(keys, order, axis=1)
    new_group = np.ones((b, w), dtype=bool)
    new_group[:, 1:] = sorted_keys[:, 1:] != sorted_keys[:, :-1]
    if new_group.all():
        return positions, positions, positions
    group_end = np.ones((b, w), dtype=bool)
    group_end[:, :-1] = new_group[:, 1:]
    first_sorted = np.maximum.accumulate(np.where(new_group, col, 0), axis=1)
    last_sorted = np.minimum.accumulate(np.where(group_end, col, w)[:, ::-1], axis=1)[:, ::-1]
    first, last = np.empty_like(order), np.empty_like(order)
    np.put_along_axis(first, order, first_sorted, axis=1)
    np.put_along_axis(last, order, last_sorted, axis=1)
    return positions, first, last


def positions_from_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank position of every cell of ``keys`` (B, W), highest key first, and the average
    position of its tie group (equal keys: column order decides ``positions``; ``avg_positions``
    gives every member of a tie group the group's mean position).

    Use ``-inf`` for padding: it ranks last and never ties a finite key.
    """
    positions, first, last = tie_spans_from_keys(keys)
    return positions, (first + last) / 2.0


@dataclass(frozen=True)
class TiedRanks:
    """Rank positions of the elements of a ragged batch (flat, 0-based, highest key first) with the
    span of each element's tie group: ``positions`` ranks ties in in-view order, the group holds
    positions ``first..last``."""

    positions: np.ndarray
    first: np.ndarray
    last: np.ndarray

    @property
    def avg_positions(self) -> np.ndarray:
        return (self.first + self.last) / 2.0

    def ordered(self, ties: str) -> np.ndarray:
        """One ranking (a permutation of each row) under ``ties``: ``ebrec`` reverses each tie group's
        in-view order; ``inview`` and ``mean`` (a ranking must pick one order) keep it."""
        if check_ties(ties) == "ebrec":
            return self.first + self.last - self.positions
        return self.positions


def ragged_tie_ranks(offsets: np.ndarray, keys: np.ndarray) -> TiedRanks:
    """:class:`TiedRanks` of every element within its row of a ragged batch scored by ``keys``."""
    k = np.asarray(keys, dtype=np.float64)
    out = [np.empty(len(k), dtype=np.int64) for _ in range(3)]
    for rows, width in ragged.iter_buckets(offsets):
        idx, valid = ragged.padded_index(offsets, rows, width)
        spans = tie_spans_from_keys(ragged.gather_padded(k, idx, valid, -np.inf))
        for dst, src in zip(out, spans):
            dst[idx[valid]] = src[valid]
    return TiedRanks(*out)


def ragged_ranks(offsets: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat 0-based positions (and tie-averaged positions) of every element within its row,
    highest key first; equal keys keep their in-view order in ``positions``."""
    ranks = ragged_tie_ranks(offsets, keys)
    return ranks.positions, ranks.avg_positions


def _ideal_dcg_table(max_k: int) -> np.ndarray:
    # ideal[n] = sum_{i < n} 1/log2(i + 2)
    return np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(max_k) + 2.0))])


def _expected_over_span(table: np.ndarray, lo: np.ndarray, hi_plus_one: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Mean of ``term(p)`` over positions p in [lo, hi] where ``table[n] = Σ_{p < n} term(p)``."""
    return (table[hi_plus_one] - table[lo]) / size


def ranking_metrics_from_positions(
    offsets: np.ndarray,
    positions: np.ndarray,
    labels: np.ndarray,
    avg_positions: np.ndarray | None = None,
    ks: tuple[int, ...] = (5, 10),
    last_positions: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-impression AUC, MRR and nDCG@k from each element's rank in its row.

    ``positions``: 0-based rank (0 = shown first); ``avg_positions``: the tie-averaged rank used
    by AUC (defaults to ``positions``, i.e. a ranking without ties). With ``last_positions``, each
    element's rank is uniformly random over ``positions..last_positions`` (its tie group shown in
    random order) and MRR and nDCG are their exact expectations. Rows without a positive or
    without a negative get NaN AUC (and NaN MRR/nDCG without a positive).
    """
    lab = np.asarray(labels, dtype=np.float64)
    avg = positions if avg_positions is None else avg_positions
    n_valid = ragged.lengths(offsets).astype(np.float64)
    n_pos = ragged.segment_sum(offsets, lab)
    n_neg = n_valid - n_pos
    asc_rank = np.repeat(n_valid, ragged.lengths(offsets)) - avg
    rank_sum = ragged.segment_sum(offsets, lab * asc_rank)
    ideal = _ideal_dcg_table(max(ks))
    if last_positions is None:
        reciprocal = 1.0 / (positions + 1.0)
        discounts = {k: np.where(positions < k, 1.0 / np.log2(positions + 2.0), 0.0) for k in ks}
    else:
        lo = np.asarray(positions, dtype=np.int64)
        hi = np.asarray(last_positions, dtype=np.int64)
        size = (hi - lo + 1).astype(np.float64)
        tied = hi > lo
        width = int(hi.max(initial=0)) + 1
        harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1.0, width + 1.0))])
        # untied elements take the direct terms (exact); tied ones the mean over their group's span
        reciprocal = np.where(tied, _expected_over_span(harmonic, lo, hi + 1, size), 1.0 / (lo + 1.0))
        discounts = {
            k: np.where(tied, _expected_over_span(ideal, np.minimum(lo, k), np.minimum(hi + 1, k), size),
                        np.where(lo < k, 1.0 / np.log2(lo + 2.0), 0.0))
            for k in ks
        }
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "auc": (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg),
            "mrr": ragged.segment_sum(offsets, lab * reciprocal) / n_pos,
        }
        n_pos_int = n_pos.astype(np.int64)
        for k in ks:
            dcg = ragged.segment_sum(offsets, lab * discounts[k])
            out[f"ndcg_at_{k}"] = dcg / ideal[np.minimum(n_pos_int, k)]
    return out


def ranking_metrics_from_ranks(
    offsets: np.ndarray, ranks: TiedRanks, labels: np.ndarray, ks: tuple[int, ...] = (5, 10), ties: str = DEFAULT_TIES
) -> dict[str, np.ndarray]:
    """Per-impression AUC, MRR, nDCG@k from :class:`TiedRanks`, equal scores ranked by ``ties``."""
    if check_ties(ties) == "mean":
        return ranking_metrics_from_positions(offsets, ranks.first, labels, ranks.avg_positions, ks, last_positions=ranks.last)
    return ranking_metrics_from_positions(offsets, ranks.ordered(ties), labels, ranks.avg_positions, ks)


def ranking_metrics(
    offsets: np.ndarray, keys: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (5, 10), ties: str = DEFAULT_TIES
) -> dict[str, np.ndarray]:
    """Per-impression AUC, MRR, nDCG@k for a ragged batch scored by ``keys`` (higher = better).

    AUC counts tied scores ½ (as scikit-learn's ``roc_auc_score``); MRR and nDCG rank tied scores
    by ``ties`` (:data:`TIE_RULES`; default ``ebrec``, the ebnerd-benchmark's). Keys must be finite.
    """
    check_ties(ties)
    return ranking_metrics_from_ranks(offsets, ragged_tie_ranks(offsets, keys), labels, ks, ties)


def mean_ranking_metrics(per_row: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: float(np.mean(v)) if len(v) else float("nan") for name, v in per_row.items()}


# --------------------------------------------------------------------------- held-out item ranking
# Sequential recommenders (ReChorus' protocol): each test row ranks ONE held-out positive item
# against other candidates (99 sampled negatives, or the whole catalogue). Ties are counted
# pessimistically: every other candidate scoring >= the positive is ranked above it. HR@k is the
# share of rows whose positive lands in the top k; nDCG@k and MRR are the per-impression metrics
# above applied to one-positive rows (nDCG@k = 1/log2(rank + 1) when rank <= k, MRR = 1/rank).
def pessimistic_positions(positive_scores: np.ndarray, other_scores: np.ndarray) -> np.ndarray:
    """0-based position of each row's positive: how many other candidates score >= it.

    ``other_scores`` is ``(n, C)``; cells set to ``-inf`` (masked candidates) never count.
    """
    pos = np.asarray(positive_scores, dtype=np.float64)
    other = np.asarray(other_scores, dtype=np.float64)
    if other.ndim != 2 or other.shape[0] != pos.shape[0]:
        raise ValueError(f"other_scores must be (n, C) with n = {pos.shape[0]}, got {other.shape}")
    if np.isnan(pos).any() or np.isnan(other).any():
        raise ValueError("scores contain NaN")
    return (other >= pos[:, None]).sum(axis=1).astype(np.int64)


def heldout_ranking_metrics(positions: np.ndarray, ks: tuple[int, ...] = (5, 10, 20, 50)) -> dict[str, np.ndarray]:
    """Per-row ``hr_at_k``, ``ndcg_at_k`` and ``mrr`` from the positive's 0-based position."""
    positions = np.asarray(positions, dtype=np.int64)
    n = len(positions)
    per_row = ranking_metrics_from_positions(
        np.arange(n + 1, dtype=np.int64), positions, np.ones(n), positions.astype(np.float64), tuple(ks)
    )
    out = {f"hr_at_{k}": (positions < k).astype(np.float64) for k in ks}
    out.update({f"ndcg_at_{k}": per_row[f"ndcg_at_{k}"] for k in ks})
    out["mrr"] = per_row["mrr"]
    return out

# =========================================================================== top-k lists over a catalogue
# (TailFlow: item-tail promotion.) A recommendation list is one row of an integer matrix
# ``topk`` (users × K) of item indices, best first; ``-1`` marks an empty slot (a user with fewer
# than K recommendable items). Held-out items are ragged: ``offsets`` (users + 1) and, for every
# held-out item, its 0-based ``positions`` in the user's list (``>= K`` when it is not in the list).
# nDCG@k reuses :func:`ranking_metrics_from_positions` (binary gains, log2 discounts, ideal DCG of
# min(#held-out, k) hits): the same nDCG as the impression metrics above.


def heldout_positions(topk: np.ndarray, heldout_rows: np.ndarray, heldout_items: np.ndarray) -> np.ndarray:
    """Position of each held-out (row, item) pair in ``topk[row]``, or ``K`` when absent."""
    n_rows, k = topk.shape
    if len(heldout_rows) == 0:
        return np.zeros(0, dtype=np.int64)
    n_items = int(max(topk.max(initial=-1), heldout_items.max(initial=-1))) + 1
    # position lookup per row through one sorted key array: key = row * n_items + item
    valid = topk >= 0
    rows = np.broadcast_to(np.arange(n_rows)[:, None], topk.shape)[valid].astype(np.int64)
    keys = rows * n_items + topk[valid].astype(np.int64)
    pos = np.broadcast_to(np.arange(k)[None, :], topk.shape)[valid]
    order = np.argsort(keys, kind="stable")
    keys, pos = keys[order], pos[order]
    want = heldout_rows.astype(np.int64) * n_items + heldout_items.astype(np.int64)
    at = np.minimum(np.searchsorted(keys, want), max(len(keys) - 1, 0))
    found = (keys[at] == want) if len(keys) else np.zeros(len(want), dtype=bool)
    return np.where(found, pos[at] if len(keys) else k, k).astype(np.int64)


def recall_at_k(offsets: np.ndarray, positions: np.ndarray, k: int) -> np.ndarray:
    """Per-user Recall@k of Liang et al. (2018): hits in the top k / min(k, #held-out).

    Users without held-out items get NaN.
    """
    hits = ragged.segment_sum(offsets, (positions < k).astype(np.float64)) if len(positions) else np.zeros(len(offsets) - 1)
    n = ragged.lengths(offsets).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, hits / np.minimum(n, k), np.nan)


def ndcg_at_k(offsets: np.ndarray, positions: np.ndarray, k: int) -> np.ndarray:
    """Per-user nDCG@k with binary relevance (NaN for users without held-out items)."""
    out = np.full(len(offsets) - 1, np.nan)
    n = ragged.lengths(offsets)
    has = n > 0
    if not has.any():
        return out
    # ranking_metrics_from_positions needs non-empty rows: compute on the users that have items.
    sub_offsets = np.concatenate([[0], np.cumsum(n[has])])
    keep = np.repeat(has, n)
    labels = np.ones(int(sub_offsets[-1]))
    with np.errstate(invalid="ignore", divide="ignore"):
        per = ranking_metrics_from_positions(sub_offsets, positions[keep], labels, ks=(k,))
    out[has] = per[f"ndcg_at_{k}"]
    return out


def item_exposure(topk: np.ndarray, n_items: int, k: int) -> np.ndarray:
    """How often each item appears in the first ``k`` slots of the lists (length ``n_items``)."""
    sel = np.asarray(topk)[:, :k].ravel()
    return np.bincount(sel[sel >= 0], minlength=n_items).astype(np.int64)


def gini_index(values: np.ndarray) -> float:
    """Gini index of non-negative values (0 = all equal, → 1 = one item takes everything).

    G = Σ_i (2i − n − 1)·x_(i) / (n·Σ x), x sorted ascending, i = 1..n.
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    total = x.sum()
    if n == 0 or total <= 0:
        return float("nan")
    i = np.arange(1, n + 1, dtype=np.float64)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


def gini_rows(values: np.ndarray) -> np.ndarray:
    """:func:`gini_index` of every row of ``values`` (R, n) at once (NaN for an all-zero row)."""
    x = np.sort(np.asarray(values, dtype=np.float64), axis=1)
    n = x.shape[1]
    total = x.sum(axis=1)
    i = np.arange(1, n + 1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, ((2 * i - n - 1) * x).sum(axis=1) / (n * total), np.nan)


def exposure_entropy(values: np.ndarray) -> float:
    """Shannon entropy (natural log) of the exposure distribution; log(n) when uniform."""
    p = normalise(np.asarray(values, dtype=np.float64))
    p = p[p > 0]
    return float(-(p * np.log(p)).sum()) if len(p) else float("nan")


def expected_popularity_complement(topk: np.ndarray, popularity: np.ndarray, k: int) -> float:
    """EPC@k (Vargas & Castells 2011, without rank discount or relevance): the mean over the first
    ``k`` filled slots of 1 − p(seen | item), with p(seen | item) = ``popularity`` (share of
    training users who interacted with the item, in [0, 1])."""
    sel = np.asarray(topk)[:, :k].ravel()
    sel = sel[sel >= 0]
    return float(np.mean(1.0 - np.asarray(popularity, dtype=np.float64)[sel])) if len(sel) else float("nan")


def tail_share(topk: np.ndarray, is_tail: np.ndarray, k: int) -> float:
    """Fraction of the first ``k`` filled slots of all lists that hold a tail item."""
    sel = np.asarray(topk)[:, :k].ravel()
    sel = sel[sel >= 0]
    return float(np.mean(np.asarray(is_tail, dtype=bool)[sel])) if len(sel) else float("nan")


def item_recall_at_k(heldout_items: np.ndarray, positions: np.ndarray, n_items: int, k: int) -> np.ndarray:
    """Item-level Recall@k (the reference's i_recall@k): for each item, the share of the users
    holding it out whose top-k contains it. Items nobody holds out get NaN."""
    held = np.bincount(heldout_items, minlength=n_items).astype(np.float64)
    hit = np.bincount(heldout_items[positions < k], minlength=n_items).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(held > 0, hit / held, np.nan)


def bucket_means(values: np.ndarray, bucket: np.ndarray, n_buckets: int) -> np.ndarray:
    """Mean of ``values`` per bucket, ignoring NaN (NaN for a bucket without values)."""
    v = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(v)
    s = np.bincount(bucket[ok], weights=v[ok], minlength=n_buckets)
    c = np.bincount(bucket[ok], minlength=n_buckets)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.maximum(c, 1), np.nan)
