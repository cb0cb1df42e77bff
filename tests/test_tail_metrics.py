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
