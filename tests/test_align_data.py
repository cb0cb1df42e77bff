"""Loading and validating prediction dumps: every bad input gets a clear error."""

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steps.align.config import AlignConfig
from steps.align.data import MISSING_CATEGORY, iter_impressions, prepare_dump
from steps.align.evaluate import evaluate_method, target_layout
from steps.align.targets import resolve_target
from steps.errors import ConfigError, InputError

ARTICLES = {1: "nyheder", 2: "sport", 3: "krimi", 4: "auto", 5: "sport", 6: "nyheder", 7: "side9"}


def write_articles(path, articles=ARTICLES):
    pl.DataFrame({"article_id": pl.Series(list(articles), dtype=pl.Int32),
                  "category_str": list(articles.values())}).write_parquet(path)
    return path


def write_dump(path, rows, clicked=True, scores_type=pa.float32()):
    cols = {
        "impression_id": pa.array([r[0] for r in rows], pa.uint32()),
        "article_ids_inview": pa.array([r[1] for r in rows], pa.list_(pa.int32())),
        "scores": pa.array([r[2] for r in rows], pa.list_(scores_type)),
    }
    if clicked:
        cols["article_ids_clicked"] = pa.array([r[3] if len(r) > 3 else [] for r in rows], pa.list_(pa.int32()))
    pq.write_table(pa.table(cols), path)
    return path


BA = [1, 2, 3, 4, 5, 6]
GOOD = [
    (0, BA, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),
    (0, BA, [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]),
    (11, [1, 2, 7], [1.0, 0.0, 0.5], [2]),
    (12, [3, 5, 6, 4], [0.2, 0.1, 0.3, 0.0], [3, 6]),
    (13, [1, 2], [0.0, 0.0]),  # unlabelled
]


@pytest.fixture
def files(tmp_path):
    return tmp_path, write_articles(tmp_path / "articles.parquet")


def prepare(tmp_path, articles, rows, **kw):
    dump = write_dump(tmp_path / "predictions.parquet", rows, **{k: kw.pop(k) for k in ["clicked", "scores_type"] if k in kw})
    return prepare_dump(dump, articles, tmp_path / "prepared", **kw)


