"""Shapley value estimators for games over M players, given a value function.

* :func:`shapley_from_values` — exact Shapley values from v on all 2^M coalitions:
  φ_i = Σ_{S ∌ i} |S|!(M−|S|−1)!/M! · (v(S ∪ {i}) − v(S)).
* :func:`kernel_shap` — Kernel SHAP (Lundberg & Lee 2017) in the constrained least-squares form of
  Covert & Lee (2021): minimise Σ_z μ(z)(v(∅) + zᵀφ − v(z))² subject to Σφ = v(N) − v(∅), with
  the Shapley kernel μ(z) = (M−1) / (C(M,|z|)·|z|·(M−|z|)). Coalitions are drawn from μ with
  paired sampling (each z with its complement); with a budget of at least 2^M − 2 every coalition is
  enumerated with its exact weight, and the answer is the exact Shapley value.
* :func:`prune_horizon` — TimeSHAP's temporal coalition pruning (Bento et al., KDD 2021): for
  i = 1, 2, … split the sequence into the i most recent events and the older ones, compute the
  older group's Shapley value in that two-player game, and stop at the first i where it is within
  ``tolerance · |v(N) − v(∅)|``; the older events then become one player.

A value function takes a boolean matrix ``(B, M)`` of coalitions and returns ``(B,)`` values.
Every estimator returns attributions that sum to v(N) − v(∅).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Callable

import numpy as np

ValueFn = Callable[[np.ndarray], np.ndarray]


def shapley_weights(m: int) -> np.ndarray:
    """``w[s] = s!(m−s−1)!/m! = 1 / (m · C(m−1, s))`` for s = 0..m−1."""
    return np.array([1.0 / (m * comb(m - 1, s)) for s in range(m)], dtype=np.float64)


def shapley_from_values(values: np.ndarray) -> np.ndarray:
    """Exact Shapley values from ``values[k]`` = v(players whose bits are set in ``k``)."""
    values = np.asarray(values, dtype=np.float64)
    m = int(np.log2(len(values)))
    if m < 1 or len(values) != 1 << m:
        raise ValueError(f"expected 2^M values for M >= 1, got {len(values)}")
    w = shapley_weights(m)
    masks = np.arange(1 << m, dtype=np.int64)
    weight_of = w[np.minimum(np.bitwise_count(masks), m - 1)]
    phi = np.empty(m, dtype=np.float64)
    for i in range(m):  # one vectorised pass over 2^(M-1) coalitions per player
        without = masks[(masks >> i) & 1 == 0]
        phi[i] = np.dot(weight_of[without], values[without | (1 << i)] - values[without])
    return phi


def kernel_weights(m: int, sizes: np.ndarray) -> np.ndarray:
    """Shapley kernel μ(z) for coalitions of the given sizes (0 < size < m)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    binom = np.array([comb(m, s) for s in range(m + 1)], dtype=np.float64)
    return (m - 1) / (binom[sizes] * sizes * (m - sizes))


