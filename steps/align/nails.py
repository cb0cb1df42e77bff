"""NAILS: normative alignment via internal label shift.

With p*(E) the target and p(E) the model's distribution over categories, every article a of
category E_a gets

    p'(a) = p(a) · (1 + λ · (p*(E_a) / p(E_a) − 1)),      λ ∈ [0, 1],

renormalised per impression. λ = 0 keeps the model; λ = 1 is the full label-shift correction, under
which the mean (over impressions) summed probability of each category equals p*(E).
"""

from __future__ import annotations

import numpy as np

from steps.errors import ConfigError


def check_lambda(lam: float, name: str = "lambda") -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.floating)) or not 0.0 <= float(lam) <= 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1], got {lam!r}")
    return float(lam)


def nails_ratio(p_star: np.ndarray, p_model: np.ndarray) -> np.ndarray:
    """p*(E)/p(E) per category; 1 where both are 0 (a category neither has)."""
    p_star = np.asarray(p_star, dtype=np.float64)
    p_model = np.asarray(p_model, dtype=np.float64)
    if np.any((p_model <= 0) & (p_star > 0)):
        raise ValueError("p(E) must be positive wherever p*(E) is")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p_model > 0, p_star / np.where(p_model > 0, p_model, 1.0), 1.0)


def nails_factors(ratio: np.ndarray, lam: float) -> np.ndarray:
    """Per-category multipliers 1 + λ·(ratio − 1)."""
    lam = check_lambda(lam)
    return 1.0 + lam * (np.asarray(ratio, dtype=np.float64) - 1.0)


def nails_reweight(probs: np.ndarray, category_slot: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Re-weight rows of ``probs`` (U, K) by their column's category factor; renormalise rows.

    ``category_slot`` (K,) indexes ``factors``. A row whose re-weighted mass is 0 (every article in
    a category the target gives no mass, at λ = 1) stays all-zero.
    """
    adj = np.asarray(probs, dtype=np.float64) * factors[category_slot][None, :]
    total = adj.sum(axis=1, keepdims=True)
    np.divide(adj, total, out=adj, where=total > 0)
    return adj
