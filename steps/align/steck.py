"""Steck's calibrated re-ranking (RecSys '18), vectorised over rows.

Greedily build a list: at each step add the candidate maximising

    (1 − λ) · Σ_{i ∈ list ∪ {a}} relevance(i) − λ · KL(p* ‖ (1 − s)·q + s·p*),

where q is the category mix of the list so far plus the candidate and ``s`` the selection
smoothing (0.5 in the NAILS paper). Equal objective values go to the candidate that comes first in
the candidate list.

The relevance sum of the list so far is common to all candidates of a step, and the KL term only
depends on the candidate's category, so the best candidate of each category is its
highest-relevance unused one: every row keeps one queue per category (sorted by relevance,
then position) and each step compares C queue heads instead of all K candidates.
"""

from __future__ import annotations

import numpy as np

from steps.align.selection import top_n_indices


def queue_relevance(scores: np.ndarray, lam: float) -> np.ndarray:
    """The relevance that orders the per-category queues for a given λ: the scores themselves,
    or all zeros at λ = 1 (where ties within a category go to the first candidate)."""
    return np.zeros_like(scores, dtype=np.float64) if lam >= 1.0 else scores


def queues_shared(scores: np.ndarray, category_slot: np.ndarray, n_slots: int, depth: int):
    """Per-category queues for rows that share one candidate list (the beyond-accuracy block).

    Returns ``(queue_scores, queue_index)`` of shape (U, n_slots, depth): the ``depth`` best
    candidates of each category per row (column indices; -1 / -inf where a category has fewer).
    """
    u = scores.shape[0]
    q_scores = np.full((u, n_slots, depth), -np.inf)
    q_index = np.full((u, n_slots, depth), -1, dtype=np.int64)
    for slot in range(n_slots):
        cols = np.flatnonzero(category_slot == slot)
        if len(cols) == 0:
            continue
        d = min(depth, len(cols))
        best = top_n_indices(scores[:, cols], d)
        q_index[:, slot, :d] = cols[best]
        q_scores[:, slot, :d] = np.take_along_axis(scores[:, cols], best, axis=1)
    return q_scores, q_index


def queues_padded(scores: np.ndarray, category_slot: np.ndarray, valid: np.ndarray, n_slots: int,
                  max_depth: int | None = None):
    """Per-category queues for padded rows with their own candidates (labelled impressions).

    ``scores``, ``category_slot`` and ``valid`` are (B, W); returns (B, n_slots, D) arrays with
    ``D`` the largest category count of a row, or at most ``max_depth`` (a top-n selection never
    takes more than n items of one category, so deeper queue entries cannot be reached).
    """
    b, w = scores.shape
    cat = np.where(valid, category_slot, n_slots)  # padding sorts last
    order = np.lexsort((-np.where(valid, scores, 0.0), cat), axis=-1)
    s_cat = np.take_along_axis(cat, order, axis=1)
    col = np.arange(w)[None, :]
    new_seg = np.ones_like(s_cat, dtype=bool)
    new_seg[:, 1:] = s_cat[:, 1:] != s_cat[:, :-1]
    seg_start = np.maximum.accumulate(np.where(new_seg, col, 0), axis=1)
    rank_in_cat = col - seg_start
    real = s_cat < n_slots
    if max_depth is not None:
        real &= rank_in_cat < max_depth
    depth = int(rank_in_cat[real].max()) + 1 if real.any() else 1
    q_scores = np.full((b, n_slots, depth), -np.inf)
    q_index = np.full((b, n_slots, depth), -1, dtype=np.int64)
    rows = np.broadcast_to(np.arange(b)[:, None], (b, w))
    q_index[rows[real], s_cat[real], rank_in_cat[real]] = order[real]
    q_scores[rows[real], s_cat[real], rank_in_cat[real]] = np.take_along_axis(scores, order, axis=1)[real]
    return q_scores, q_index


