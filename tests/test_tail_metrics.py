"""Top-k list metrics of steps/metrics.py (TailFlow section), on hand-made cases."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steps import metrics

# Two users, lists of 4 items (-1 = empty slot).
TOPK = np.array([[3, 1, 4, 0],
                 [2, 3, -1, -1]])
# user 0 holds out items {1, 5}: item 1 at position 1, item 5 absent
# user 1 holds out items {2, 3, 4}: positions 0, 1, absent
OFFSETS = np.array([0, 2, 5])
ROWS = np.array([0, 0, 1, 1, 1])
ITEMS = np.array([1, 5, 2, 3, 4])


def test_heldout_positions():
    pos = metrics.heldout_positions(TOPK, ROWS, ITEMS)
    assert pos.tolist() == [1, 4, 0, 1, 4]  # 4 = K: not in the list


def test_recall_normalised_by_min_k_and_heldout():
    pos = metrics.heldout_positions(TOPK, ROWS, ITEMS)
    # k = 1: user 0 has no hit in position 0 -> 0/min(1,2) = 0; user 1 hit item 2 -> 1/min(1,3) = 1
    assert metrics.recall_at_k(OFFSETS, pos, 1).tolist() == [0.0, 1.0]
    # k = 4: user 0: 1 hit / min(4, 2) = 0.5 (fewer held-out items than k); user 1: 2 / min(4, 3) = 2/3
    np.testing.assert_allclose(metrics.recall_at_k(OFFSETS, pos, 4), [0.5, 2 / 3])


def test_ndcg_binary_relevance():
    pos = metrics.heldout_positions(TOPK, ROWS, ITEMS)
    got = metrics.ndcg_at_k(OFFSETS, pos, 4)
    # user 0: DCG = 1/log2(1+2) ; IDCG (2 relevant) = 1 + 1/log2(3)
    u0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    # user 1: DCG = 1 + 1/log2(3) ; IDCG (3 relevant, k=4) = 1 + 1/log2(3) + 1/log2(4)
    u1 = (1 + 1 / math.log2(3)) / (1 + 1 / math.log2(3) + 0.5)
    np.testing.assert_allclose(got, [u0, u1])
    # k = 1: user 0 has no hit at position 0 -> 0; user 1 -> 1
    np.testing.assert_allclose(metrics.ndcg_at_k(OFFSETS, pos, 1), [0.0, 1.0])


def test_users_without_heldout_get_nan():
    offsets = np.array([0, 0, 1])
    pos = np.array([0])
    assert np.isnan(metrics.recall_at_k(offsets, pos, 5)[0])
    assert np.isnan(metrics.ndcg_at_k(offsets, pos, 5)[0])
    assert metrics.ndcg_at_k(offsets, pos, 5)[1] == 1.0


def test_exposure_gini_entropy():
    exp = metrics.item_exposure(TOPK, 6, 2)
    # first two slots: items 3, 1, 2, 3
    assert exp.tolist() == [0, 1, 1, 2, 0, 0]
    # Gini of sorted (0,0,0,1,1,2): sum (2i-n-1) x_i = (2*4-7)*1 + (2*5-7)*1 + (2*6-7)*2 = 1 + 3 + 10 = 14
    # / (n * sum) = 14 / (6 * 4) = 0.58333
    assert metrics.gini_index(exp) == pytest.approx(14 / 24)
    assert metrics.gini_index(np.ones(5)) == pytest.approx(0.0)
    # entropy of (1/4, 1/4, 1/2) = 2 * 1/4 ln 4 + 1/2 ln 2 = 1.5 ln 2
    assert metrics.exposure_entropy(exp) == pytest.approx(1.5 * math.log(2))


def test_epc_and_tail_share():
    popularity = np.array([0.9, 0.5, 0.2, 0.1, 0.0, 0.0])
    # first two slots: items 3, 1, 2, 3 -> 1 - p = 0.9, 0.5, 0.8, 0.9 -> mean 0.775
    assert metrics.expected_popularity_complement(TOPK, popularity, 2) == pytest.approx(0.775)
    is_tail = np.array([False, False, True, True, True, True])
    # all filled slots (k = 4): 3, 1, 4, 0, 2, 3 -> tail: 3, 4, 2, 3 = 4 of 6
    assert metrics.tail_share(TOPK, is_tail, 4) == pytest.approx(4 / 6)


def test_item_recall_and_buckets():
    pos = metrics.heldout_positions(TOPK, ROWS, ITEMS)
    ir = metrics.item_recall_at_k(ITEMS, pos, 6, 2)
    # item 1 held out by user 0 at position 1 (< 2) -> 1; item 5 absent -> 0; item 2 -> 1; item 3 at 1 -> 1; item 4 -> 0
    assert ir[[1, 2, 3, 4, 5]].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert np.isnan(ir[0])  # nobody holds item 0 out
    bucket = np.array([0, 0, 0, 1, 1, 1])
    # bucket 0: items 1, 2 -> mean 1 (item 0 NaN ignored); bucket 1: items 3, 4, 5 -> 1/3
    np.testing.assert_allclose(metrics.bucket_means(ir, bucket, 3), [1.0, 1 / 3, np.nan])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=30))
def test_gini_bounds(values):
    g = metrics.gini_index(np.array(values))
    if sum(values) == 0:
        assert math.isnan(g)
    else:
        assert -1e-12 <= g <= 1 - 1 / len(values) + 1e-12


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_recall_and_ndcg_in_unit_interval(k, seed):
    rng = np.random.default_rng(seed)
    n_users, n_items = 5, 12
    topk = np.stack([rng.permutation(n_items)[:6] for _ in range(n_users)])
    n_held = rng.integers(1, 5, n_users)
    rows = np.repeat(np.arange(n_users), n_held)
    items = np.concatenate([rng.choice(n_items, n, replace=False) for n in n_held])
    offsets = np.concatenate([[0], np.cumsum(n_held)])
    pos = metrics.heldout_positions(topk, rows, items)
    r = metrics.recall_at_k(offsets, pos, k)
    n = metrics.ndcg_at_k(offsets, pos, k)
    assert ((r >= 0) & (r <= 1 + 1e-12)).all() and ((n >= 0) & (n <= 1 + 1e-12)).all()
    # perfect lists (held-out items first) give recall 1 and nDCG 1
    perfect = np.full((n_users, 6), -1)
    for u in range(n_users):
        held = items[offsets[u]:offsets[u + 1]]
        perfect[u, : len(held)] = held
    pp = metrics.heldout_positions(perfect, rows, items)
    np.testing.assert_allclose(metrics.recall_at_k(offsets, pp, k), 1.0)
    np.testing.assert_allclose(metrics.ndcg_at_k(offsets, pp, k), 1.0)


# --------------------------------------------------------------------------- the reference code's definitions
def test_coverage_per_block_of_users():
    from steps.tail.evaluate import coverage_per_block

    lists = np.array([[0, 1], [1, 2], [3, 3], [4, -1], [9, 9]])
    # blocks of 2 users: {0, 1, 2} -> 3, {3, 4} -> 2 (−1 is no item); the fifth user is a partial block, left out
    assert coverage_per_block(lists, 2, 2) == pytest.approx(2.5)
    assert coverage_per_block(lists, 1, 2) == pytest.approx(2.0)  # {0, 1}, {3, 4}
    assert math.isnan(coverage_per_block(lists, 2, 6))


def _ref_case():
    import scipy.sparse as sp

    # 3 items; users (rows) fold in / hold out: u0 {0} / {1, 2}; u1 nothing held out; u2 {2} / {0, 1}; u3 {0, 1} / {2}
    B = np.array([[0.0, 2.0, 1.0], [2.0, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=np.float32)
    fold = sp.csr_matrix(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=np.float32))
    held = sp.csr_matrix(np.array([[0, 1, 1], [0, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float32))
    return B, fold, held


def test_reference_item_metrics_on_unmasked_lists():
    from steps.tail.config import Evaluation
    from steps.tail.evaluate import reference_metrics

    B, fold, held = _ref_case()
    # unmasked scores: u0 [0, 2, 1] -> list [1, 2, 0]; u2 [1, 1, 0] -> [0, 1, 2]; u3 [2, 2, 2] -> [0, 1, 2] (ties: lower index)
    # held-out positions: u0 item 1 @0, item 2 @1; u2 item 0 @0, item 1 @1; u3 item 2 @2 (masked, it would be @0)
    m = reference_metrics(B, fold, held, Evaluation(ks=(1, 2)))
    # recall@1 per item: item 0 1/1, item 1 1/2, item 2 0/2 -> mean 0.5; @2: 1, 1, 1/2 -> 2.5/3
    assert m["item_recall_unmasked_at_1"] == pytest.approx(0.5)
    assert m["item_recall_unmasked_at_2"] == pytest.approx(2.5 / 3)
    # DCG (k = min(100, k_max) = 2): item 0 1; item 1 (1 + 1/log2 3)/2; item 2 (1/log2 3 + 0)/2
    g = 1 / math.log2(3)
    assert m["item_dcg_unmasked_at_100"] == pytest.approx((1 + (1 + g) / 2 + g / 2) / 3)
    # recall_dist: hit / min(2, #held): u0 and u2 hold 2, u3 holds 1 -> item 0 1/2; item 1 (1/2 + 1/2)/2; item 2 (1/2 + 0)/2
    assert m["item_recall_dist_unmasked_at_100"] == pytest.approx((0.5 + 0.5 + 0.25) / 3)
    assert math.isnan(m["coverage_per_100_users_at_2"])  # 3 evaluated users: no complete block of 100
    assert 0 <= m["item_ndcg_over_users"] <= 1


def test_item_ndcg_ranks_users_per_item():
    import scipy.sparse as sp

    from steps.tail.evaluate import item_ndcg_over_users

    B = np.array([[0.0, 1.0], [3.0, 0.0]], dtype=np.float32)
    # rows fold in / hold out: r0 {1} / -; r1 {0} / {1}; r2 {1} / {0}; r3 {0} / -
    fold = sp.csr_matrix(np.array([[0, 1], [1, 0], [0, 1], [1, 0]], dtype=np.float32))
    held = sp.csr_matrix(np.array([[0, 0], [0, 1], [1, 0], [0, 0]], dtype=np.float32))
    # scores with fold-in cells set to 0: r0 [3, 0], r1 [0, 1], r2 [3, 0], r3 [0, 1]
    # item 0: order r0, r2, r1, r3 -> the holder r2 at position 1: 1/log2 3; item 1: r1, r3, r0, r2 -> r1 first: 1
    np.testing.assert_allclose(item_ndcg_over_users(B, fold, held, block_items=1), [1 / math.log2(3), 1.0])
    # nobody holds an item out -> 0
    np.testing.assert_allclose(item_ndcg_over_users(B, fold, sp.csr_matrix((4, 2), dtype=np.float32)), [0.0, 0.0])


def test_hit_rate_on_masked_lists():
    import scipy.sparse as sp

    from steps.tail.config import Evaluation
    from steps.tail.evaluate import evaluate_lists

    # lists of users 0, 1; user 0 holds out {1, 5} (item 1 @1), user 1 {2, 3, 4} (item 2 @0); user 2 nothing (not evaluated)
    topk = np.array([[3, 1, 4, 0], [2, 3, -1, -1], [0, 1, 2, 3]])
    held = sp.csr_matrix(([1.0] * 5, ([0, 0, 1, 1, 1], [1, 5, 2, 3, 4])), shape=(3, 6))
    counts = np.ones(6)
    m = evaluate_lists(topk, held, counts, 10, np.zeros(6, dtype=bool), np.zeros(6, dtype=np.int64),
                       Evaluation(ks=(1, 2, 4), buckets=2))
    assert (m.summary["hit_rate_at_1"], m.summary["hit_rate_at_2"], m.summary["hit_rate_at_4"]) == (0.5, 1.0, 1.0)


def test_intervals_bracket_and_deltas_against_a_baseline_on_the_same_users():
    import scipy.sparse as sp

    from steps.tail.config import Evaluation
    from steps.tail.evaluate import baseline_deltas, evaluate_lists
    from steps.uncertainty import UncertaintySpec

    rng = np.random.default_rng(0)
    n_users, n_items = 300, 60
    dense = (rng.random((n_users, n_items)) < 0.05).astype(np.float32)
    dense[np.arange(n_users), rng.integers(0, n_items, n_users)] = 1.0
    held = sp.csr_matrix(dense)
    good = np.argsort(-(dense + rng.random((n_users, n_items)) * 1.5), axis=1)[:, :20]
    bad = np.argsort(-rng.random((n_users, n_items)), axis=1)[:, :20]
    ev = Evaluation(ks=(5, 10, 20), buckets=2)
    spec = UncertaintySpec(resamples=300, seed=4)
    args = (np.ones(n_items), 10, np.zeros(n_items, dtype=bool), np.zeros(n_items, dtype=np.int64), ev, spec)
    a, b = evaluate_lists(good, held, *args), evaluate_lists(bad, held, *args)
    for m in ("recall_at_20", "ndcg_at_10", "hit_rate_at_5", "coverage_at_20", "gini"):
        assert a.summary[f"{m}_lo"] <= a.summary[m] + 1e-9 <= a.summary[f"{m}_hi"] + 2e-9, m
    d = baseline_deltas(a.per_user, b.per_user, n_items, ev, spec)
    assert d["delta_recall_at_20"] == pytest.approx(a.summary["recall_at_20"] - b.summary["recall_at_20"])
    assert d["p_recall_at_20"] < 0.01 and d["delta_recall_at_20_lo"] > 0
    same = baseline_deltas(b.per_user, b.per_user, n_items, ev, spec)
    assert same["delta_ndcg_at_10"] == 0 and same["p_ndcg_at_10"] == 1.0 and same["p_gini"] == 1.0
    assert "delta_gini_lo" in d and "delta_coverage_at_20" in d


def test_intervals_deltas_holm_and_seeds_through_run_method_and_the_joins(tmp_path):
    """Intervals wired in-process: run_method for two training seeds on a tiny synthetic dataset,
    then the joins (deltas against EASE of the same seed, Holm over the run, the seed table)."""
    import polars as pl

    from steps.tail.config import TailConfig
    from steps.tail.data import prepare_dataset
    from steps.tail.pipeline import add_baseline_deltas, item_groups, run_method, run_results, seed_table

    cfg = TailConfig.from_dict({
        "seeds": [1, 2], "device": "cpu", "candidates_top_m": 0,
        "datasets": [{"name": "syn", "synthetic": {"n_users": 500, "n_items": 80, "n_clusters": 4, "mean_items_per_user": 12},
                      "protocol": {"heldout_users": 60}}],
        "training": {"epochs": 2, "batch_size": 128, "patience": 2, "wd": 1.0},
        "methods": {"ease": {"l2": 50}, "ipw": {"alpha": 0.01}},
        "uncertainty": {"resamples": 200, "seed": 3}})
    prepared = prepare_dataset(cfg.datasets[0], cfg.seed, tmp_path / "cache")
    groups = item_groups(prepared, cfg)
    outcomes = {}
    for cell in cfg.cell_names:
        method, seed = cfg.cell(cell)
        outcomes[(method.name, seed)] = run_method(prepared, groups, method, cfg, tmp_path / "lists", log=lambda *a: None,
                                                   seed=seed)
    assert {o.lists.path for o in outcomes.values()}.__len__() == 4  # one lists file per cell
    per_user = {k: o.per_user for k, o in outcomes.items()}
    part = add_baseline_deltas(pl.concat([o.results for o in outcomes.values()], how="diagonal_relaxed"), per_user,
                               prepared.n_items, cfg)
    results, replicates = run_results([part], cfg)
    assert replicates.table.height == results.height and replicates.spec["resamples"] == cfg.uncertainty.resamples
    assert results.height == 8 and results["seed"].to_list() == [1, 1, 2, 2] * 2
    for m in ("recall_at_20", "ndcg_at_100", "hit_rate_at_50", "coverage_at_20", "gini"):
        assert (results[f"{m}_lo"] <= results[m] + 1e-9).all() and (results[m] <= results[f"{m}_hi"] + 1e-9).all(), m
        test = results.filter(pl.col("split") == "test")
        assert (test[f"delta_{m}_lo"] <= test[f"delta_{m}"] + 1e-9).all(), m
        assert (test[f"delta_{m}"] <= test[f"delta_{m}_hi"] + 1e-9).all(), m
        ease = test.filter(pl.col("method") == "ease")
        assert (ease[f"delta_{m}"] == 0).all() and ease[f"p_{m}"].is_null().all() and ease[f"p_{m}_holm"].is_null().all()
        ipw = test.filter(pl.col("method") == "ipw").sort("seed")
        for seed, row in zip((1, 2), ipw.iter_rows(named=True)):  # paired with EASE of the same seed
            base = test.filter((pl.col("method") == "ease") & (pl.col("seed") == seed))[m].item()
            assert row[f"delta_{m}"] == pytest.approx(row[m] - base, abs=1e-9), (m, seed)
            assert row[f"p_{m}"] <= row[f"p_{m}_holm"] <= 1
        assert results.filter(pl.col("split") == "validation")[f"delta_{m}"].is_null().all()
    by_seed = seed_table(results, cfg)
    assert by_seed.height == 4 and (by_seed["n_seeds"] == 2).all()
    assert {"recall_at_20_mean", "recall_at_20_sd", "recall_at_20_seed_lo", "coverage_at_20_seed_hi"} <= set(by_seed.columns)
    assert seed_table(results, TailConfig.from_dict({**cfg.as_dict(), "seeds": [1]})) is None
    # the report states each change with its interval and which differences survive Holm
    from steps.tail.report import change_sentences, change_vs_baseline

    change = change_vs_baseline(results)
    assert change.height == 2 and change["seed"].to_list() == [1, 2]
    assert (change["coverage_at_20_change_lo"] <= change["coverage_at_20_change"] + 1e-9).all()
    lines = change_sentences(change)
    assert len(lines) == 2 and all("(seed " in s and "coverage@20 by " in s and " [" in s and "Holm" in s for s in lines)