def test_good_dump_is_prepared(files):
    tmp, art = files
    p = prepare(tmp, art, GOOD, batch_rows=2)
    assert p.n_ba_rows == 2 and p.n_impressions == 3 and p.n_labelled == 2
    # auto (article 4) is removed from the BA candidate list
    assert list(p.ba_candidate_ids) == [1, 2, 3, 5, 6]
    assert p.n_ba_candidates_excluded == 1
    assert [p.categories[i] for i in p.ba_category_index] == ["NWS", "SPT", "CRM", "SPT", "NWS"]
    # model distribution: mean over BA rows of per-category softmax mass, sums to 1
    assert p.model_distribution.sum() == pytest.approx(1.0)
    logits = np.array([[0.1, 0.2, 0.3, 0.5, 0.6], [0.6, 0.5, 0.4, 0.2, 0.1]])
    sm = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    nws = p.categories.index("NWS")
    assert p.model_distribution[nws] == pytest.approx((sm[:, [0, 4]].sum()) / 2, rel=1e-6)
    batches = list(iter_impressions(p, 2))
    assert [b.n for b in batches] == [2, 1]
    np.testing.assert_array_equal(batches[0].offsets, [0, 3, 7])
    np.testing.assert_array_equal(batches[0].clicked, [0, 1, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(batches[0].labelled_rows, [0, 1])
    assert list(batches[1].labelled_rows) == []


def test_ba_rows_in_another_order_are_realigned(files):
    tmp, art = files
    shuffled = [(0, [6, 5, 4, 3, 2, 1], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1])] + GOOD[1:]
    a = prepare(tmp, art, GOOD)
    b = prepare(tmp, art, shuffled)
    np.testing.assert_allclose(a.model_distribution, b.model_distribution)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([(0, BA, [0.1] * 5)], r"row 0 \(impression_id 0\): 'article_ids_inview' has 6 articles but 'scores' has 5"),
        ([GOOD[0], (5, [1, 2], [0.1, float("nan")])], r"row 1 \(impression_id 5\): column 'scores' holds nan at position 1 \(article 2\)"),
        ([GOOD[0], (5, [1, 2], [float("inf"), 0.1])], r"holds inf at position 0"),
        ([GOOD[0], (5, [], [])], r"row 1 \(impression_id 5\): empty 'article_ids_inview' list"),
        ([GOOD[0], (5, [1, 2], [0.1, 0.2], [3])], r"row 1 \(impression_id 5\): clicked article 3 is not in 'article_ids_inview'"),
        ([GOOD[0], (5, [1, 2], [0.1, 0.2], [1, 2])], r"row 1 \(impression_id 5\): every in-view article is clicked"),
        ([GOOD[0], (0, [1, 2, 3, 4, 5, 7], [0.0] * 6)], r"row 1 \(impression_id 0\) ranks a different candidate list than row 0"),
        ([GOOD[0], (0, [1, 2], [0.0] * 2)], r"row 1 \(impression_id 0\) has 2 candidates"),
        ([GOOD[0], (5, [1, 99], [0.1, 0.2])], r"1 article\(s\) referenced by .* have no category \(e.g. article_id 99, first seen in row 1\)"),
        ([GOOD[0], (5, [1, None], [0.1, 0.2])], r"row 1 \(impression_id 5\): column 'article_ids_inview' holds a null value"),
        ([GOOD[0], (5, [1, 2], None)], r"row 1 \(impression_id 5\): column 'scores' is null"),
        ([GOOD[0], (5, [1, 2], [0.1, 0.2], [None])], r"row 1 \(impression_id 5\): column 'article_ids_clicked' holds a null value"),
        ([GOOD[0], (5, [2, 1, 2], [0.1, 0.2, 0.3], [1])], r"row 1 \(impression_id 5\): article 2 appears twice in 'article_ids_inview' \(positions 0 and 2\)"),
    ],
)
def test_bad_rows_name_row_impression_and_value(files, rows, message):
    tmp, art = files
    with pytest.raises(InputError, match=message):
        prepare(tmp, art, rows)
    # nothing half-written looks finished
    assert not any(f.suffix == ".bin" for f in (tmp / "prepared").glob("*"))


