"""Synthetic EB-NeRD articles and NRMS-style prediction dumps, in the real on-disk layout.

The data has the shape that makes alignment matter:

* **category skew** — articles follow EB-NeRD-like category frequencies (news and sport dominate,
  ``auto`` and other sections exist outside the paper's nine codes);
* **popularity long tail** — article popularity is Zipf-distributed;
* **model bias** — the simulated model over-weights some categories (entertainment, music,
  finance) and under-weights others (crime, sport) relative to the users' true tastes, and leans on
  popularity, so its top-N category mix is visibly off the editorial mix, as in the NAILS paper.

Everything is drawn from explicit seeds and written in chunks (flat memory at any size).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from steps.align.data import PREDICTION_SCHEMA, PREDICTION_SCHEMA_NO_LABELS
from steps.configtools import refuse_failed_checks, refuse_unknown_keys
from steps.seeding import rng_for

#: Danish section names with EB-NeRD-like article shares (the nine paper categories, ``auto`` and
#: a few sections outside the paper's mapping).
CATEGORY_SHARES: dict[str, float] = {
    "nyheder": 0.24,
    "sport": 0.20,
    "underholdning": 0.14,
    "krimi": 0.10,
    "penge": 0.05,
    "musik": 0.04,
    "nationen": 0.04,
    "forbrug": 0.03,
    "incoming": 0.02,
    "auto": 0.08,
    "side9": 0.02,
    "vejret": 0.02,
    "opinionen": 0.02,
}
#: Category counts of the beyond-accuracy candidate list (scaled from the NAILS paper's list of
#: 155 non-``auto`` articles plus ``auto``).
CANDIDATE_COUNTS: dict[str, int] = {
    "forbrug": 3,
    "krimi": 24,
    "underholdning": 21,
    "incoming": 1,
    "musik": 9,
    "nyheder": 40,
    "nationen": 6,
    "penge": 9,
    "sport": 42,
    "auto": 95,
}
#: The simulated model's additive logit bias per category (its "internal label shift").
MODEL_BIAS: dict[str, float] = {
    "underholdning": 1.0,
    "musik": 0.6,
    "penge": 0.6,
    "nationen": 0.3,
    "forbrug": -0.6,
    "incoming": -1.0,
    "krimi": -0.6,
    "sport": -0.3,
    "nyheder": 0.0,
}
CATEGORY_IDS: dict[str, int] = {name: 100 + i for i, name in enumerate(CATEGORY_SHARES)}
_WORDS = (
    "regering minister politi borger kommune valg skat pris bolig bil fodbold landshold træner "
    "kamp sæson koncert album sanger film serie stjerne kongehus vejr storm sommer rente bank "
    "aktie job skole hospital læge patient sag retten dom drab tyveri brand trafik ulykke "
    "festival turne pension forbruger tilbud butik mad opskrift rejse ferie klima energi"
).split()


@dataclass(frozen=True)
class SyntheticDumpSpec:
    """Sizes and seed of a synthetic dump (all configurable from the flow configs)."""

    n_articles: int = 3000
    n_candidates: int = 250
    n_ba_rows: int = 20_000
    n_impressions: int = 50_000
    inview_min: int = 5
    inview_max: int = 50
    second_click_prob: float = 0.15
    with_clicks: bool = True
    seed: int = 7
    chunk_rows: int = 50_000

    def __post_init__(self) -> None:
        checks = [
            ("n_articles", self.n_articles >= 20),
            ("n_candidates", 10 <= self.n_candidates <= self.n_articles),
            ("n_ba_rows", self.n_ba_rows >= 0),
            ("n_impressions", self.n_impressions >= 0),
            ("inview_min", 2 <= self.inview_min <= self.inview_max),
            ("inview_max", self.inview_max <= min(self.n_articles, 200)),
            ("second_click_prob", 0.0 <= self.second_click_prob <= 1.0),
            ("chunk_rows", self.chunk_rows >= 1),
        ]
        refuse_failed_checks("synthetic", self, checks)

    @classmethod
    def from_dict(cls, d: dict | None) -> "SyntheticDumpSpec":
        d = dict(d or {})
        refuse_unknown_keys("synthetic", d, cls)
        return cls(**d)

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- articles
def _candidate_counts(n_candidates: int) -> dict[str, int]:
    total = sum(CANDIDATE_COUNTS.values())
    counts = {c: max(1, int(round(n * n_candidates / total))) for c, n in CANDIDATE_COUNTS.items()}
    # fix rounding on the largest category
    diff = n_candidates - sum(counts.values())
    counts["auto"] = max(1, counts["auto"] + diff)
    return counts


def synthetic_articles(n_articles: int, seed: int, n_candidates: int = 0) -> pl.DataFrame:
    """Articles in EB-NeRD's ``articles.parquet`` layout.

    The first ``n_candidates`` articles (in id order) have exactly the candidate-list category
    counts; the others follow :data:`CATEGORY_SHARES`. Popularity (``total_inviews``) is Zipf.
    """
    rng = rng_for(seed, "articles")
    names = list(CATEGORY_SHARES)
    shares = np.array([CATEGORY_SHARES[c] for c in names])
    cats = list(rng.choice(names, size=n_articles, p=shares / shares.sum()))
    if n_candidates:
        cand = [c for c, n in _candidate_counts(n_candidates).items() for _ in range(n)]
        cats[:n_candidates] = list(rng.permutation(cand))
    ids = 9_700_000 + np.arange(n_articles) * 7 + rng.integers(0, 7, n_articles)
    popularity_rank = rng.permutation(n_articles) + 1
    inviews = (2_000_000 / popularity_rank**1.1).astype(np.int32) + rng.integers(10, 100, n_articles).astype(np.int32)
    start = dt.datetime(2023, 5, 18)
    published = [start + dt.timedelta(minutes=int(m)) for m in np.sort(rng.integers(0, 60 * 24 * 21, n_articles))]
    words = np.array(_WORDS)
    titles = [" ".join(words[rng.integers(0, len(words), 6)]).capitalize() for _ in range(n_articles)]
    subtitles = [" ".join(words[rng.integers(0, len(words), 12)]).capitalize() + "." for _ in range(n_articles)]
    sentiment = rng.random(n_articles).astype(np.float32)
    return pl.DataFrame(
        {
            "article_id": pl.Series(ids, dtype=pl.Int32),
            "title": titles,
            "subtitle": subtitles,
            "last_modified_time": pl.Series(published, dtype=pl.Datetime("us")),
            "premium": pl.Series(rng.random(n_articles) < 0.2, dtype=pl.Boolean),
            "body": [s + " " + t for s, t in zip(subtitles, titles)],
            "published_time": pl.Series(published, dtype=pl.Datetime("us")),
            "image_ids": pl.Series([[int(i)] for i in rng.integers(1_000_000, 9_999_999, n_articles)], dtype=pl.List(pl.Int64)),
            "article_type": ["article_default"] * n_articles,
            "url": [f"https://ekstrabladet.dk/{c}/{i}" for c, i in zip(cats, ids)],
            "ner_clusters": pl.Series([[] for _ in range(n_articles)], dtype=pl.List(pl.String)),
            "entity_groups": pl.Series([[] for _ in range(n_articles)], dtype=pl.List(pl.String)),
            "topics": pl.Series([[c] for c in cats], dtype=pl.List(pl.String)),
            "category": pl.Series([CATEGORY_IDS[c] for c in cats], dtype=pl.Int16),
            "subcategory": pl.Series([[] for _ in range(n_articles)], dtype=pl.List(pl.Int16)),
            "category_str": cats,
            "total_inviews": pl.Series(inviews, dtype=pl.Int32),
            "total_pageviews": pl.Series((inviews * 0.1).astype(np.int32), dtype=pl.Int32),
            "total_read_time": pl.Series(inviews * 0.05, dtype=pl.Float32),
            "sentiment_score": pl.Series(0.5 + sentiment / 2, dtype=pl.Float32),
            "sentiment_label": list(rng.choice(["Negative", "Neutral", "Positive"], size=n_articles)),
        }
    )


# --------------------------------------------------------------------------- users and scores
@dataclass(frozen=True)
class _World:
    cat_names: list[str]
    article_ids: np.ndarray
    article_cat: np.ndarray  # index into cat_names
    log_pop: np.ndarray  # standardised log popularity
    bias: np.ndarray  # model bias per category


def _world(articles: pl.DataFrame) -> _World:
    names = list(CATEGORY_SHARES)
    index = {c: i for i, c in enumerate(names)}
    cat = np.array([index[c] for c in articles["category_str"].to_list()])
    lp = np.log(articles["total_inviews"].to_numpy().astype(np.float64))
    lp = (lp - lp.mean()) / lp.std()
    bias = np.array([MODEL_BIAS.get(c, 0.0) for c in names])
    return _World(names, articles["article_id"].to_numpy().astype(np.int64), cat, lp, bias)


def _tastes(rng: np.random.Generator, n_users: int, n_cats: int) -> np.ndarray:
    """Users' log preference over categories: skewed towards news/sport/crime on average."""
    base = np.array([CATEGORY_SHARES[c] for c in CATEGORY_SHARES])
    base = base / base.sum()
    pref = rng.dirichlet(base * 8.0, size=n_users) + 1e-3
    return np.log(pref / pref.sum(axis=1, keepdims=True))


