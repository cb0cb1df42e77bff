"""Selecting the top-N of each row: deterministically, or by sampling without replacement."""

from __future__ import annotations

import numpy as np


def top_n_indices(scores: np.ndarray, n: int) -> np.ndarray:
    """Column indices of the ``n`` highest scores of each row, best first.

    Ties are broken towards the smaller column index, exactly (also at the cut-off), so the
    result equals ``np.argsort(-scores, kind="stable")[:, :n]`` but costs a partition, not a sort.
    """
    u, k = scores.shape
    if not 0 < n <= k:
        raise ValueError(f"n must be in [1, {k}], got {n}")
    if n == k:
        return np.argsort(-scores, axis=1, kind="stable")
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1)[:, None]
    greater = scores > kth
    equal = scores == kth
    need = n - greater.sum(axis=1, keepdims=True)
    take_equal = equal & (np.cumsum(equal, axis=1) <= need)
    cols = np.nonzero(greater | take_equal)[1].reshape(u, n)
    vals = np.take_along_axis(scores, cols, axis=1)
    return np.take_along_axis(cols, np.argsort(-vals, axis=1, kind="stable"), axis=1)


def sampling_keys(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random keys whose descending order is a ranking drawn without replacement with probability
    proportional to ``probs`` (the Plackett–Luce model): ``p / E`` with ``E ~ Exp(1)``, the
    "exponential race" form of the Gumbel-max trick (``log p − log E`` is Gumbel-perturbed log p).
    Zero-probability cells get key 0 and come after every positive one, in column order."""
    return np.asarray(probs, dtype=np.float64) / rng.standard_exponential(size=np.shape(probs))


def stochastic_top_n(probs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` columns per row drawn without replacement with probability proportional to ``probs``
    (sequential draws, the same law as ``numpy.random.choice(..., replace=False, p=row)``), in
    the order drawn."""
    return top_n_indices(sampling_keys(probs, rng), n)
