"""ExplainFlow on MovieLens-100K, and GRU4Rec's top-M lists as a candidate bundle.

:func:`convert_ml100k` turns ML-100K (:mod:`steps.movielens`: the RecBole wheel's copy or
GroupLens' folder) into ReChorus' sequence folder, as :func:`steps.explain.data.convert_ml1m` does
for ML-1M: every rating is an interaction at its timestamp, leave-one-out by time (ties in time
keep the file's order), ``n_neg`` sampled negatives per dev/test row. ML-100K's ids are already
dense (users 1..943, items 1..1682), so they are kept: the item ids are the ones TailFlow's
ML-100K bundles use. ``item_meta.csv`` gets each movie's first genre as ``i_genre`` (as for
ML-1M); the bundle's item table keeps every genre of a movie.

:func:`write_gru4rec_candidates` writes the bundle of :mod:`steps.candidates` for the test rows
(one per user): GRU4Rec's top-M (``candidates_top_m``) over the whole catalogue after the user's
history (the last ``history_max`` events before the test row, as the model is evaluated), the
items the user consumed before (train + dev) and the padding item excluded, ties to the lower item
id; the held-out item is the test row's item; the history is every train + dev event with its
time. The item table: ML-100K's genres, else the data's ``item_meta`` feature (``|``-separated
values are several categories); items without one get the category ``unknown`` (counted in the
manifest). Data without item features gets no bundle.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import polars as pl

from steps.candidates import write_candidate_bundle
from steps.errors import ConfigError, InputError
from steps.explain.data import FEATURE, ITEM, SPLIT, TIME, USER, SeqData, build_instances, leave_one_out, write_rechorus
from steps.movielens import genre_table, load_ml100k
from steps.storage import FileRef, file_ref, localize

DATA_SOURCES = ("", "ml100k")
UNKNOWN = "unknown"


@dataclass(frozen=True)
class DataSpec:
    """``data:`` of an ExplainFlow config: ``source: ml100k`` (``path``: "" = the RecBole wheel's
    copy, or GroupLens' ml-100k/ folder); empty = the flow parameters / synthetic data decide."""

    source: str = ""
    path: str = ""

    @classmethod
    def from_dict(cls, raw: Any) -> "DataSpec":
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ConfigError(f"data: expected a mapping like {{source: ml100k}}, got {raw!r}")
        unknown = sorted(set(raw) - {"source", "path"})
        if unknown:
            raise ConfigError(f"data: unknown key(s) {unknown}; allowed keys: ['path', 'source']")
        source = raw.get("source", "") or ""
        if source not in DATA_SOURCES:
            raise ConfigError(f"data.source: {source!r} is not one of {[s for s in DATA_SOURCES if s]} (or empty)")
        path = raw.get("path", "") or ""
        if not isinstance(path, str):
            raise ConfigError(f"data.path: expected a folder path or 'recbole', got {path!r}")
        if path and not source:
            raise ConfigError(f"data.path: {path!r} is set but data.source is empty; set data.source: ml100k")
        return cls(source, path)

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- ML-100K → ReChorus
def convert_ml100k(source: str, out_dir: str | os.PathLike, n_neg: int, seed: int) -> SeqData:
    """ML-100K → ReChorus files in ``out_dir`` (plus ``item_genres.parquet``, every genre of each item)."""
    ml = load_ml100k(source or "recbole")
    events = ml.ratings.select(pl.col("user_id").alias(USER), pl.col("item_id").alias(ITEM), pl.col("timestamp").alias(TIME))
    features = ml.items.select(pl.col("item_id").alias(ITEM), pl.col("genres").list.first().alias(FEATURE))
    data = leave_one_out(events, n_neg, seed, features, "i_genre", source=ml.source)
    out = Path(out_dir)
    write_rechorus(out, data)
    genre_table(ml.items).write_parquet(out / "item_genres.parquet")
    return data


def resolve_ml100k(spec: DataSpec, data_dir: str, ml1m_ratings: str, work_dir: str | os.PathLike, n_neg: int, seed: int):
    """The ReChorus folder of ``data: {source: ml100k}`` (converted into ``work_dir``), or None
    when the config does not ask for ML-100K."""
    if spec.source != "ml100k":
        return None
    if data_dir or ml1m_ratings:
        raise InputError("the config's data.source is ml100k: --data-dir and --ml1m-ratings cannot be given as well")
    folder = Path(work_dir) / "ml100k"
    convert_ml100k(spec.path, folder, n_neg, seed)
    return folder


def candidate_items(data: SeqData, folder: str | os.PathLike | None = None) -> pl.DataFrame | None:
    """``item_id, categories`` for every catalogue item (1..n_items-1), or None without item features."""
    genres = Path(folder) / "item_genres.parquet" if folder else None
    if genres is not None and genres.exists():
        table = pl.read_parquet(genres)
    elif data.item_features is not None:
        table = data.item_features.filter(pl.col(FEATURE).is_not_null() & (pl.col(FEATURE).str.strip_chars() != "")).select(
            ITEM, pl.col(FEATURE).str.split("|").list.eval(pl.element().str.strip_chars()).list.unique(maintain_order=True)
            .alias("categories"))
    else:
        return None
    catalogue = pl.DataFrame({ITEM: np.arange(1, data.n_items, dtype=np.int64)})
    return catalogue.join(table.cast({ITEM: pl.Int64}), on=ITEM, how="left").with_columns(
        pl.col("categories").fill_null(pl.lit([UNKNOWN], dtype=pl.List(pl.String))))


def store_candidate_items(data: SeqData, folder: str | os.PathLike, source_folder: str | os.PathLike | None = None) -> FileRef | None:
    """Write :func:`candidate_items` to ``folder/candidate_items.parquet``; None without item features."""
    items = candidate_items(data, source_folder)
    if items is None:
        return None
    path = Path(folder) / "candidate_items.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    items.write_parquet(path)
    return file_ref(path, (items.height,))


# --------------------------------------------------------------------------- GRU4Rec's bundle
def gru4rec_topk(model, data: SeqData, history_max: int, m: int, batch_size: int = 1024):
    """``(user ids, held-out items, items (users × m), scores)`` of GRU4Rec's top-m after each test
    row's history, without the padding item and the user's earlier (train + dev) items; equal
    scores → lower id."""
    import torch  # not at import time: the config parser imports this module

    inst = build_instances(data, "test", history_max)
    if len(inst) == 0:
        raise InputError(f"{data.source}: no test rows; no candidates to write")
    before = data.interactions.filter(pl.col(SPLIT) != "test")
    keys = np.unique(before[USER].to_numpy().astype(np.int64) * data.n_items + before[ITEM].to_numpy().astype(np.int64))
    model.eval()
    items, scores = [], []
    all_items = np.arange(data.n_items, dtype=np.int64)
    for s in range(0, len(inst), batch_size):
        r = slice(s, s + batch_size)
        with torch.no_grad():
            sc = model.score_all(torch.as_tensor(inst.histories[r]), torch.as_tensor(inst.lengths[r]))[:, : data.n_items]
        sc = sc.double().numpy()
        seen = np.isin(inst.users[r, None] * data.n_items + all_items[None, :], keys)
        seen[:, 0] = True
        sc = np.where(seen, -np.inf, sc)
        order = np.argsort(-sc, axis=1, kind="stable")[:, :m]
        items.append(order)
        scores.append(np.take_along_axis(sc, order, axis=1))
    items, scores = np.concatenate(items), np.concatenate(scores)
    if not np.isfinite(scores).all():
        r = int(np.flatnonzero(~np.isfinite(scores).all(axis=1))[0])
        raise InputError(f"{data.source}: GRU4Rec's scores for test user {inst.users[r]} are not finite (or the user "
                         f"leaves fewer than {m} unseen items)")
    return inst.users, inst.targets, items, scores


def write_gru4rec_candidates(model, data: SeqData, history_max: int, top_m: int, items_ref: FileRef | None,
                             out_dir: str | os.PathLike, batch_size: int = 1024) -> Path | None:
    """Write GRU4Rec's bundle for the test rows (see the module docstring); the path of its
    ``manifest.json``, or None without an item table or with ``top_m`` 0."""
    if top_m <= 0 or items_ref is None:
        return None
    ref = localize(items_ref)
    ref.verify()
    items = pl.read_parquet(ref.path)
    before = data.interactions.filter(pl.col(SPLIT) != "test")
    consumed = before.group_by(USER).agg(pl.col(ITEM).n_unique())[ITEM].max()
    m = int(min(top_m, data.n_items - 1 - int(consumed or 0)))
    users, targets, cand, scores = gru4rec_topk(model, data, history_max, m, batch_size)
    hist = before.filter(pl.col(USER).is_in(pl.Series(users).implode()))
    # history rows in the candidates' user order; each user's events in sequence order
    hist = hist.join(pl.DataFrame({USER: users, "_r": np.arange(len(users))}), on=USER, maintain_order="left").sort(
        "_r", maintain_order=True)
    counts = np.bincount(hist["_r"].to_numpy(), minlength=len(users))
    h_off = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    meta = {"dataset": data.source, "model": "gru4rec", "flow": "ExplainFlow", "split": "test", "candidates_top_m": int(top_m),
            "history_max": int(history_max), "excludes_history": True,
            "items_in_category_unknown": int(items["categories"].list.contains(UNKNOWN).sum())}
    return write_candidate_bundle(
        out_dir, users, cand, scores, items, heldout=(np.arange(len(users) + 1), targets),
        history=(h_off, hist[ITEM].to_numpy(), hist[TIME].to_numpy()), meta=meta,
    )
