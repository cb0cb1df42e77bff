"""Synthetic EB-NeRD: articles with text and document vectors, users with histories, and
impressions with timestamps and clicks — the same files, column names and dtypes as the real data.

Built on :func:`steps.align.synthetic.synthetic_articles` (ids, Danish sections with EB-NeRD-like
shares, Zipf popularity) and made learnable:

* every article has a **category** and a **topic** (a topic belongs to one category); its title,
  subtitle and body mix the topic's own words with filler words, and its document vector is a
  noisy projection of the topic's latent vector;
* every user has a latent **category taste** and **topic preference**; the history is a draw of
  clicks from that preference (weighted by popularity) over the 21 days before the split;
* an impression shows recently published articles (drawn by popularity) **in random order**: the
  in-view order carries no information about the click (no position effect is modelled — EB-NeRD
  does not document ``article_ids_inview`` as the order on screen), so order-based tie rules are
  neutral on this data; the click follows a choice model: utility = taste_strength · log p(topic |
  user) + popularity_strength · log-popularity − recency_strength · age in days + Gumbel noise (the
  argmax is clicked, sometimes the runner-up too);
* titles and subtitles have ``title_words_min``..``title_words`` words each (plus the category
  name in the title), so with the configs' title sizes most token rows end in padding and NRMS's
  title masking is exercised.

A model that reads the history's topics and the candidate's text or vector can learn this (and
its top-N category mix follows the users' tastes, not the editorial mix).
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

from steps.align.synthetic import CATEGORY_SHARES, synthetic_articles
from steps.configtools import refuse_failed_checks, refuse_unknown_keys
from steps.errors import ConfigError
from steps.newsrec import schema as S
from steps.seeding import rng_for

BUNDLE = "ebnerd_synthetic"
START = dt.datetime(2023, 4, 27, 7, 0, 0)
HISTORY_DAYS = 21
SPLIT_DAYS = 7
#: Behaviors period of each split: (first day offset from START, after the 21 history days).
SPLIT_START_DAY = {"train": HISTORY_DAYS, "validation": HISTORY_DAYS + SPLIT_DAYS, "test": HISTORY_DAYS + 2 * SPLIT_DAYS}
_SYLLABLES = "ka ri mo le sa tu ve no bi da fe gu hi jo lu ma ne pi ro si ta vu be de ge".split()
LATENT_DIM = 16


@dataclass(frozen=True)
class SyntheticEbnerdSpec:
    """Sizes and behaviour of the synthetic EB-NeRD bundle (``synthetic:`` in the newsrec configs)."""

    n_articles: int = 1200
    n_topics: int = 24
    n_users: int = 1500
    n_train_impressions: int = 12_000
    n_validation_impressions: int = 3_000
    n_test_impressions: int = 3_000
    n_ba_rows: int = 500
    n_candidates: int = 80
    history_min: int = 5
    history_max: int = 40
    inview_min: int = 5
    inview_max: int = 20
    title_words: int = 10
    title_words_min: int = 3
    words_per_topic: int = 12
    topic_word_share: float = 0.5
    vector_dim: int = 32
    topic_concentration: float = 0.3
    taste_strength: float = 2.0
    popularity_strength: float = 0.5
    recency_strength: float = 0.3
    second_click_prob: float = 0.1
    test_labels: bool = True
    seed: int = 7

    def __post_init__(self) -> None:
        checks = [
            ("n_articles", self.n_articles >= 100),
            ("n_topics", 2 <= self.n_topics <= self.n_articles // 10),
            ("n_users", self.n_users >= 10),
            ("n_train_impressions", self.n_train_impressions >= 10),
            ("n_validation_impressions", self.n_validation_impressions >= 10),
            ("n_test_impressions", self.n_test_impressions >= 0),
            ("n_ba_rows", self.n_ba_rows >= 0),
            ("n_candidates", 10 <= self.n_candidates <= self.n_articles // 2),
            ("history_min", 1 <= self.history_min <= self.history_max),
            ("inview_min", 2 <= self.inview_min <= self.inview_max),
            ("inview_max", self.inview_max <= self.n_articles // 10),
            ("title_words", self.title_words >= 2),
            ("title_words_min", 1 <= self.title_words_min <= self.title_words),
            ("words_per_topic", self.words_per_topic >= 1),
            ("topic_word_share", 0.0 <= self.topic_word_share <= 1.0),
            ("vector_dim", self.vector_dim >= 2),
            ("topic_concentration", self.topic_concentration > 0),
            ("second_click_prob", 0.0 <= self.second_click_prob <= 1.0),
            ("seed", self.seed >= 0),
        ]
        refuse_failed_checks("synthetic", self, checks)

    @classmethod
    def from_dict(cls, d: dict | None) -> "SyntheticEbnerdSpec":
        d = dict(d or {})
        refuse_unknown_keys("synthetic", d, cls)
        for key, value in d.items():
            default = cls.__dataclass_fields__[key].default
            ok = isinstance(value, bool) if isinstance(default, bool) else (
                isinstance(value, (int, float)) and not isinstance(value, bool) and (isinstance(default, float) or isinstance(value, int))
            )
            if not ok:
                raise ConfigError(f"synthetic.{key}: expected a {type(default).__name__}, got {value!r}")
        return cls(**d)

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- the world
@dataclass(frozen=True)
class _World:
    articles: pl.DataFrame  # EB-NeRD articles layout
    article_ids: np.ndarray  # (N,) int64, in publication order
    published: np.ndarray  # (N,) datetime64[us], ascending
    topic: np.ndarray  # (N,) topic of each article
    log_pop: np.ndarray  # (N,) standardised log popularity
    vectors: np.ndarray  # (N, D) float32 document vectors
    user_ids: np.ndarray  # (U,) int64
    log_pref: np.ndarray  # (U, T) log p(topic | user)


def _pseudo_words(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < n:
        w = "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4))))
        if w not in taken:
            taken.add(w)
            words.append(w)
    return words


def _texts(rng: np.random.Generator, topic: np.ndarray, cat_names: list[str], cats: np.ndarray, topic_words: np.ndarray,
           filler: np.ndarray, min_words: int, max_words: int, share: float, with_category: bool) -> list[str]:
    """One text per article of ``min_words``..``max_words`` words: each a topic word with
    probability ``share``, a filler word otherwise (the category name first, ``with_category``)."""
    n = len(topic)
    lengths = rng.integers(min_words, max_words + 1, n)
    use_topic = rng.random((n, max_words)) < share
    tw = topic_words[topic[:, None], rng.integers(0, topic_words.shape[1], (n, max_words))]
    fw = filler[rng.integers(0, len(filler), (n, max_words))]
    words = np.where(use_topic, tw, fw)
    keep = np.arange(max_words)[None, :] < lengths[:, None]
    if with_category:
        words = np.concatenate([np.asarray(cat_names, dtype=object)[cats][:, None], words], axis=1)
        keep = np.concatenate([np.ones((n, 1), bool), keep], axis=1)
    rows = np.broadcast_to(np.arange(n)[:, None], words.shape)
    df = pl.DataFrame({"row": rows[keep], "w": words[keep].astype(str)})
    return df.group_by("row", maintain_order=True).agg(pl.col("w").str.join(" "))["w"].str.to_titlecase().to_list()


def _world(spec: SyntheticEbnerdSpec) -> _World:
    rng = rng_for(spec.seed, "newsrec", "world")
    base = synthetic_articles(spec.n_articles, spec.seed)
    cat_names = list(CATEGORY_SHARES)
    shares = np.array([CATEGORY_SHARES[c] for c in cat_names])
    cats = base["category_str"].replace_strict(cat_names, list(range(len(cat_names))), return_dtype=pl.Int64).to_numpy()
    # topics: one per category first, the rest by category share
    n_topics = max(spec.n_topics, len(cat_names))
    topic_cat = np.concatenate([np.arange(len(cat_names)), rng.choice(len(cat_names), n_topics - len(cat_names), p=shares / shares.sum())])
    per_cat = [np.flatnonzero(topic_cat == c) for c in range(len(cat_names))]
    width = max(len(t) for t in per_cat)
    table = np.array([np.resize(t, width) for t in per_cat])  # (C, width): topics of each category, repeated
    counts = np.array([len(t) for t in per_cat])
    topic = table[cats, (rng.random(len(cats)) * counts[cats]).astype(np.int64)]
    # publication times, ascending with the article id
    total = (SPLIT_START_DAY["test"] + SPLIT_DAYS) * 86_400
    seconds = np.sort(rng.uniform(0, total, len(cats)))
    published = np.datetime64(START, "us") + (seconds * 1e6).astype("timedelta64[us]")
    # texts
    taken: set[str] = set(cat_names)
    topic_words = np.array([_pseudo_words(rng, spec.words_per_topic, taken) for _ in range(n_topics)], dtype=object)
    filler = np.array(_pseudo_words(rng, 200, taken), dtype=object)
    titles = _texts(rng, topic, cat_names, cats, topic_words, filler, spec.title_words_min, spec.title_words,
                    spec.topic_word_share, True)
    subtitles = _texts(rng, topic, cat_names, cats, topic_words, filler, spec.title_words_min, spec.title_words,
                       spec.topic_word_share, False)
    pub_series = pl.Series(published, dtype=pl.Datetime("us"))
    articles = base.with_columns(
        pl.Series("title", titles),
        pl.Series("subtitle", subtitles),
        pl.concat_str([pl.Series(subtitles), pl.Series(titles)], separator=" ").alias("body"),
        pub_series.alias("published_time"),
        pub_series.alias("last_modified_time"),
        pl.Series("topics", [[f"emne{t}"] for t in topic], dtype=pl.List(pl.String)),
    )
    # document vectors: a noisy projection of the topic's latent vector
    topic_latent = rng.normal(size=(n_topics, LATENT_DIM))
    latent = topic_latent[topic] + 0.5 * rng.normal(size=(len(cats), LATENT_DIM))
    proj = rng.normal(scale=1 / np.sqrt(LATENT_DIM), size=(LATENT_DIM, spec.vector_dim))
    vectors = (latent @ proj + 0.05 * rng.normal(size=(len(cats), spec.vector_dim))).astype(np.float32)
    # users: category taste x topic preference
    cat_taste = rng.dirichlet(shares / shares.sum() * 8.0, size=spec.n_users) + 1e-3
    topic_pref = rng.dirichlet(np.full(n_topics, spec.topic_concentration), size=spec.n_users) + 1e-4
    pref = cat_taste[:, topic_cat] * topic_pref
    pref /= pref.sum(axis=1, keepdims=True)
    user_ids = np.sort(rng.choice(np.arange(10_000, 2_500_000), spec.n_users, replace=False)).astype(np.int64)
    lp = np.log(base["total_inviews"].to_numpy().astype(np.float64))
    return _World(articles, base["article_id"].to_numpy().astype(np.int64), published, topic, (lp - lp.mean()) / lp.std(),
                  vectors, user_ids, np.log(pref))


# --------------------------------------------------------------------------- writing helpers
def _list(offsets: np.ndarray, values, typ: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(np.asarray(offsets, dtype=np.int32)), pa.array(values, type=typ))


def _write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _us(times: np.ndarray) -> np.ndarray:
    return times.astype("datetime64[us]")


# --------------------------------------------------------------------------- histories
def _history(world: _World, spec: SyntheticEbnerdSpec, split: str) -> pa.Table:
    rng = rng_for(spec.seed, "newsrec", "history", split)
    end = np.datetime64(START, "us") + np.timedelta64(SPLIT_START_DAY[split], "D")
    begin = end - np.timedelta64(HISTORY_DAYS, "D")
    window = np.flatnonzero((world.published >= begin) & (world.published < end))
    topic = world.topic[window]
    order = np.argsort(topic, kind="stable")
    window, topic = window[order], topic[order]
    n_topics = world.log_pref.shape[1]
    start_of = np.searchsorted(topic, np.arange(n_topics), side="left")
    end_of = np.searchsorted(topic, np.arange(n_topics), side="right")
    present = end_of > start_of
    pop = np.exp(world.log_pop[window])
    cum = np.concatenate([[0.0], np.cumsum(pop)])
    n_users = len(world.user_ids)
    lens = rng.integers(spec.history_min, spec.history_max + 1, n_users)
    rows = np.repeat(np.arange(n_users), lens)
    pref = np.exp(world.log_pref) * present[None, :]
    cdf = np.cumsum(pref / pref.sum(axis=1, keepdims=True), axis=1)
    draw_topic = np.minimum((cdf[rows] < rng.random(len(rows))[:, None]).sum(axis=1), n_topics - 1)
    lo, hi = cum[start_of[draw_topic]], cum[end_of[draw_topic]]
    pick = np.searchsorted(cum, lo + rng.random(len(rows)) * (hi - lo), side="right") - 1
    pick = np.clip(pick, start_of[draw_topic], end_of[draw_topic] - 1)
    art = window[pick]
    # a click happens after publication and before the split starts
    pub = world.published[art]
    times = pub + ((end - pub).astype(np.int64) * rng.random(len(rows))).astype("timedelta64[us]")
    o = np.lexsort((times, rows))
    art, times = art[o], times[o]
    offsets = np.concatenate([[0], np.cumsum(lens)])
    scroll = np.round(rng.uniform(10, 100, len(rows))).astype(np.float32)
    read = np.round(rng.gamma(2.0, 15.0, len(rows))).astype(np.float32)
    return pa.table(
        {
            S.USER_ID: pa.array(world.user_ids.astype(np.uint32)),
            S.HISTORY_TIMES: _list(offsets, _us(times), S.TS),
            "scroll_percentage_fixed": _list(offsets, scroll, pa.float32()),
            S.HISTORY_ARTICLES: _list(offsets, world.article_ids[art].astype(np.int32), pa.int32()),
            "read_time_fixed": _list(offsets, read, pa.float32()),
        },
        schema=S.HISTORY_SCHEMA,
    )


# --------------------------------------------------------------------------- behaviors
def _gumbel_top(rng, keys: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(keys + rng.gumbel(size=keys.shape)), axis=1)[:, :k]


def _behaviors(world: _World, spec: SyntheticEbnerdSpec, split: str, n: int, first_id: int) -> pa.Table:
    rng = rng_for(spec.seed, "newsrec", "behaviors", split)
    begin = np.datetime64(START, "us") + np.timedelta64(SPLIT_START_DAY[split], "D")
    seconds = np.sort(rng.uniform(0, SPLIT_DAYS * 86_400, n))
    times = begin + (seconds * 1e6).astype("timedelta64[us]")
    user = rng.integers(0, len(world.user_ids), n)
    # in-view: recently published articles, drawn by popularity without replacement
    pool_size = max(3 * spec.inview_max, 40)
    hi = np.maximum(np.searchsorted(world.published, times, side="right"), pool_size)
    pool = hi[:, None] - pool_size + np.arange(pool_size)[None, :]
    chosen = np.take_along_axis(pool, _gumbel_top(rng, 1.5 * world.log_pop[pool], spec.inview_max), axis=1)
    lens = rng.integers(spec.inview_min, spec.inview_max + 1, n)
    valid = np.arange(spec.inview_max)[None, :] < lens[:, None]
    # shown in random order: the popularity draw above must not leak into the in-view order
    shuffle = np.argsort(np.where(valid, rng.random(valid.shape), 2.0), axis=1)
    chosen = np.take_along_axis(chosen, shuffle, axis=1)
    age_days = (times[:, None] - world.published[chosen]).astype(np.float64) / 86_400e6
    utility = (
        spec.taste_strength * np.take_along_axis(world.log_pref[user], world.topic[chosen], axis=1)
        + spec.popularity_strength * world.log_pop[chosen]
        - spec.recency_strength * np.maximum(age_days, 0.0)
        + rng.gumbel(size=chosen.shape)
    )
    ranked = np.argsort(-np.where(valid, utility, -np.inf), axis=1)
    n_clicks = np.where((rng.random(n) < spec.second_click_prob) & (lens >= 3), 2, 1)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    ids = world.article_ids[chosen].astype(np.int32)
    click_valid = np.arange(2)[None, :] < n_clicks[:, None]
    clicks = np.take_along_axis(ids, ranked[:, :2], axis=1)[click_valid]
    click_offsets = np.concatenate([[0], np.cumsum(n_clicks)])
    if split == "test" and not spec.test_labels:
        clicks = None
    return _behaviors_table(rng, world, first_id + np.arange(n), times, user, offsets, ids[valid], click_offsets, clicks, split)


def _behaviors_table(rng, world: _World, imp_ids, times, user, offsets, inview, click_offsets, clicks, split: str,
                     is_ba: np.ndarray | None = None) -> pa.Table:
    n = len(imp_ids)
    opened = rng.random(n) < 0.3  # impressions on an article page carry its article_id
    cols = {
        S.IMPRESSION_ID: pa.array(np.asarray(imp_ids).astype(np.uint32)),
        S.ARTICLE_ID: pa.array(np.where(opened, world.article_ids[rng.integers(0, len(world.article_ids), n)], 0).astype(np.int32),
                               mask=~opened),
        S.IMPRESSION_TIME: pa.array(_us(times), S.TS),
        "read_time": pa.array(np.round(rng.gamma(2.0, 15.0, n)).astype(np.float32)),
        "scroll_percentage": pa.array(np.round(rng.uniform(10, 100, n)).astype(np.float32), mask=~opened),
        "device_type": pa.array(rng.integers(1, 4, n).astype(np.int8)),
        S.INVIEW: _list(offsets, inview, pa.int32()),
        S.USER_ID: pa.array(world.user_ids[user].astype(np.uint32)),
        "is_sso_user": pa.array(rng.random(n) < 0.1),
        "gender": pa.array(np.zeros(n, np.int8), mask=np.ones(n, bool)),
        "postcode": pa.array(np.zeros(n, np.int8), mask=np.ones(n, bool)),
        "age": pa.array(np.zeros(n, np.int8), mask=np.ones(n, bool)),
        "is_subscriber": pa.array(rng.random(n) < 0.15),
        "session_id": pa.array((np.asarray(imp_ids) // 3 + 1).astype(np.uint32)),
    }
    if split != "test":
        cols[S.CLICKED] = _list(click_offsets, clicks, pa.int32())
        cols["next_read_time"] = pa.array(np.round(rng.gamma(2.0, 15.0, n)).astype(np.float32))
        cols["next_scroll_percentage"] = pa.array(np.round(rng.uniform(10, 100, n)).astype(np.float32))
        return pa.table(cols, schema=S.BEHAVIORS_SCHEMA)
    cols[S.IS_BEYOND_ACCURACY] = pa.array(np.zeros(n, bool) if is_ba is None else is_ba)
    schema = S.TEST_BEHAVIORS_SCHEMA
    if clicks is not None:
        cols[S.CLICKED] = _list(click_offsets, clicks, pa.int32())
        schema = schema.append(pa.field(S.CLICKED, pa.list_(pa.int32())))
    return pa.table(cols, schema=schema)


def _test_behaviors(world: _World, spec: SyntheticEbnerdSpec, first_id: int) -> pa.Table:
    """Ordinary test impressions (clicks only with ``test_labels``), then the beyond-accuracy block:
    ``impression_id == 0``, every row ranking one shared candidate list."""
    ordinary = _behaviors(world, spec, "test", spec.n_test_impressions, first_id) if spec.n_test_impressions else None
    rng = rng_for(spec.seed, "newsrec", "beyond-accuracy")
    end = np.datetime64(START, "us") + np.timedelta64(SPLIT_START_DAY["test"] + SPLIT_DAYS, "D")
    recent = np.flatnonzero(world.published < end)[-3 * spec.n_candidates :]
    cand = np.sort(rng.choice(recent, spec.n_candidates, replace=False))
    k, n_ba = len(cand), spec.n_ba_rows
    times = np.datetime64(START, "us") + np.timedelta64(SPLIT_START_DAY["test"], "D") + (
        np.sort(rng.uniform(0, SPLIT_DAYS * 86_400, n_ba)) * 1e6).astype("timedelta64[us]")
    # one row per user, as in EB-NeRD's test set (users cycle only when n_ba_rows > n_users)
    ba_user = np.resize(rng.permutation(len(world.user_ids)), n_ba)
    ba_ids = np.tile(world.article_ids[cand].astype(np.int32), n_ba)
    ba = _behaviors_table(rng, world, np.zeros(n_ba, np.int64), times, ba_user, np.arange(n_ba + 1) * k, ba_ids,
                          np.zeros(n_ba + 1, np.int64), np.zeros(0, np.int32) if spec.test_labels else None, "test",
                          is_ba=np.ones(n_ba, bool))
    if ordinary is None:
        return ba
    return pa.concat_tables([ordinary, ba])


# --------------------------------------------------------------------------- entry point
def write_synthetic_ebnerd(root: str | os.PathLike, spec: SyntheticEbnerdSpec) -> dict[str, str]:
    """Write the bundle under ``root`` in the real layout; returns the paths written:

    ``<root>/ebnerd_synthetic/{articles.parquet, train/, validation/}``,
    ``<root>/ebnerd_testset/{articles.parquet, test/}`` (each split: ``behaviors.parquet``,
    ``history.parquet``) and ``<root>/artifacts/Ekstra_Bladet_contrastive_vector/contrastive_vector.parquet``.
    """
    root = Path(root)
    world = _world(spec)
    paths: dict[str, str] = {}
    for bundle in (BUNDLE, S.TEST_BUNDLE):
        p = root / bundle / "articles.parquet"
        _write(world.articles.to_arrow(), p)
        paths[f"{bundle}/articles"] = str(p)
    vec_path = root / S.DEFAULT_DOCUMENT_VECTORS
    vec_offsets = np.arange(len(world.article_ids) + 1) * spec.vector_dim
    _write(pa.table({S.ARTICLE_ID: pa.array(world.article_ids.astype(np.int32)),
                     "contrastive_vector": _list(vec_offsets, world.vectors.ravel(), pa.float32())}), vec_path)
    paths["document_vectors"] = str(vec_path)
    sizes = {"train": spec.n_train_impressions, "validation": spec.n_validation_impressions}
    first = 100_000
    for split in ("train", "validation", "test"):
        d = S.split_dir(root, BUNDLE, split)
        _write(_history(world, spec, split), d / "history.parquet")
        if split == "test":
            table = _test_behaviors(world, spec, first)
        else:
            table = _behaviors(world, spec, split, sizes[split], first)
            first += sizes[split]
        _write(table, d / "behaviors.parquet")
        paths[f"{split}/behaviors"] = str(d / "behaviors.parquet")
        paths[f"{split}/history"] = str(d / "history.parquet")
    return paths
