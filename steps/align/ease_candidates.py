"""EASE candidate lists from a ratings table: the input of Steck-style calibration on MovieLens.

The protocol of Steck's *Calibrated Recommendations* (RecSys '18) on MovieLens: ratings ≥
``positive_rating`` (4) are positives; each user's positives are split into a history (80 %) and a
held-out part (20 %), either at random (a seeded, per-user draw) or by time (the latest 20 %;
ratings with the same timestamp are ordered by item id, the lower id counting as the later).
EASE (Steck, WWW '19; closed form B = I − P·diag(1/diag P), P = (XᵀX + λI)⁻¹) is fitted on the
history matrix of all users; every user's items are scored by x_u·B, history items removed, and
the ``top_m`` best (ties: lower item id) become the candidates, with their scores, the held-out
items as labels and the history (with timestamps) as the source of p(g|u). Users with fewer than
two positives are left out (they have no history or nothing held out) and counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import polars as pl
import scipy.sparse as sp

from steps.candidates import write_candidate_bundle
from steps.configtools import choice, integer, number, refuse_unknown_keys
from steps.errors import ConfigError
from steps.seeding import rng_for

SPLITS = ("random", "time")


@dataclass(frozen=True)
class EaseCandidatesSpec:
    source: str = "recbole"  # "recbole" (the wheel's copy) or a GroupLens ml-100k/ folder
    top_m: int = 100
    split: str = "random"
    test_fraction: float = 0.2
    positive_rating: float = 4.0
    l2: float = 200.0
    seed: int = 2018

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None, where: str = "ml100k_ease") -> "EaseCandidatesSpec":
        raw = dict(raw or {})
        refuse_unknown_keys(where, raw, cls, "expected")
        d: dict[str, Any] = {}
        if "source" in raw:
            if not isinstance(raw["source"], str) or not raw["source"]:
                raise ConfigError(f"{where}.source: expected 'recbole' or a GroupLens ml-100k folder, got {raw['source']!r}")
            d["source"] = raw["source"]
        if "top_m" in raw:
            d["top_m"] = integer(f"{where}.top_m", raw["top_m"], 1)
        if "split" in raw:
            d["split"] = choice(f"{where}.split", raw["split"], SPLITS)
        if "test_fraction" in raw:
            d["test_fraction"] = number(f"{where}.test_fraction", raw["test_fraction"], 0.0, 1.0, lo_open=True)
            if d["test_fraction"] >= 1.0:
                raise ConfigError(f"{where}.test_fraction: must be below 1, got {d['test_fraction']}")
        if "positive_rating" in raw:
            d["positive_rating"] = number(f"{where}.positive_rating", raw["positive_rating"])
        if "l2" in raw:
            d["l2"] = number(f"{where}.l2", raw["l2"], 0.0, lo_open=True)
        if "seed" in raw:
            d["seed"] = integer(f"{where}.seed", raw["seed"], 0)
        return cls(**{**asdict(cls()), **d})

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EaseSplit:
    users: np.ndarray  # (U,) user ids kept
    items: np.ndarray  # (I,) item ids (column order)
    history: sp.csr_matrix  # (U, I) 0/1
    history_time: sp.csr_matrix  # (U, I) timestamps of the history entries
    heldout: sp.csr_matrix  # (U, I) 0/1
    n_users_dropped: int


def split_positives(ratings: pl.DataFrame, spec: EaseCandidatesSpec) -> EaseSplit:
    """Positives split per user into history and held-out parts (module docstring)."""
    pos = ratings.filter(pl.col("rating") >= spec.positive_rating).select("user_id", "item_id", "timestamp")
    rng = rng_for(spec.seed, "ease-split", spec.split)
    if spec.split == "random":
        key = rng.random(pos.height)  # one draw per row of a fixed order → deterministic per seed
        pos = pos.sort(["user_id", "item_id"]).with_columns(pl.Series("_key", key))
    else:
        pos = pos.sort(["user_id", "item_id"]).with_columns((-pl.col("timestamp")).cast(pl.Float64).alias("_key"))
    pos = pos.with_columns(
        pl.col("_key").rank("ordinal").over("user_id").alias("_rank"),
        pl.len().over("user_id").alias("_n"),
    ).with_columns(
        (pl.col("_n") * spec.test_fraction).round().clip(1, None).cast(pl.Int64).alias("_n_test")
    )
    pos = pos.with_columns(pl.min_horizontal(pl.col("_n_test"), pl.col("_n") - 1).alias("_n_test"))
    n_all = ratings["user_id"].n_unique()  # users with fewer than two positives (or none) are dropped
    pos = pos.filter(pl.col("_n") >= 2)
    users = np.sort(pos["user_id"].unique().to_numpy())
    items = np.sort(ratings["item_id"].unique().to_numpy())
    u = np.searchsorted(users, pos["user_id"].to_numpy())
    i = np.searchsorted(items, pos["item_id"].to_numpy())
    test = (pos["_rank"].to_numpy() <= pos["_n_test"].to_numpy())
    shape = (len(users), len(items))
    hist = sp.csr_matrix((np.ones((~test).sum()), (u[~test], i[~test])), shape=shape)
    times = sp.csr_matrix((pos["timestamp"].to_numpy()[~test].astype(np.float64), (u[~test], i[~test])), shape=shape)
    held = sp.csr_matrix((np.ones(test.sum()), (u[test], i[test])), shape=shape)
    return EaseSplit(users, items, hist, times, held, n_all - len(users))


def ease_top_m(history: sp.csr_matrix, l2: float, top_m: int, batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(U, M) column indices and scores of every user's best unseen items under EASE."""
    from steps.align.selection import top_n_indices
    from steps.tail.models import ease_closed_form

    b = ease_closed_form(history, l2)
    n_users, n_items = history.shape
    m = min(top_m, n_items)
    cols = np.empty((n_users, m), dtype=np.int64)
    vals = np.empty((n_users, m), dtype=np.float64)
    for s in range(0, n_users, batch):
        x = history[s : s + batch]
        scores = np.asarray(x @ b)
        scores[x.nonzero()] = -np.inf
        top = top_n_indices(scores, m)
        cols[s : s + batch] = top
        vals[s : s + batch] = np.take_along_axis(scores, top, axis=1)
    short = ~np.isfinite(vals)
    if short.any():
        r = int(np.flatnonzero(short.any(axis=1))[0])
        raise ConfigError(f"top_m = {top_m}: user row {r} has fewer than {top_m} unseen items; lower top_m")
    return cols, vals


def build_ease_candidates(ratings: pl.DataFrame, items: pl.DataFrame, spec: EaseCandidatesSpec, out_dir: str | Path,
                          dataset: str = "ml100k") -> dict:
    """Split, fit EASE, write the candidate bundle to ``out_dir``; returns a summary."""
    split = split_positives(ratings, spec)
    cols, vals = ease_top_m(split.history, spec.l2, spec.top_m)
    h, ht, k = split.history, split.history_time, split.heldout
    h.sort_indices()
    ht.sort_indices()
    k.sort_indices()
    genre_items = items.select(pl.col("item_id").cast(pl.Int64), pl.col("genres").alias("categories"))
    write_candidate_bundle(
        out_dir, split.users, split.items[cols], vals, genre_items,
        heldout=(k.indptr.astype(np.int64), split.items[k.indices]),
        history=(h.indptr.astype(np.int64), split.items[h.indices], ht.data.astype(np.int64)),
        meta={"dataset": dataset, "model": "EASE", "spec": spec.as_dict(), "users_dropped": split.n_users_dropped},
    )
    return {"users": int(len(split.users)), "items": int(len(split.items)), "users_dropped": split.n_users_dropped,
            "history_positives": int(h.nnz), "heldout_positives": int(k.nnz)}
