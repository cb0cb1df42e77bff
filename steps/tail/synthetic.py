"""Synthetic MovieLens-20M ``ratings.csv`` with a popularity long tail and latent item semantics.

Items have a Zipf popularity and belong to one of ``n_clusters`` clusters (their latent
"semantics"); every cluster holds head and tail items alike. Each user loves a few clusters and
picks items with probability ∝ popularity^``popularity_weight`` × (``cluster_affinity`` if the item
is in a loved cluster else 1), without replacement (Gumbel top-k, vectorised over a batch of users).
A share of extra picks gets ratings below 4, which binarisation removes. Tail items therefore
co-occur with the head items of their cluster: an item-item model can learn to recommend them,
and a popularity-biased one under-exposes them — the setting the tail-promotion methods address.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl

from steps.seeding import rng_for
from steps.tail.config import SyntheticSpec

ML20M_COLUMNS = ("userId", "movieId", "rating", "timestamp")
HIGH_RATINGS = np.array([4.0, 4.5, 5.0])
LOW_RATINGS = np.array([1.0, 2.0, 2.5, 3.0, 3.5])


@dataclass(frozen=True)
class ItemTruth:
    """The hidden structure of a synthetic catalogue (for tests and plots)."""

    popularity: np.ndarray  # (n_items,) Zipf weight
    cluster: np.ndarray  # (n_items,) cluster of each item
    movie_ids: np.ndarray  # (n_items,) the ids written to ratings.csv


def item_truth(spec: SyntheticSpec) -> ItemTruth:
    rng = rng_for(spec.seed, "synthetic-items")
    rank = rng.permutation(spec.n_items)
    popularity = (rank + 1.0) ** -spec.zipf_exponent
    cluster = rng.integers(0, spec.n_clusters, spec.n_items)
    movie_ids = np.sort(rng.choice(np.arange(1, 10 * spec.n_items + 1), spec.n_items, replace=False))
    return ItemTruth(popularity, cluster, movie_ids)


def iter_synthetic_ratings(spec: SyntheticSpec, batch_users: int | None = None) -> Iterator[pl.DataFrame]:
    """Batches of ratings rows (``userId, movieId, rating, timestamp``), users in id order."""
    truth = item_truth(spec)
    n_items = spec.n_items
    log_pop = spec.popularity_weight * np.log(truth.popularity)
    log_aff = np.log(spec.cluster_affinity)
    batch = batch_users or max(1, 4_000_000 // n_items)
    user_rng = rng_for(spec.seed, "synthetic-users")
    # items per user: log-normal around the mean, at least 2 (some users fall below the filters)
    sigma = 0.8
    n_high = np.clip(np.round(user_rng.lognormal(np.log(spec.mean_items_per_user) - sigma**2 / 2, sigma, spec.n_users)),
                     2, n_items // 2).astype(np.int64)
    n_low = user_rng.binomial(n_high, spec.low_rating_share)
    n_pick = np.minimum(n_high + n_low, n_items)
    for start in range(0, spec.n_users, batch):
        stop = min(start + batch, spec.n_users)
        rng = rng_for(spec.seed, "synthetic-batch", start)
        b = stop - start
        loved = np.argsort(rng.random((b, spec.n_clusters)), axis=1)[:, : spec.clusters_per_user]
        loves = np.zeros((b, spec.n_clusters), dtype=bool)
        np.put_along_axis(loves, loved, True, axis=1)
        keys = log_pop[None, :] + log_aff * loves[:, truth.cluster] + rng.gumbel(size=(b, n_items))
        m = int(n_pick[start:stop].max())
        top = np.argpartition(-keys, m - 1, axis=1)[:, :m]
        order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        pos = np.broadcast_to(np.arange(m)[None, :], (b, m))
        keep = pos < n_pick[start:stop, None]
        # the first n_high picks are liked (rating >= 4), the rest get low ratings
        liked = pos < n_high[start:stop, None]
        rows = np.broadcast_to(np.arange(b)[:, None], (b, m))[keep]
        items = top[keep]
        is_liked = liked[keep]
        ratings = np.where(is_liked, rng.choice(HIGH_RATINGS, len(items)), rng.choice(LOW_RATINGS, len(items)))
        ts = 1_100_000_000 + rng.integers(0, 300_000_000, len(items))
        yield pl.DataFrame({
            "userId": (rows + start + 1).astype(np.int64),
            "movieId": truth.movie_ids[items].astype(np.int64),
            "rating": ratings.astype(np.float64),
            "timestamp": ts.astype(np.int64),
        })


def write_synthetic_ratings(path: str | os.PathLike, spec: SyntheticSpec) -> Path:
    """Write ``ratings.csv`` in the ML-20M layout atomically (one-decimal ratings, like the original)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(",".join(ML20M_COLUMNS) + "\n")
            for frame in iter_synthetic_ratings(spec):
                frame.write_csv(f, include_header=False, float_precision=1)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
