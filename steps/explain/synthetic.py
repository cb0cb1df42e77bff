"""Synthetic interaction sequences with planted sequential structure, in ReChorus' format.

Each item has a genre, a popularity (Zipf) and a few *successors* in its genre. A user's next item
is, with probability ``p_last``, a successor of their last item; with ``p_second`` a successor of
the second-last; with ``p_third`` an item of the third-last item's genre; otherwise a popular item.
So the most recent events predict the next one best (and a popularity ranker does poorly), which
is what a trained GRU4Rec and its Shapley attributions should recover.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from steps.configtools import integer, number, refuse_unknown_keys
from steps.errors import ConfigError
from steps.explain.data import FEATURE, ITEM, TIME, USER, SeqData, leave_one_out
from steps.seeding import rng_for


@dataclass(frozen=True)
class SyntheticSeqSpec:
    """Sizes, structure and seed of the synthetic sequences (configurable from the flow configs)."""

    n_users: int = 1000
    n_items: int = 400
    n_genres: int = 8
    min_len: int = 20
    max_len: int = 50
    n_successors: int = 2
    p_last: float = 0.55
    p_second: float = 0.15
    p_third: float = 0.10
    zipf: float = 1.0
    seed: int = 7

    def __post_init__(self) -> None:
        k = "synthetic."
        integer(k + "n_users", self.n_users, 2)
        integer(k + "n_items", self.n_items, 10)
        integer(k + "n_genres", self.n_genres, 1)
        if self.n_genres > self.n_items // 2:
            raise ConfigError(f"{k}n_genres: {self.n_genres} genres for {self.n_items} items; at most n_items // 2 = "
                              f"{self.n_items // 2} (every genre needs two items)")
        integer(k + "min_len", self.min_len, 3)
        integer(k + "max_len", self.max_len, self.min_len)
        integer(k + "n_successors", self.n_successors, 1)
        for name in ("p_last", "p_second", "p_third"):
            number(k + name, getattr(self, name), 0.0, 1.0)
        total = self.p_last + self.p_second + self.p_third
        if total > 1:
            raise ConfigError(f"{k}p_last + p_second + p_third = {self.p_last} + {self.p_second} + {self.p_third} = "
                              f"{total:g} > 1 (the rest is the probability of a popular item)")
        number(k + "zipf", self.zipf, 0.0)
        integer(k + "seed", self.seed, 0)

    @classmethod
    def from_dict(cls, d: dict | None) -> "SyntheticSeqSpec":
        if d is not None and not isinstance(d, dict):
            raise ConfigError(f"synthetic: expected a mapping, got {d!r}")
        d = dict(d or {})
        refuse_unknown_keys("synthetic", d, cls)
        return cls(**d)

    def as_dict(self) -> dict:
        return asdict(self)


def _items_by_genre(genre: np.ndarray, n_genres: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items sorted by genre, with each genre's start and size in that order."""
    order = np.argsort(genre, kind="stable") + 1  # item ids
    sizes = np.bincount(genre, minlength=n_genres)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return order, starts, sizes


def synthetic_events(spec: SyntheticSeqSpec) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(events, item_features)``: ``user_id, item_id, time`` and ``item_id, feature`` (genre)."""
    rng = rng_for(spec.seed, "synthetic_sequences")
    n = spec.n_items
    genre = rng.permutation(np.arange(n) % spec.n_genres)  # genre of items 1..n (at index id - 1)
    popularity = 1.0 / np.arange(1, n + 1) ** spec.zipf
    popularity = popularity[rng.permutation(n)]
    popularity /= popularity.sum()
    by_genre, g_start, g_size = _items_by_genre(genre, spec.n_genres)
    sizes_i = g_size[genre][:, None]
    succ = by_genre[g_start[genre][:, None] + rng.integers(0, 1 << 30, size=(n, spec.n_successors)) % sizes_i]
    succ2 = by_genre[g_start[genre][:, None] + rng.integers(0, 1 << 30, size=(n, spec.n_successors)) % sizes_i]
    # pad index 0 so that succ[item] works with item ids
    succ = np.vstack([np.zeros((1, spec.n_successors), dtype=np.int64), succ])
    succ2 = np.vstack([np.zeros((1, spec.n_successors), dtype=np.int64), succ2])
    genre_of = np.concatenate([[0], genre])

    n_users, max_len = spec.n_users, spec.max_len
    lengths = rng.integers(spec.min_len, spec.max_len + 1, size=n_users)
    seq = np.zeros((n_users, max_len), dtype=np.int64)
    seq[:, 0] = rng.choice(n, size=n_users, p=popularity) + 1
    p_pop = 1.0 - spec.p_last - spec.p_second - spec.p_third
    probs = np.array([spec.p_last, spec.p_second, spec.p_third, max(p_pop, 0.0)])
    for t in range(1, max_len):  # vectorised over users; one iteration per time step
        source = rng.choice(4, size=n_users, p=probs / probs.sum())
        pick = rng.integers(0, spec.n_successors, size=n_users)
        last = seq[:, t - 1]
        second = seq[:, t - 2] if t >= 2 else last
        third = seq[:, t - 3] if t >= 3 else second
        g3 = genre_of[third]
        same_genre = by_genre[g_start[g3] + rng.integers(0, 1 << 30, size=n_users) % g_size[g3]]
        popular = rng.choice(n, size=n_users, p=popularity) + 1
        seq[:, t] = np.select(
            [source == 0, source == 1, source == 2],
            [succ[last, pick], succ2[second, pick], same_genre],
            popular,
        )
    gaps = rng.integers(60, 86_400, size=(n_users, max_len))
    times = 978_300_000 + np.cumsum(gaps, axis=1)
    valid = np.arange(max_len)[None, :] < lengths[:, None]
    users = np.broadcast_to(np.arange(1, n_users + 1)[:, None], seq.shape)
    events = pl.DataFrame({USER: users[valid], ITEM: seq[valid], TIME: times[valid]})
    features = pl.DataFrame({ITEM: np.arange(1, n + 1), FEATURE: [f"genre{g}" for g in genre]})
    return events, features


def synthetic_dataset(spec: SyntheticSeqSpec, n_neg: int) -> SeqData:
    """Synthetic sequences split leave-one-out with ``n_neg`` negatives per dev/test row."""
    events, features = synthetic_events(spec)
    return leave_one_out(events, n_neg, spec.seed, features, "i_genre", source="synthetic")