def test_missing_column_and_wrong_dtype(files, tmp_path):
    tmp, art = files
    pq.write_table(pa.table({"impression_id": pa.array([1], pa.uint32()),
                             "article_ids_inview": pa.array([[1]], pa.list_(pa.int32()))}), tmp / "p.parquet")
    with pytest.raises(InputError, match=r"p.parquet: missing column 'scores'"):
        prepare_dump(tmp / "p.parquet", art, tmp / "out")
    pq.write_table(pa.table({"impression_id": pa.array([1], pa.uint32()),
                             "article_ids_inview": pa.array([[1]], pa.list_(pa.int32())),
                             "scores": pa.array([["x"]], pa.list_(pa.string()))}), tmp / "p.parquet")
    with pytest.raises(InputError, match=r"column 'scores' has dtype list\[str\], expected list\[f32\]"):
        prepare_dump(tmp / "p.parquet", art, tmp / "out")
    pq.write_table(pa.table({"impression_id": pa.array(["a"]), "article_ids_inview": pa.array([[1]], pa.list_(pa.int32())),
                             "scores": pa.array([[0.1]], pa.list_(pa.float32()))}), tmp / "p.parquet")
    with pytest.raises(InputError, match=r"column 'impression_id' has dtype str, expected an integer"):
        prepare_dump(tmp / "p.parquet", art, tmp / "out")
    (tmp / "junk.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="not a readable parquet file"):
        prepare_dump(tmp / "junk.parquet", art, tmp / "out")
    with pytest.raises(InputError, match="prediction file not found"):
        prepare_dump(tmp / "nope.parquet", art, tmp / "out")


def test_bad_articles_file(tmp_path):
    dump = write_dump(tmp_path / "predictions.parquet", GOOD)
    pl.DataFrame({"article_id": [1], "category": ["x"]}).write_parquet(tmp_path / "a.parquet")
    with pytest.raises(InputError, match=r"a.parquet: missing column 'category_str'"):
        prepare_dump(dump, tmp_path / "a.parquet", tmp_path / "out")
    pl.DataFrame({"article_id": pl.Series([1, 1], dtype=pl.Int32), "category_str": ["a", "b"]}).write_parquet(tmp_path / "a.parquet")
    with pytest.raises(InputError, match=r"repeats article_id 1 \(row 1\)"):
        prepare_dump(dump, tmp_path / "a.parquet", tmp_path / "out")


def test_articles_without_category_can_be_excluded(files):
    tmp, art = files
    rows = [(0, BA + [99], [0.0] * 7), (5, [1, 99], [0.1, 0.2], [1])]
    p = prepare(tmp, art, rows, missing_category="exclude")
    assert 99 not in set(p.ba_candidate_ids)
    assert p.n_missing_category_articles == 1
    assert any("without a category" in n for n in p.notes)
    assert MISSING_CATEGORY in p.excluded_categories


def test_no_beyond_accuracy_block_is_reported_and_estimated_from_impressions(files):
    tmp, art = files
    p = prepare(tmp, art, GOOD[2:])
    assert not p.has_ba
    assert any("no beyond-accuracy rows" in n for n in p.notes)
    assert p.distribution_source == "labelled impressions"
    cfg = AlignConfig.from_dict({"lambdas": [0, 1], "submissions": False})
    target = resolve_target("Editorial", p.candidate_categories)
    out = evaluate_method(p, target_layout(p, target, 1e-6), "nails", cfg, tmp / "out")
    assert out.results["kl_at_n"].null_count() == out.results.height
    assert out.results["auc"].null_count() == 0


def test_top_n_larger_than_the_candidate_list(files):
    tmp, art = files
    p = prepare(tmp, art, GOOD)
    cfg = AlignConfig.from_dict({"top_n": 6, "submissions": False})
    target = resolve_target("Uniform", p.candidate_categories)
    with pytest.raises(InputError, match=r"top_n = 6 is larger than the beyond-accuracy candidate list \(5 articles"):
        evaluate_method(p, target_layout(p, target, 1e-6), "steck", cfg, tmp / "out")


def test_custom_target_with_unknown_category(files):
    tmp, art = files
    p = prepare(tmp, art, GOOD)
    with pytest.raises(ConfigError, match="unknown category 'ENT'"):
        resolve_target({"name": "x", "distribution": {"ENT": 1.0}}, p.candidate_categories)


def test_metrics_of_a_hand_worked_example(files):
    """GOOD's BA block after excluding 'auto': [1 NWS, 2 SPT, 3 CRM, 5 SPT, 6 NWS]; Editorial target
    CRM 1/5, NWS 2/5, SPT 2/5; top-2 at lambda 0: row 0 -> 6 (NWS), 5 (SPT); row 1 -> 1 (NWS), 2 (SPT)."""
    import math

    tmp, art = files
    p = prepare(tmp, art, GOOD)
    cfg = AlignConfig.from_dict({"lambdas": [0], "selections": ["det"], "top_n": 2, "submissions": False})
    target = resolve_target("Editorial", p.candidate_categories)
    res = evaluate_method(p, target_layout(p, target, 1e-6), "nails", cfg, tmp / "out").results.row(0, named=True)
    # every list (and the aggregate) is NWS 1/2, SPT 1/2, CRM 0; KL with q~ = 0.9999 q + 1e-4 p*
    kl = 0.2 * math.log(0.2 / (1e-4 * 0.2)) + 2 * 0.4 * math.log(0.4 / (0.9999 * 0.5 + 1e-4 * 0.4))
    assert res["kl_at_n"] == pytest.approx(kl)
    assert res["user_kl_mean"] == pytest.approx(kl) and res["user_kl_std"] == pytest.approx(0.0, abs=1e-12)
    assert res["coverage_at_n"] == pytest.approx(4 / 5)  # article 3 (CRM) is never selected
    # impression 11: scores (1.0, 0.0, 0.5), clicked article 2 ranks last -> AUC 0, RR 1/3
    # impression 12: order 6, 3, 5, 4; clicked 3 and 6 rank 1st and 2nd -> AUC 1, MRR 3/4
    assert res["auc"] == pytest.approx(0.5)
    assert res["mrr"] == pytest.approx((1 / 3 + 0.75) / 2)
    assert res["ndcg_at_5"] == pytest.approx((1 / math.log2(4) + 1.0) / 2)
