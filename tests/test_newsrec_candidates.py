"""NewsRecFlow's candidate bundle of the beyond-accuracy block: users, the shared list sorted by the
model's logits, the users' EB-NeRD click histories (seconds) and the paper's category codes."""

import datetime as dt
import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steps.align.calibration import history_targets
from steps.align.categories import DANISH_TO_CODE
from steps.candidates import read_candidate_bundle
from steps.errors import InputError
from steps.newsrec import schema as S
from steps.newsrec.candidates import news_candidates, write_news_candidates
from steps.newsrec.ebnerd import SplitData, load_split
from steps.newsrec.prepare import prepare_news_data
from steps.newsrec.config import NewsRecConfig
from steps.newsrec.synthetic import BUNDLE, SyntheticEbnerdSpec, write_synthetic_ebnerd

T0 = dt.datetime(2023, 6, 1, 8, 0, 0)
EPOCH0 = int(T0.replace(tzinfo=dt.timezone.utc).timestamp())
# article -> category_str: 10 sport, 11 krimi, 12 sport, 13 auto (no paper code), 14 "" (no category)
ARTICLES = {10: "sport", 11: "krimi", 12: "sport", 13: "auto", 14: ""}


def _articles(path, articles=ARTICLES):
    pq.write_table(pa.table({S.ARTICLE_ID: pa.array(list(articles), pa.int32()),
                             S.CATEGORY_STR: pa.array(list(articles.values()))}), path)
    return path


def _history(path, rows):
    """rows: user -> [(article, seconds after T0)]."""
    offs = np.concatenate([[0], np.cumsum([len(v) for v in rows.values()])])
    arts = [a for v in rows.values() for a, _ in v]
    times = [np.datetime64(T0, "us") + np.timedelta64(s * 1_000_000, "us") for v in rows.values() for _, s in v]
    pq.write_table(pa.table({
        S.USER_ID: pa.array(list(rows), pa.uint32()),
        S.HISTORY_TIMES: pa.ListArray.from_arrays(pa.array(offs, pa.int32()), pa.array(np.array(times, "datetime64[us]"), S.TS)),
        S.HISTORY_ARTICLES: pa.ListArray.from_arrays(pa.array(offs, pa.int32()), pa.array(arts, pa.int32())),
    }), path)
    return path


def _split(lists, users, imp):
    """A loaded test split: in-view ``lists`` per row, ``users`` as rows of the history matrix."""
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
    ids = np.concatenate(lists).astype(np.int32)
    return SplitData(np.asarray(imp, np.uint32), np.asarray(users, np.int32), offsets, ids, ids + 2,
                     np.zeros(len(ids), bool), False)


# history-matrix rows 0, 1, 2 are users 7, 8, 9
USER_IDS = np.array([7, 8, 9])
LISTS = [[10, 13], [10, 11, 12], [12, 10, 11], [11, 12, 10]]
USERS = [2, 0, 1, 0]  # row 0 ordinary (user 9); BA rows: user 7, user 8, user 7 again
IMP = [5, 0, 0, 0]
SCORES = np.array([0.1, 0.2,  1.0, 3.0, 2.0,  0.5, 0.4, 0.3,  9.0, 9.0, 9.0], np.float32)
HIST = {7: [(10, 0), (11, 60), (12, 120), (11, 7200)], 8: [(13, 30)], 9: [(10, 5)], 99: [(11, 1)]}


def test_the_ba_block_becomes_a_bundle_with_histories_in_seconds(tmp_path):
    split = _split(LISTS, USERS, IMP)
    manifest = write_news_candidates(tmp_path / "b", split, USER_IDS, SCORES, _articles(tmp_path / "a.parquet"),
                                     _history(tmp_path / "h.parquet", HIST), "nrms")
    cs = read_candidate_bundle(manifest.parent)
    meta = json.loads(manifest.read_text())
    assert meta["ba_rows"] == 3 and meta["repeated_user_rows"] == 1 and meta["users"] == 2 and meta["model"] == "nrms"
    assert cs.user_ids.tolist() == [7, 8] and cs.heldout_offsets is None
    # each row's shared list sorted by its logits, best first
    assert cs.item_id_of(cs.candidate_rows).tolist() == [[11, 12, 10], [12, 10, 11]]
    np.testing.assert_allclose(cs.scores, [[3.0, 2.0, 1.0], [0.5, 0.4, 0.3]])
    # items: the candidates and history articles, categories as the paper's codes (auto stays auto)
    assert cs.item_ids_sorted.tolist() == [10, 11, 12, 13] and cs.genres == ("CRM", "SPT", "auto")
    assert cs.item_id_of(cs.history_rows).tolist() == [10, 11, 12, 11, 13]
    assert cs.history_offsets.tolist() == [0, 4, 5]
    assert cs.history_times.tolist() == [EPOCH0, EPOCH0 + 60, EPOCH0 + 120, EPOCH0 + 7200, EPOCH0 + 30]
    p, has = history_targets(cs.history_offsets, cs.history_rows, cs.item_genre, cs.history_times)
    assert has.all()
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])  # user 7: 2 krimi + 2 sport; user 8: auto
    # recency-weighted (half-life 1/24 day = 1 h): ages 7200, 7140, 7080, 0 s
    w = np.exp2(-np.array([7200, 7140, 7080, 0]) / 3600.0)
    pw, _ = history_targets(cs.history_offsets, cs.history_rows, cs.item_genre, cs.history_times, 1 / 24)
    np.testing.assert_allclose(pw[0], [(w[1] + w[3]) / w.sum(), (w[0] + w[2]) / w.sum(), 0.0])