def sample_kernel_coalitions(m: int, n_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """``2·n_pairs`` coalitions: ``n_pairs`` drawn from the Shapley kernel (size s with probability
    ∝ 1/(s(m−s)), then a uniform subset of that size), each followed by its complement."""
    sizes = np.arange(1, m)
    p = 1.0 / (sizes * (m - sizes))
    s = rng.choice(sizes, size=n_pairs, p=p / p.sum())
    ranks = np.argsort(np.argsort(rng.random((n_pairs, m)), axis=1), axis=1)
    z = ranks < s[:, None]
    return np.concatenate([z, ~z])


def solve_constrained(z: np.ndarray, weights: np.ndarray, gains: np.ndarray, total: float) -> np.ndarray:
    """argmin_φ Σ w (zᵀφ − gain)² subject to Σφ = total (weighted least squares with one constraint)."""
    zf = z.astype(np.float64)
    wz = zf * (weights / weights.sum())[:, None]
    a = wz.T @ zf
    b = wz.T @ gains
    ones = np.ones(z.shape[1])
    try:
        a_inv_b = np.linalg.solve(a, b)
        a_inv_1 = np.linalg.solve(a, ones)
    except np.linalg.LinAlgError:
        a_pinv = np.linalg.pinv(a)
        a_inv_b, a_inv_1 = a_pinv @ b, a_pinv @ ones
    return a_inv_b - a_inv_1 * (ones @ a_inv_b - total) / (ones @ a_inv_1)


def kernel_shap(
    value_fn: ValueFn, m: int, n_samples: int, rng: np.random.Generator,
    v_empty: float | None = None, v_full: float | None = None,
) -> np.ndarray:
    """Kernel SHAP with paired sampling and the efficiency constraint (see the module docstring).

    ``n_samples``: coalitions evaluated besides ∅ and N (rounded down to pairs, at least one pair).
    """
    if m < 1:
        raise ValueError("a game needs at least one player")
    if v_empty is None or v_full is None:
        ends = value_fn(np.array([np.zeros(m, bool), np.ones(m, bool)]))
        v_empty, v_full = float(ends[0]), float(ends[1])
    total = v_full - v_empty
    if m == 1:
        return np.array([total])
    if n_samples >= (1 << m) - 2:
        z = all_proper_coalitions(m)
        weights = kernel_weights(m, z.sum(axis=1))
    else:
        z = sample_kernel_coalitions(m, max(1, n_samples // 2), rng)
        weights = np.ones(len(z))
    gains = np.asarray(value_fn(z), dtype=np.float64) - v_empty
    return solve_constrained(z, weights, gains, total)


def all_proper_coalitions(m: int) -> np.ndarray:
    """Every coalition except ∅ and N, ``(2^m − 2, m)``."""
    k = np.arange(1, (1 << m) - 1, dtype=np.int64)
    return ((k[:, None] >> np.arange(m)) & 1).astype(bool)


@dataclass(frozen=True)
class Pruning:
    """Result of :func:`prune_horizon`."""

    n_kept: int  # recent events kept as individual players (the rest form one group)
    older_values: np.ndarray  # (L−1,) Shapley value of the older group when the i most recent are kept, i = 1..L−1
    tolerance: float  # absolute tolerance used: tolerance · |v(N) − v(∅)|


def prune_horizon(event_value_fn: ValueFn, n_events: int, tolerance: float) -> Pruning:
    """TimeSHAP temporal coalition pruning over events in time order (oldest first).

    ``event_value_fn`` takes event masks ``(B, L)``. All L−1 splits are evaluated in one batch.
    """
    L = int(n_events)
    if L < 1:
        raise ValueError("no events to prune")
    if L == 1:
        return Pruning(1, np.zeros(0), 0.0)
    kept = np.arange(1, L)
    recent = np.arange(L)[None, :] >= (L - kept)[:, None]
    masks = np.concatenate([np.ones((1, L), bool), np.zeros((1, L), bool), recent, ~recent])
    v = np.asarray(event_value_fn(masks), dtype=np.float64)
    v_full, v_empty, v_recent, v_older = v[0], v[1], v[2 : L + 1], v[L + 1 :]
    older = 0.5 * ((v_full - v_recent) + (v_older - v_empty))
    tol = float(tolerance) * abs(v_full - v_empty)
    below = np.abs(older) <= tol
    n_kept = int(kept[np.argmax(below)]) if below.any() else L
    return Pruning(n_kept, older, tol)


def pruned_players(n_events: int, n_kept: int) -> np.ndarray:
    """Player of each event after pruning: the ``n_events − n_kept`` oldest events are player 0
    (when there are any), the kept events follow one player each, in time order."""
    t = np.arange(n_events)
    first_kept = n_events - n_kept
    return np.maximum(t - first_kept + (1 if first_kept > 0 else 0), 0)
