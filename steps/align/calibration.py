"""Calibration of any recommender's candidate lists: per-user targets, multi-genre items.

Notation: U users (rows), M candidates per user, G genres, p(g|i) the genre weights of item i (an
item with k genres counts 1/k to each; ``item_genre`` is an (items × G) CSR matrix).

* **History target** (Steck, RecSys '18): p(g|u) = Σ_{i∈H(u)} w_ui·p(g|i) / Σ_{i∈H(u)} w_ui with
  w_ui = 1, or a recency weight w_ui = 2^(−(t_u − t_ui)/h) (t_u the user's latest history time,
  h the half-life).
* **Mixed target**: (1 − β)·p(g|u) + β·p*(g) for a global p*.
* **List mix** q(g|L) = mean over the items of L of p(g|i); **miscalibration**
  C_KL = KL(p ‖ (1 − α)·q + α·p) (:func:`steps.metrics.smoothed_kl`, α = 0.01 in Steck's paper).
* **Steck's greedy re-ranking**: grow the list one item at a time, adding the candidate that
  maximises (1 − λ)·Σ_{j∈L∪{i}} s_j − λ·C_KL(p_u, q(L ∪ {i})), where the smoothing of C_KL inside
  the objective is ``smoothing``. The relevance sum of L is common to every candidate of a step,
  so the choice is argmax over unused i of (1 − λ)·s_i + λ·Σ_g p_g·log q̃_g(L ∪ {i}), and only
  the genres of i change q̃: :func:`steck_multigenre` evaluates that gain over the (padded) genre
  lists of the candidates, vectorised over users. Equal objective values go to the candidate
  listed first. Items with one genre each take the per-category queue path of
  :mod:`steps.align.steck` instead (same picks, tested).
* **NAILS with per-user factors**: p_u(g) = Σ_m π_um·p(g|i_m) with π the softmax of the user's
  scores over the candidates; each candidate is re-weighted by
  1 + λ·(Σ_g p(g|i)·r_ug − 1) and the list renormalised. For one-genre items r = p*/p (NAILS'
  formula). For multi-genre items that ratio no longer makes the re-weighted mix equal the target,
  so r is the fixed point of r_g ← r_g·p*_g / m_g(r) (m the re-weighted mix; the EM prior update
  of label-shift correction, Saerens et al. 2002), scaled so the re-weighted list sums to 1 at
  λ = 1; for one-genre items the first step gives p*/p exactly. Genres a user's target asks for
  but no candidate carries cannot be reached: the target is restricted to the genres the
  candidates carry (renormalised) and such users are counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from steps.errors import InputError

SECONDS_PER_DAY = 86_400.0
#: Steck objectives closer than this (relative) count as equal: the first listed candidate wins.
TIE_TOLERANCE = 1e-12


# --------------------------------------------------------------------------- targets
def history_targets(
    history_offsets: np.ndarray,
    history_rows: np.ndarray,
    item_genre: sp.csr_matrix,
    history_times: np.ndarray | None = None,
    half_life_days: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(p(g|u) (U, G), has_history (U,))``; users without history get an all-zero row.

    With ``half_life_days`` each history item is weighted 2^(−age/half-life), age = the user's
    latest history time − the item's time (``history_times`` in seconds).
    """
    offsets = np.asarray(history_offsets, dtype=np.int64)
    n_users = len(offsets) - 1
    lens = np.diff(offsets)
    user = np.repeat(np.arange(n_users), lens)
    if half_life_days is None:
        w = np.ones(len(history_rows))
    else:
        if history_times is None:
            raise InputError("a recency-weighted history target needs history timestamps; the history has none")
        if not half_life_days > 0:
            raise ValueError(f"half_life_days must be positive, got {half_life_days!r}")
        t = np.asarray(history_times, dtype=np.float64)
        latest = np.full(n_users, -np.inf)
        np.maximum.at(latest, user, t)
        w = np.exp2(-(latest[user] - t) / (half_life_days * SECONDS_PER_DAY))
    weights = sp.csr_matrix((w, (user, np.asarray(history_rows, dtype=np.int64))), shape=(n_users, item_genre.shape[0]))
    mass = np.asarray(weights @ item_genre.toarray() if item_genre.shape[1] <= 256 else (weights @ item_genre).toarray())
    total = np.bincount(user, weights=w, minlength=n_users)
    has = total > 0
    out = np.zeros_like(mass)
    out[has] = mass[has] / total[has, None]
    return out, has


