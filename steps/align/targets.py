"""Target distributions p*(E) over categories, and the model's own distribution p(E)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from steps.errors import ConfigError, InputError

#: Names of the built-in targets.
BUILTIN_TARGETS = ("Editorial", "Uniform")
#: Tolerance on the sum of a user-given target.
SUM_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Target:
    """A target distribution over ``categories`` (``probs`` sums to 1)."""

    name: str
    categories: tuple[str, ...]
    probs: np.ndarray

    def as_dict(self) -> dict[str, float]:
        return {c: float(p) for c, p in zip(self.categories, self.probs)}

    def __post_init__(self) -> None:
        if len(self.categories) != len(self.probs):
            raise ValueError("categories and probs differ in length")


def editorial_target(candidate_categories: Sequence[str], name: str = "Editorial") -> Target:
    """Category frequencies of the beyond-accuracy candidate list."""
    cats, counts = np.unique(np.asarray(candidate_categories, dtype=object).astype(str), return_counts=True)
    return Target(name, tuple(cats.tolist()), counts / counts.sum())


def uniform_target(candidate_categories: Sequence[str], name: str = "Uniform") -> Target:
    """Uniform over the categories present in the candidate list."""
    cats = np.unique(np.asarray(candidate_categories, dtype=object).astype(str))
    return Target(name, tuple(cats.tolist()), np.full(len(cats), 1.0 / len(cats)))


def custom_target(name: str, mapping: Mapping[str, float], candidate_categories: Sequence[str]) -> Target:
    """A user-given target, validated against the candidate list's categories.

    Every category must occur in the candidate list (NAILS can only move probability mass between
    categories the model can recommend), values must be finite and non-negative, and they must sum
    to 1 within 1e-6. Candidate categories missing from the mapping get probability 0.
    """
    present = sorted(set(np.asarray(candidate_categories, dtype=object).astype(str).tolist()))
    if not mapping:
        raise ConfigError(f"target {name!r}: the distribution is empty")
    for cat, value in mapping.items():
        if str(cat) not in present:
            raise ConfigError(
                f"target {name!r}: unknown category {cat!r}; the candidate list has {', '.join(present)}"
            )
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value) or value < 0:
            raise ConfigError(f"target {name!r}: category {cat!r} has probability {value!r}; expected a number >= 0")
    total = float(sum(mapping.values()))
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise ConfigError(f"target {name!r}: probabilities sum to {total:.8g}, expected 1")
    probs = np.array([float(mapping.get(c, 0.0)) for c in present]) / total
    return Target(name, tuple(present), probs)


def resolve_target(spec: str | Mapping, candidate_categories: Sequence[str]) -> Target:
    """``"Editorial"``, ``"Uniform"`` or ``{"name": ..., "distribution": {...}}``."""
    if isinstance(spec, str):
        if spec == "Editorial":
            return editorial_target(candidate_categories)
        if spec == "Uniform":
            return uniform_target(candidate_categories)
        raise ConfigError(f"targets: unknown target {spec!r}; use Editorial, Uniform or a mapping with a distribution")
    return custom_target(str(spec["name"]), dict(spec["distribution"]), candidate_categories)


def model_distribution(probs: np.ndarray, category_index: np.ndarray, n_categories: int) -> np.ndarray:
    """p(E): mean over rows of each category's summed probability.

    ``probs`` (U, K) row-stochastic, ``category_index`` (K,) in ``[0, n_categories)``.
    """
    per_column = np.asarray(probs, dtype=np.float64).sum(axis=0) / probs.shape[0]
    return np.bincount(category_index, weights=per_column, minlength=n_categories)


def check_model_mass(p_model: np.ndarray, p_star: np.ndarray, categories: Sequence[str]) -> None:
    """NAILS divides by p(E): every category the target asks for needs model mass."""
    bad = [(c, m) for c, m, t in zip(categories, p_model, p_star) if t > 0 and not m > 0]
    if bad:
        raise InputError(
            "model distribution p(E) is zero for target categories "
            + ", ".join(f"{c} (p={m})" for c, m in bad)
            + "; NAILS cannot re-weight a category the model gives no probability"
        )