def _model_logits(rng, world: _World, taste: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Simulated NRMS logits for (users × articles): an imperfect estimate of the user's taste, a
    lean on popularity, the model's category bias, and noise. ``cols`` is one shared article list
    (1-D) or one list per user (2-D)."""
    cols = np.broadcast_to(cols, (taste.shape[0], np.shape(cols)[-1]))
    cat = world.article_cat[cols]
    taste_estimate = taste + rng.normal(0.0, 0.5, size=taste.shape)
    return (
        0.6 * np.take_along_axis(taste_estimate, cat, axis=1)
        + 0.8 * world.log_pop[cols]
        + world.bias[cat]
        + rng.normal(0.0, 0.6, size=cols.shape)
    )


def _true_utility(rng, world: _World, taste: np.ndarray, cols: np.ndarray) -> np.ndarray:
    cat = world.article_cat[cols]
    return np.take_along_axis(taste, cat, axis=1) + 0.5 * world.log_pop[cols] + rng.normal(0.0, 0.3, size=cols.shape)


def _list_array(offsets: np.ndarray, values: np.ndarray, typ: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=typ))


def write_synthetic_dump(out_dir: str | os.PathLike, spec: SyntheticDumpSpec, progress: bool = False) -> dict[str, str]:
    """Write ``articles.parquet`` and ``predictions.parquet`` under ``out_dir``; return their paths.

    ``predictions.parquet`` first holds the BA block (``impression_id == 0``, every row scoring the
    same candidate list) and then the ordinary impressions with 1–2 clicks each.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    articles = synthetic_articles(spec.n_articles, spec.seed, spec.n_candidates)
    articles.write_parquet(out / "articles.parquet")
    world = _world(articles)
    schema = PREDICTION_SCHEMA if spec.with_clicks else PREDICTION_SCHEMA_NO_LABELS
    tmp = out / ".predictions.parquet.tmp"
    with pq.ParquetWriter(tmp, schema) as writer:
        ba_chunks = range(0, spec.n_ba_rows, spec.chunk_rows)
        for i, start in enumerate(tqdm(ba_chunks, desc="beyond-accuracy rows", unit="chunk", disable=not progress)):
            writer.write_table(_ba_chunk(spec, world, i, min(spec.chunk_rows, spec.n_ba_rows - start), schema))
        imp_chunks = range(0, spec.n_impressions, spec.chunk_rows)
        for i, start in enumerate(tqdm(imp_chunks, desc="impressions", unit="chunk", disable=not progress)):
            writer.write_table(_impression_chunk(spec, world, i, start, min(spec.chunk_rows, spec.n_impressions - start), schema))
    os.replace(tmp, out / "predictions.parquet")
    return {"predictions": str((out / "predictions.parquet").absolute()), "articles": str((out / "articles.parquet").absolute())}


def _ba_chunk(spec: SyntheticDumpSpec, world, i: int, n: int, schema: pa.Schema) -> pa.Table:
    """Chunk ``i`` of the BA block: ``n`` rows scoring the same candidate list."""
    cand_cols = np.arange(spec.n_candidates)
    cand_ids = world.article_ids[cand_cols].astype(np.int32)
    rng = rng_for(spec.seed, "ba", i)
    taste = _tastes(rng, n, len(world.cat_names))
    logits = _model_logits(rng, world, taste, cand_cols).astype(np.float32)
    offsets = np.arange(n + 1) * spec.n_candidates
    cols = {
        "impression_id": pa.array(np.zeros(n, np.uint32)),
        "article_ids_inview": _list_array(offsets, np.tile(cand_ids, n), pa.int32()),
        "scores": _list_array(offsets, logits.ravel(), pa.float32()),
    }
    if spec.with_clicks:
        cols["article_ids_clicked"] = _list_array(np.zeros(n + 1), np.zeros(0, np.int32), pa.int32())
    return pa.table(cols, schema=schema)


def _impression_chunk(spec: SyntheticDumpSpec, world, i: int, start: int, n: int, schema: pa.Schema) -> pa.Table:
    """Chunk ``i`` of the ordinary impressions (rows ``start`` … ``start + n``), with 1–2 clicks each."""
    window = min(spec.n_articles, max(4 * spec.inview_max, 200))
    rng = rng_for(spec.seed, "impressions", i)
    taste = _tastes(rng, n, len(world.cat_names))
    # In-view lists: recent articles (a sliding window over publication order), drawn by
    # popularity without replacement (Gumbel top-k).
    w0 = rng.integers(0, spec.n_articles - window + 1, size=n)
    pool = w0[:, None] + np.arange(window)[None, :]
    keys = world.log_pop[pool] * 1.5 + rng.gumbel(size=pool.shape)
    top = np.argsort(-keys, axis=1)[:, : spec.inview_max]
    cols_all = np.take_along_axis(pool, top, axis=1)
    lens = rng.integers(spec.inview_min, spec.inview_max + 1, size=n)
    valid = np.arange(spec.inview_max)[None, :] < lens[:, None]
    # shuffle within the valid prefix so that list order carries no signal
    perm = np.argsort(np.where(valid, rng.random(valid.shape), 2.0), axis=1)
    cols_all = np.take_along_axis(cols_all, perm, axis=1)
    util = _true_utility(rng, world, taste, cols_all) + rng.gumbel(size=cols_all.shape)
    util = np.where(valid, util, -np.inf)
    order = np.argsort(-util, axis=1)
    second = rng.random(n) < spec.second_click_prob
    n_clicks = np.where(second & (lens >= 3), 2, 1)
    logits = _model_logits(rng, world, taste, cols_all)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    ids_all = world.article_ids[cols_all].astype(np.int32)
    cols = {
        "impression_id": pa.array((start + np.arange(n) + 1).astype(np.uint32) * 7 + 1000),
        "article_ids_inview": _list_array(offsets, ids_all[valid], pa.int32()),
        "scores": _list_array(offsets, logits[valid].astype(np.float32), pa.float32()),
    }
    if spec.with_clicks:
        click_cols = order[:, :2]
        click_valid = np.arange(2)[None, :] < n_clicks[:, None]
        click_ids = np.take_along_axis(ids_all, click_cols, axis=1)[click_valid]
        cols["article_ids_clicked"] = _list_array(np.concatenate([[0], np.cumsum(n_clicks)]), click_ids, pa.int32())
    return pa.table(cols, schema=schema)