def steck_greedy(
    queue_scores: np.ndarray,
    queue_index: np.ndarray,
    p_star: np.ndarray,
    lam: float,
    n_select: int,
    smoothing: float,
) -> np.ndarray:
    """Run the greedy calibrated selection; returns (B, n_select) column indices in the order
    chosen (-1 once a row has no candidates left).

    ``p_star`` (n_slots,) is the target over the queues' category slots, or (B, n_slots) one
    target per row (per-user calibration). The queues must be
    sorted by relevance (then position), except at λ = 1, where relevance drops out of the
    objective and they must be sorted by position alone (see :func:`queue_relevance`).
    """
    if not 0.0 < smoothing <= 1.0:
        raise ValueError(f"Steck selection smoothing must be in (0, 1], got {smoothing!r}")
    b, c, d = queue_scores.shape
    p = np.asarray(p_star, dtype=np.float64)
    per_row = p.ndim == 2
    p = p if per_row else p[None, :]  # (1 or B, C)
    pos = p > 0
    log_p = np.where(pos, np.log(np.where(pos, p, 1.0)), 0.0)
    rows = np.arange(b)
    slots = np.arange(c)[None, :]
    flat_scores = queue_scores.reshape(-1)
    flat_index = queue_index.reshape(-1)
    base = (rows[:, None] * c + slots) * d
    ptr = np.zeros((b, c), dtype=np.int64)
    counts = np.zeros((b, c), dtype=np.int64)
    # Relevance part of the objective of each queue head, -inf once a queue is exhausted.
    head_index = queue_index[:, :, 0].copy()
    head_value = np.where(head_index >= 0, (1.0 - lam) * np.where(head_index >= 0, queue_scores[:, :, 0], 0.0), -np.inf)
    chosen = np.full((b, n_select), -1, dtype=np.int64)
    j = np.arange(n_select + 2, dtype=np.float64)[None, :]
    for t in range(n_select):
        value = head_value - lam * _kl_step_delta(p, pos, log_p, counts, t, smoothing, per_row, j, slots)
        slot, active = _best_slots(value, head_index, rows)
        if not active.any():
            break
        act = np.flatnonzero(active)
        s_act = slot[act]
        chosen[act, t] = head_index[act, s_act]
        # advance the chosen queue: its next candidate becomes the head (-inf once exhausted)
        ptr[act, s_act] += 1
        counts[act, s_act] += 1
        nxt = ptr[act, s_act]
        has_next = nxt < d
        flat = base[act, s_act] + np.minimum(nxt, d - 1)
        nxt_index = np.where(has_next, flat_index[flat], -1)
        head_index[act, s_act] = nxt_index
        nxt_score = np.where(nxt_index >= 0, flat_scores[flat], 0.0)
        head_value[act, s_act] = np.where(nxt_index >= 0, (1.0 - lam) * nxt_score, -np.inf)
    return chosen


def _kl_step_delta(p, pos, log_p, counts, t, smoothing, per_row, j, slots) -> np.ndarray:
    """(B or 1, C): how KL(p*‖q̃) changes when one more item of each queue's category joins a list of t.

    KL(p*‖q~) = Σ_c term[c, count_c] for a list of t + 1 items; adding one item of category c
    changes it by delta[c, count_c]. The sum over the current counts is the same for every
    candidate of a row, so the greedy choice only needs the delta."""
    if per_row:
        # only the current counts matter: delta = p·(log q̃(count) − log q̃(count + 1)), per row
        q0 = (1.0 - smoothing) / (t + 1.0) * counts + smoothing * p
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(pos, p * (np.log(q0) - np.log(q0 + (1.0 - smoothing) / (t + 1.0))), 0.0)
    q = (1.0 - smoothing) * j[None] / (t + 1.0) + smoothing * p[:, :, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(pos[:, :, None], p[:, :, None] * (log_p[:, :, None] - np.log(q)), 0.0)
    delta = term[:, :, 1:] - term[:, :, :-1]  # (1, C, n + 1)
    return delta[0][slots, counts]


def _best_slots(value: np.ndarray, head_index: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's queue with the largest objective (ties: the candidate first in the list) and
    whether the row has any candidate left."""
    slot = np.argmax(value, axis=1)
    best = value[rows, slot]
    active = np.isfinite(best)
    if not active.any():
        return slot, active
    tied = (value == best[:, None]).sum(axis=1) > 1
    if tied.any():  # equal objective: the candidate that comes first in the list wins
        tr = np.flatnonzero(tied & active)
        cand = np.where(value[tr] == best[tr, None], head_index[tr], np.iinfo(np.int64).max)
        slot[tr] = np.argmin(cand, axis=1)
    return slot, active
