"""A synthetic candidate bundle (:mod:`steps.candidates`) with multi-genre items and histories.

The generative story (all from named seeded streams):

* items have 1–3 genres (genre shares Zipf-skewed) and a Zipf popularity;
* each user has a Dirichlet taste over genres; history items are drawn ∝ popularity × taste
  (timestamps spread over ``history_days``), held-out items the same way from the remaining items;
* the *model* scores every item by taste·genres + a popularity bias + noise, and the bundle keeps
  its top-M unseen items: a popular-genre-skewed list, miscalibrated against the user's history,
  as Steck observed for real recommenders.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import polars as pl

from steps.candidates import write_candidate_bundle
from steps.configtools import integer, number, refuse_unknown_keys
from steps.errors import ConfigError
from steps.seeding import rng_for

GENRE_NAMES = ("Action", "Adventure", "Comedy", "Crime", "Documentary", "Drama", "Fantasy", "Horror",
               "Musical", "Mystery", "Romance", "SciFi", "Thriller", "War", "Western", "Animation",
               "Children", "FilmNoir", "History", "Sport")


@dataclass(frozen=True)
class SyntheticListsSpec:
    users: int = 400
    items: int = 300
    genres: int = 8
    candidates: int = 50
    history_items: int = 20
    heldout_items: int = 5
    history_days: float = 60.0
    popularity_bias: float = 1.5
    single_genre: bool = False
    seed: int = 7

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None, where: str = "synthetic") -> "SyntheticListsSpec":
        raw = dict(raw or {})
        refuse_unknown_keys(where, raw, cls, "expected")
        d: dict[str, Any] = {}
        for key in ("users", "items", "candidates", "history_items", "heldout_items"):
            if key in raw:
                d[key] = integer(f"{where}.{key}", raw[key], 1)
        if "genres" in raw:
            d["genres"] = integer(f"{where}.genres", raw["genres"], 2)
            if d["genres"] > len(GENRE_NAMES):
                raise ConfigError(f"{where}.genres: at most {len(GENRE_NAMES)}, got {d['genres']}")
        if "seed" in raw:
            d["seed"] = integer(f"{where}.seed", raw["seed"], 0)
        for key in ("history_days", "popularity_bias"):
            if key in raw:
                d[key] = number(f"{where}.{key}", raw[key], 0.0)
        if "single_genre" in raw:
            if not isinstance(raw["single_genre"], bool):
                raise ConfigError(f"{where}.single_genre: expected true or false, got {raw['single_genre']!r}")
            d["single_genre"] = raw["single_genre"]
        spec = cls(**{**asdict(cls()), **d})
        need = spec.candidates + spec.history_items + spec.heldout_items
        if need > spec.items:
            raise ConfigError(f"{where}: items ({spec.items}) must be at least candidates + history_items + heldout_items ({need})")
        return spec

    def as_dict(self) -> dict:
        return asdict(self)


def _draw_without_replacement(weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k columns per row drawn without replacement ∝ weights (exponential race), vectorised."""
    keys = np.log(weights) - np.log(rng.standard_exponential(weights.shape))
    return np.argsort(-keys, axis=1, kind="stable")[:, :k]


def write_synthetic_lists(out_dir: str | Path, spec: SyntheticListsSpec, name: str = "synthetic") -> Path:
    """Write the bundle to ``out_dir``; returns the folder."""
    g, n_items, n_users = spec.genres, spec.items, spec.users
    rng_i = rng_for(spec.seed, "lists", "items")
    share = 1.0 / np.arange(1, g + 1) ** 0.8
    share /= share.sum()
    n_gen = np.ones(n_items, dtype=np.int64) if spec.single_genre else rng_i.choice([1, 2, 3], size=n_items, p=[0.5, 0.35, 0.15])
    genre_keys = np.log(np.broadcast_to(share, (n_items, g))) - np.log(rng_i.standard_exponential((n_items, g)))
    order = np.argsort(-genre_keys, axis=1)
    member = np.zeros((n_items, g), dtype=bool)
    member[np.arange(n_items)[:, None], order[:, :3]] = np.arange(3)[None, :] < n_gen[:, None]
    a = member / member.sum(axis=1, keepdims=True)
    pop = 1.0 / rng_i.permutation(np.arange(1, n_items + 1)) ** 0.9

    rng_u = rng_for(spec.seed, "lists", "users")
    taste = rng_u.dirichlet(np.full(g, 0.4), size=n_users)
    affinity = taste @ a.T  # (U, I)
    seen = _draw_without_replacement(pop[None, :] * (affinity + 1e-3), spec.history_items + spec.heldout_items, rng_u)
    hist, held = seen[:, : spec.history_items], seen[:, spec.history_items :]
    t_end = 1_700_000_000
    times = t_end - np.sort(rng_u.uniform(0, spec.history_days * 86_400, size=hist.shape), axis=1)[:, ::-1].astype(np.int64)

    rng_m = rng_for(spec.seed, "lists", "model")
    score = 4.0 * affinity + spec.popularity_bias * np.log(pop)[None, :] + rng_m.normal(0, 0.5, size=affinity.shape)
    score[np.arange(n_users)[:, None], hist] = -np.inf
    cand = np.argsort(-score, axis=1, kind="stable")[:, : spec.candidates]
    cand_scores = np.take_along_axis(score, cand, axis=1)

    item_ids = np.arange(1, n_items + 1, dtype=np.int64)
    names = np.array(GENRE_NAMES[:g], dtype=object)
    r, c = np.nonzero(member)
    items = (pl.DataFrame({"item_id": item_ids[r], "category": names[c].astype(str)})
             .group_by("item_id", maintain_order=True).agg(pl.col("category").alias("categories")))
    user_ids = np.arange(1, n_users + 1, dtype=np.int64)
    h_off = np.arange(n_users + 1, dtype=np.int64) * spec.history_items
    k_off = np.arange(n_users + 1, dtype=np.int64) * spec.heldout_items
    write_candidate_bundle(
        out_dir, user_ids, item_ids[cand], cand_scores.astype(np.float32), items,
        heldout=(k_off, item_ids[held].ravel()), history=(h_off, item_ids[hist].ravel(), times.ravel()),
        meta={"dataset": name, "model": "synthetic", "spec": spec.as_dict()},
    )
    return Path(out_dir)