def mixed_targets(user_targets: np.ndarray, global_target: np.ndarray, weight: float) -> np.ndarray:
    """(1 − weight)·p(g|u) + weight·p*(g), row by row."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight!r}")
    return (1.0 - weight) * np.asarray(user_targets, dtype=np.float64) + weight * np.asarray(global_target, dtype=np.float64)[None, :]


# --------------------------------------------------------------------------- genre lists of candidates
@dataclass(frozen=True)
class ItemGenres:
    """p(g|i) as padded per-item arrays: ``index`` (I, K) genre index, ``weight`` (I, K), 0-padded."""

    index: np.ndarray
    weight: np.ndarray
    n_genres: int

    @classmethod
    def from_csr(cls, item_genre: sp.csr_matrix) -> "ItemGenres":
        ig = sp.csr_matrix(item_genre)
        lens = np.diff(ig.indptr)
        k = max(int(lens.max(initial=0)), 1)
        n = ig.shape[0]
        index = np.zeros((n, k), dtype=np.int64)
        weight = np.zeros((n, k), dtype=np.float64)
        rows = np.repeat(np.arange(n), lens)
        slot = np.arange(len(ig.indices)) - np.repeat(ig.indptr[:-1], lens)
        index[rows, slot] = ig.indices
        weight[rows, slot] = ig.data
        return cls(index, weight, ig.shape[1])

    @property
    def single(self) -> bool:
        return self.index.shape[1] == 1 and bool(np.all(self.weight[:, 0] > 0))


def list_mix(rows: np.ndarray, genres: ItemGenres) -> np.ndarray:
    """q(g|L) per row of ``rows`` (B, N) item rows (−1 = empty slot, ignored): mean p(g|i)."""
    rows = np.asarray(rows)
    b = rows.shape[0]
    valid = rows >= 0
    r = np.where(valid, rows, 0)
    gi = genres.index[r]  # (B, N, K)
    gw = genres.weight[r] * valid[..., None]
    flat = (np.arange(b)[:, None, None] * genres.n_genres + gi).ravel()
    mix = np.bincount(flat, weights=gw.ravel(), minlength=b * genres.n_genres).reshape(b, genres.n_genres)
    n = valid.sum(axis=1, keepdims=True)
    return np.divide(mix, n, out=np.zeros_like(mix), where=n > 0)


def candidate_mass(probs: np.ndarray, rows: np.ndarray, genres: ItemGenres) -> np.ndarray:
    """p_u(g) = Σ_m probs[u, m]·p(g|rows[u, m]) (B, G)."""
    b = rows.shape[0]
    gi = genres.index[rows]
    gw = genres.weight[rows] * probs[..., None]
    flat = (np.arange(b)[:, None, None] * genres.n_genres + gi).ravel()
    return np.bincount(flat, weights=gw.ravel(), minlength=b * genres.n_genres).reshape(b, genres.n_genres)


# --------------------------------------------------------------------------- Steck, multi-genre
class MultiGenreSteck:
    """Steck's greedy selection over multi-genre candidates, set up once per chunk of users (the
    (candidate, genre) pairs that can move the KL) and run for any relevance and λ.

    Only pairs whose genre the row's target gives mass change the KL, so the step's gain
    Σ_g p_g·log(q̃_g(L ∪ {i}) / q̃_g(L)) = Σ_{g ∈ genres(i)} p_g·log1p((1 − α)·p(g|i) /
    ((t + 1)·b_g)), with b = (1 − α)·q_sum/(t + 1) + α·p, is summed over those pairs only.
    """

    def __init__(self, rows: np.ndarray, genres: ItemGenres, p_target: np.ndarray, smoothing: float) -> None:
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"Steck smoothing must be in (0, 1], got {smoothing!r}")
        b, m = rows.shape
        g = genres.n_genres
        self.shape, self.n_genres, self.smoothing = (b, m), g, smoothing
        self.p_flat = np.broadcast_to(np.asarray(p_target, dtype=np.float64), (b, g)).ravel()
        self.gi = genres.index[rows]  # (B, M, K)
        self.gw = genres.weight[rows]
        user = np.arange(b)[:, None, None]
        flat_key = user * g + self.gi
        pg = self.p_flat[flat_key]
        live = (self.gw > 0) & (pg > 0)
        self.cell = np.broadcast_to(np.arange(b * m).reshape(b, m, 1), self.gi.shape)[live]
        self.key = flat_key[live]
        self.cw = (1.0 - smoothing) * self.gw[live]
        self.p_live = pg[live]
        # Items split evenly over their genres have few distinct weights p(g|i) (1, 1/2, 1/3, …): then
        # each step computes the gain once per (user, genre, weight) and gathers it for the pairs.
        weights, self.weight_index = np.unique(self.gw[live], return_inverse=True)
        self.cw_values = (1.0 - smoothing) * weights if len(weights) <= 8 else None
        if self.cw_values is not None:
            self.table_key = self.key * len(weights) + self.weight_index

    def select(self, relevance: np.ndarray, lam: float, n_select: int) -> np.ndarray:
        """(B, n_select) candidate columns in the order chosen; ties go to the first listed."""
        b, m = self.shape
        if not 0 < n_select <= m:
            raise ValueError(f"n_select must be in [1, {m}], got {n_select}")
        g, a = self.n_genres, self.smoothing
        rel = ((1.0 - lam) * np.asarray(relevance, dtype=np.float64)).ravel()
        q_sum = np.zeros(b * g)
        used = np.zeros(b * m, dtype=bool)
        chosen = np.empty((b, n_select), dtype=np.int64)
        rr = np.arange(b)
        x = np.empty(len(self.key))
        for t in range(n_select):
            # base·(t + 1) = (1 − α)·q_sum + α·(t + 1)·p; x = p_g·log1p((1 − α)·w / ((t + 1)·base_g)), in place
            base = (1.0 - a) * q_sum + (a * (t + 1.0)) * self.p_flat
            if self.cw_values is not None:
                safe = np.where(self.p_flat > 0, base, 1.0)[:, None]
                table = self.p_flat[:, None] * np.log1p(self.cw_values[None, :] / safe)
                np.take(table.ravel(), self.table_key, out=x)
            else:
                np.take(base, self.key, out=x)
                np.divide(self.cw, x, out=x)
                np.log1p(x, out=x)
                x *= self.p_live
            value = np.bincount(self.cell, weights=x, minlength=b * m)
            value *= lam
            value += rel
            value[used] = -np.inf
            v = value.reshape(b, m)
            best = v.max(axis=1, keepdims=True)
            # equal objectives (up to rounding: values are summed per genre set) go to the first listed
            pick = np.argmax(v >= best - TIE_TOLERANCE * np.maximum(1.0, np.abs(best)), axis=1)
            chosen[:, t] = pick
            used[rr * m + pick] = True
            np.add.at(q_sum, (rr[:, None] * g + self.gi[rr, pick]).ravel(), self.gw[rr, pick].ravel())
        return chosen


def steck_multigenre(
    relevance: np.ndarray,
    rows: np.ndarray,
    genres: ItemGenres,
    p_target: np.ndarray,
    lam: float,
    n_select: int,
    smoothing: float,
) -> np.ndarray:
    """Steck's greedy selection of ``n_select`` of the M candidates of every row (see
    :class:`MultiGenreSteck`). ``relevance`` (B, M); ``rows`` (B, M) item rows; ``p_target`` (B, G)
    per-user or (G,) global. Returns (B, n_select) candidate columns in the order chosen."""
    return MultiGenreSteck(rows, genres, p_target, smoothing).select(relevance, lam, n_select)


def steck_reference(relevance, rows, item_genre_dense, p_target, lam, n_select, smoothing) -> np.ndarray:
    """A plain loop over users and steps (the definition; for tests): KL computed in full."""
    b, m = relevance.shape
    p_all = np.broadcast_to(np.asarray(p_target, dtype=np.float64), (b, item_genre_dense.shape[1]))
    out = np.empty((b, n_select), dtype=np.int64)
    for u in range(b):
        p = p_all[u]
        chosen: list[int] = []
        for _ in range(n_select):
            values = np.full(m, -np.inf)
            for c in range(m):
                if c in chosen:
                    continue
                lst = chosen + [c]
                q = item_genre_dense[rows[u, lst]].mean(axis=0)
                qt = (1 - smoothing) * q + smoothing * p
                pos = p > 0
                kl = float(np.sum(p[pos] * np.log(p[pos] / qt[pos])))
                values[c] = (1 - lam) * float(np.sum(relevance[u, lst])) - lam * kl
            best = values.max()
            chosen.append(int(np.flatnonzero(values >= best - TIE_TOLERANCE * max(1.0, abs(best)))[0]))
        out[u] = chosen
    return out


# --------------------------------------------------------------------------- NAILS, per user
@dataclass(frozen=True)
class NailsRatio:
    ratio: np.ndarray  # (B, G) or (G,)
    restricted: np.ndarray  # (B,) users whose target asked for genres no candidate carries
    iterations: int
    max_error: float  # max |re-weighted mix − target| at λ = 1


def _item_factor(ratio: np.ndarray, gi: np.ndarray, gw: np.ndarray) -> np.ndarray:
    """Σ_g p(g|i)·r_g per candidate (B, M); ``ratio`` (B, G)."""
    b = gi.shape[0]
    rg = np.take_along_axis(ratio[:, None, :], gi.reshape(b, 1, -1), axis=2).reshape(gi.shape)
    return (gw * rg).sum(axis=2)


def _reweighted_mix(probs, gi, gw, ratio, n_genres):
    w = probs * _item_factor(ratio, gi, gw)
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
    b = gi.shape[0]
    flat = (np.arange(b)[:, None, None] * n_genres + gi).ravel()
    return np.bincount(flat, weights=(gw * w[..., None]).ravel(), minlength=b * n_genres).reshape(b, n_genres), total[:, 0]


def dense_genres(rows: np.ndarray, genres: ItemGenres) -> np.ndarray:
    """p(g|i) of every candidate as a dense (B, M, G) array."""
    b, m = rows.shape
    out = np.zeros((b, m, genres.n_genres))
    gi, gw = genres.index[rows], genres.weight[rows]
    bb = np.broadcast_to(np.arange(b)[:, None, None], gi.shape)
    mm = np.broadcast_to(np.arange(m)[None, :, None], gi.shape)
    np.add.at(out, (bb, mm, gi), gw)
    return out


def nails_user_ratio(
    probs: np.ndarray,
    rows: np.ndarray,
    genres: ItemGenres,
    p_target: np.ndarray,
    max_iter: int = 200,
    tol: float = 1e-9,
) -> NailsRatio:
    """Per-user NAILS ratios r_u (see the module docstring). ``p_target`` (B, G) or (G,).

    The re-weighted mix at λ = 1 is m = (AᵀΠA)·r / (πᵀA·r) (A the candidates' p(g|i), Π the
    softmax probabilities), so m = p* is the linear system (AᵀΠA)·r = p*, scaled to πᵀA·r = 1:
    solved per user (pseudo-inverse). Where that solution would give a candidate a negative weight,
    or the target is outside what the candidates can reach, the non-negative fixed point of
    r_g ← r_g·p*_g / m_g(r) is used instead (closest reachable mix); ``max_error`` reports the
    largest remaining |m − p*|.
    """
    gi, gw = genres.index[rows], genres.weight[rows]
    p_model = candidate_mass(probs, rows, genres)
    target = np.array(np.broadcast_to(np.asarray(p_target, dtype=np.float64), p_model.shape))
    unreachable = (target > 0) & (p_model <= 0)
    restricted = unreachable.any(axis=1)
    if restricted.any():
        target = np.where(unreachable, 0.0, target)
        s = target.sum(axis=1, keepdims=True)
        target = np.divide(target, s, out=np.zeros_like(target), where=s > 0)
    if genres.single:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(p_model > 0, target / np.where(p_model > 0, p_model, 1.0), 0.0)
        mix, _ = _reweighted_mix(probs, gi, gw, ratio, genres.n_genres)
        return NailsRatio(ratio, restricted, 1, float(np.abs(mix - target).max(initial=0.0)))
    a = dense_genres(rows, genres)
    gram = np.einsum("bmg,bm,bmh->bgh", a, probs, a)
    ratio = np.einsum("bgh,bh->bg", np.linalg.pinv(gram, hermitian=True), target)
    scale = np.einsum("bg,bg->b", p_model, ratio)
    ratio = np.divide(ratio, scale[:, None], out=np.zeros_like(ratio), where=scale[:, None] > 0)
    factor = np.einsum("bmg,bg->bm", a, ratio)
    mix, _ = _reweighted_mix(probs, gi, gw, ratio, genres.n_genres)
    bad = (scale <= 0) | (factor < 0).any(axis=1) | (np.abs(mix - target).max(axis=1) > tol)
    it = 1
    if bad.any():
        sub = np.flatnonzero(bad)
        ratio[sub], mix[sub], it = _nonnegative_fixed_point(probs[sub], gi[sub], gw[sub], target[sub], p_model[sub],
                                                            genres.n_genres, max_iter, tol)
    return NailsRatio(ratio, restricted, it, float(np.abs(mix - target).max(initial=0.0)))


def _nonnegative_fixed_point(probs, gi, gw, target, p_model, n_genres, max_iter, tol):
    """r_g ← r_g·p*_g / m_g(r) from r = p*/p, row by row, scaled so each re-weighted list sums to 1;
    a row stops when it reaches its target or stops moving (a target it cannot reach).
    Returns ``(ratio ≥ 0, mix, iterations)``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(p_model > 0, target / np.where(p_model > 0, p_model, 1.0), 0.0)
    mix, total = _reweighted_mix(probs, gi, gw, r, n_genres)
    r = np.divide(r, total[:, None], out=np.zeros_like(r), where=total[:, None] > 0)
    active = np.flatnonzero(np.abs(mix - target).max(axis=1) > tol)
    it = 1
    while len(active) and it < max_iter:  # only the rows not yet converged
        with np.errstate(divide="ignore", invalid="ignore"):
            r_a = np.where(mix[active] > 0, r[active] * target[active] / np.where(mix[active] > 0, mix[active], 1.0), 0.0)
        m_a, tot_a = _reweighted_mix(probs[active], gi[active], gw[active], r_a, n_genres)
        r[active] = np.divide(r_a, tot_a[:, None], out=np.zeros_like(r_a), where=tot_a[:, None] > 0)
        moved = np.abs(m_a - mix[active]).max(axis=1)
        mix[active] = m_a
        active = active[(np.abs(m_a - target[active]).max(axis=1) > tol) & (moved > 1e-9)]
        it += 1
    return r, mix, it


def nails_reweight_lists(probs: np.ndarray, rows: np.ndarray, genres: ItemGenres, ratio: np.ndarray, lam: float) -> np.ndarray:
    """p'_um ∝ π_um·(1 + λ·(Σ_g p(g|i)·r_ug − 1)), renormalised per row. ``ratio`` (B, G) or (G,)."""
    b = rows.shape[0]
    r = np.broadcast_to(np.asarray(ratio, dtype=np.float64), (b, genres.n_genres))
    f = 1.0 + lam * (_item_factor(np.ascontiguousarray(r), genres.index[rows], genres.weight[rows]) - 1.0)
    adj = probs * f
    total = adj.sum(axis=1, keepdims=True)
    return np.divide(adj, total, out=np.zeros_like(adj), where=total > 0)