def test_articles_without_a_category_are_refused_or_excluded(tmp_path):
    arts = _articles(tmp_path / "a.parquet")
    hist = _history(tmp_path / "h.parquet", {**HIST, 8: [(14, 30), (10, 40)]})
    split = _split(LISTS, USERS, IMP)
    with pytest.raises(InputError, match=r"a\.parquet: column 'category_str': article_id 14, referenced by .*h\.parquet "
                                         r"\(user_id 8, click 0\), has no category"):
        write_news_candidates(tmp_path / "b", split, USER_IDS, SCORES, arts, hist, "nrms")
    assert not (tmp_path / "b").exists()
    m = write_news_candidates(tmp_path / "b", split, USER_IDS, SCORES, arts, hist, "nrms", missing_category="exclude")
    cs, meta = read_candidate_bundle(m.parent), json.loads(m.read_text())
    assert meta["history_clicks_without_category"] == 1 and meta["candidates_without_category"] == 0
    assert cs.item_id_of(cs.history_rows).tolist() == [10, 11, 12, 11, 10]
    # a candidate without a category (article 15 is not in the articles file) leaves every row
    lists = [[10, 13], [10, 15, 12], [12, 10, 15]]
    split = _split(lists, [2, 0, 1], [5, 0, 0])
    sc = np.array([0.1, 0.2, 1.0, 3.0, 2.0, 0.5, 0.4, 0.3], np.float32)
    with pytest.raises(InputError, match=r"article_id 15, referenced by the beyond-accuracy candidate list"):
        write_news_candidates(tmp_path / "c", split, USER_IDS, sc, arts, _history(tmp_path / "h2.parquet", HIST), "nrms")
    m = write_news_candidates(tmp_path / "c", split, USER_IDS, sc, arts, tmp_path / "h2.parquet", "nrms", "exclude")
    cs = read_candidate_bundle(m.parent)
    assert cs.item_id_of(cs.candidate_rows).tolist() == [[12, 10], [12, 10]]
    assert json.loads(m.read_text())["candidates_without_category"] == 1


def test_bad_ba_blocks_and_histories_are_refused(tmp_path):
    arts, hist = _articles(tmp_path / "a.parquet"), _history(tmp_path / "h.parquet", HIST)
    split = _split([[10, 11, 12], [10, 11, 13]], [0, 1], [0, 0])
    with pytest.raises(InputError, match=r"b\.parquet: row 1 \(impression_id 0\): column 'article_ids_inview' holds article 13"):
        write_news_candidates(tmp_path / "x", split, USER_IDS, np.zeros(6, np.float32), arts, hist, "m", behaviors_path="b.parquet")
    split = _split([[10, 11, 12], [10, 11]], [0, 1], [0, 0])
    with pytest.raises(InputError, match=r"row 1 \(impression_id 0\): column 'article_ids_inview' holds 2 articles"):
        write_news_candidates(tmp_path / "x", split, USER_IDS, np.zeros(5, np.float32), arts, hist, "m")
    split = _split([[10, 11, 12], [10, 11, 12]], [0, 2], [0, 0])
    with pytest.raises(InputError, match=r"h\.parquet: column 'user_id' has no row for user_id 9"):
        write_news_candidates(tmp_path / "x", split, USER_IDS, np.zeros(6, np.float32), arts,
                              _history(tmp_path / "h.parquet", {7: [(10, 0)], 8: [(11, 0)]}), "m")
    split = _split([[10, 11, 12]], [0], [0])
    with pytest.raises(InputError, match="NaN or infinite"):
        write_news_candidates(tmp_path / "x", split, USER_IDS, np.array([0, np.nan, 1], np.float32), arts, hist, "m")
    assert write_news_candidates(tmp_path / "x", _split([[10, 11]], [0], [5]), USER_IDS, np.zeros(2, np.float32), arts,
                                 hist, "m") is None  # no BA rows: no bundle


def test_synthetic_ba_rows_are_distinct_users_with_histories(tmp_path):
    spec = SyntheticEbnerdSpec(n_articles=200, n_topics=8, n_users=40, n_train_impressions=120, n_validation_impressions=40,
                               n_test_impressions=30, n_ba_rows=25, n_candidates=20, inview_max=10, seed=3)
    write_synthetic_ebnerd(tmp_path / "root", spec)
    cfg = NewsRecConfig.from_dict({"models": {"nrms_docvec": {}}, "synthetic": spec.as_dict()})
    data = prepare_news_data(tmp_path / "root", BUNDLE, True, cfg, tmp_path / "prep")
    test = load_split(data.splits["test"])
    scores = np.random.default_rng(0).normal(size=len(test.inview_ids)).astype(np.float32)
    m = news_candidates(data, test, scores, "nrms_docvec", tmp_path / "bundle")
    cs, meta = read_candidate_bundle(m.parent), json.loads(m.read_text())
    assert cs.n_users == spec.n_ba_rows and meta["repeated_user_rows"] == 0 and cs.n_candidates == spec.n_candidates
    assert (np.diff(cs.history_offsets) >= spec.history_min).all() and cs.history_times is not None
    assert not set(cs.genres) & set(DANISH_TO_CODE) and set(cs.genres) & set(DANISH_TO_CODE.values())  # paper codes
    hist = pl.read_parquet(tmp_path / "root" / S.TEST_BUNDLE / "test" / "history.parquet")
    first = hist.filter(pl.col(S.USER_ID) == int(cs.user_ids[0]))
    assert cs.item_id_of(cs.history_rows[: cs.history_offsets[1]]).tolist() == first[S.HISTORY_ARTICLES][0].to_list()
