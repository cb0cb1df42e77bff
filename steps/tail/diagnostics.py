"""Is a method's item re-weighting adversarial, or a fixed popularity prior? Two numbers per epoch.

* :func:`weight_drift` — the mean absolute change of the learner's item weights ω (mean 1, so a
  drift of 0.01 is 1 % of the average weight) between two snapshots.
* :func:`spearman` — the rank correlation of ω with the items' training popularity (ties get
  their average rank); near −1 means ω is, up to a monotone map, an inverse-popularity weighting.

An adversary that keeps adapting shows drift epoch after epoch; the reference code's zero-initialised
adversary moves once, on the first step, and then barely at all (see ``ItemAdversary``'s ``init``).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def weight_drift(before: np.ndarray, after: np.ndarray) -> float:
    """mean_i |after_i − before_i|."""
    a, b = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"weight snapshots differ in shape: {a.shape} and {b.shape}")
    return float(np.abs(b - a).mean())


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's ρ: the Pearson correlation of the average ranks; NaN when either is constant."""
    rx = rankdata(np.asarray(x, dtype=np.float64))
    ry = rankdata(np.asarray(y, dtype=np.float64))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / den) if den > 0 else float("nan")
