"""The metric library: hand-checked numbers and invariants."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steps.metrics import (
    TIE_RULES,
    coverage_at_n,
    positions_from_keys,
    ragged_tie_ranks,
    ranking_metrics,
    ranking_metrics_from_positions,
    smoothed_kl,
)


def test_smoothed_kl_hand_checked():
    # p = (.4,.3,.2,.1), q = (.1,.2,.3,.4), alpha = 1e-4: q~ = 0.9999 q + 1e-4 p
    p = np.array([0.4, 0.3, 0.2, 0.1])
    q = np.array([0.1, 0.2, 0.3, 0.4])
    qt = 0.9999 * q + 1e-4 * p
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, qt))
    assert smoothed_kl(p, q, 1e-4) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.456314, abs=1e-6)


def test_smoothed_kl_of_a_ten_item_list_under_uniform_target():
    # 9 categories, p* uniform; a top-10 list with one category twice and 8 once:
    # KL = 1/9 * (8 ln((1/9)/0.1) + ln((1/9)/0.2)) = 0.028339 (the NAILS paper's Steck floor)
    p = np.full(9, 1 / 9)
    q = np.array([0.2] + [0.1] * 8)
    assert smoothed_kl(p, q, 1e-4) == pytest.approx(0.0283392, abs=2e-6)


def test_smoothed_kl_ignores_categories_without_target_mass_and_is_zero_at_target():
    p = np.array([0.5, 0.5, 0.0])
    assert smoothed_kl(p, p) == pytest.approx(0.0, abs=1e-15)
    # all list mass on the zero-target category: KL = sum p ln(p / (alpha p)) = ln(1/alpha)
    assert smoothed_kl(p, np.array([0.0, 0.0, 1.0]), 1e-4) == pytest.approx(math.log(1e4))


def test_smoothed_kl_rows():
    p = np.array([0.5, 0.5])
    q = np.array([[0.5, 0.5], [1.0, 0.0]])
    out = smoothed_kl(p, q, 0.5)
    # second row: q~ = (0.75, 0.25): 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.143841
    np.testing.assert_allclose(out, [0.0, 0.1438410362], atol=1e-9)
    with pytest.raises(ValueError):
        smoothed_kl(p, q, 0.0)


def test_coverage_at_n():
    assert coverage_at_n(np.array([[0, 1, 1], [4, 0, 1]]), 10) == pytest.approx(0.3)
    assert coverage_at_n(np.array([0, -1]), 2) == pytest.approx(0.5)


# ebnerd-benchmark's documented example: three impressions
Y_TRUE = [[1, 0, 0], [1, 1, 0], [1, 0, 0, 0]]
Y_PRED = [[0.2, 0.3, 0.5], [0.18, 0.7, 0.1], [0.18, 0.2, 0.1, 0.1]]


def _ragged(rows):
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    return offsets, np.concatenate([np.asarray(r, dtype=float) for r in rows])


def test_ranking_metrics_match_the_ebnerd_benchmark_example():
    off, keys = _ragged(Y_PRED)
    _, labels = _ragged(Y_TRUE)
    m = ranking_metrics(off, keys, labels)
    # row AUCs: 0 (positive ranked last), 1, 2/3 (0.18 beats 0.1, 0.1 and loses to 0.2)
    np.testing.assert_allclose(m["auc"], [0.0, 1.0, 2 / 3])
    # MRR: 1/3; (1 + 1/2)/2; 1/2
    np.testing.assert_allclose(m["mrr"], [1 / 3, 0.75, 0.5])
    # nDCG@5: 1/log2(4); 1; 1/log2(3)
    np.testing.assert_allclose(m["ndcg_at_5"], [0.5, 1.0, 1 / math.log2(3)])
    assert np.mean(m["auc"]) == pytest.approx(0.5555555555555556)
    assert np.mean(m["mrr"]) == pytest.approx(0.5277777777777778)
    assert np.mean(m["ndcg_at_5"]) == pytest.approx(0.7103099178571526)
    assert np.mean(m["ndcg_at_10"]) == pytest.approx(0.7103099178571526)


def test_auc_counts_ties_half_and_mrr_ranks_ties_in_view_order():
    off, keys = _ragged([[0.5, 0.5, 0.1]])
    _, labels = _ragged([[0, 1, 0]])
    m = ranking_metrics(off, keys, labels, ties="inview")
    # positive ties one negative (1/2) and beats the other (1): AUC = 1.5 / 2
    assert m["auc"][0] == pytest.approx(0.75)
    # the tie keeps in-view order: the positive is second
    assert m["mrr"][0] == pytest.approx(0.5)
    assert m["ndcg_at_5"][0] == pytest.approx(1 / math.log2(3))


def test_positions_from_keys_is_stable_and_pads_last():
    keys = np.array([[0.1, 0.3, 0.3, -np.inf], [2.0, 1.0, 3.0, 0.0]])
    pos, avg = positions_from_keys(keys)
    np.testing.assert_array_equal(pos, [[2, 0, 1, 3], [1, 2, 0, 3]])
    np.testing.assert_allclose(avg[0, :3], [2, 0.5, 0.5])


def _naive_auc(scores, labels):
    pos = [s for s, l in zip(scores, labels) if l]
    neg = [s for s, l in zip(scores, labels) if not l]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@st.composite
def impressions(draw, max_length=12):
    n = draw(st.integers(1, 6))
    rows, labs = [], []
    for _ in range(n):
        length = draw(st.integers(2, max_length))
        rows.append(draw(st.lists(st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0, 2.0]), min_size=length, max_size=length)))
        lab = draw(st.lists(st.booleans(), min_size=length, max_size=length))
        if all(lab):
            lab[0] = False
        if not any(lab):
            lab[-1] = True
        labs.append(lab)
    return rows, labs


@settings(max_examples=150, deadline=None)
@given(impressions())
def test_ranking_metrics_agree_with_pairwise_definitions(data):
    rows, labs = data
    off, keys = _ragged(rows)
    _, labels = _ragged(labs)
    m = ranking_metrics(off, keys, labels, ties="inview")
    for i, (r, l) in enumerate(zip(rows, labs)):
        assert m["auc"][i] == pytest.approx(_naive_auc(r, l))
        order = sorted(range(len(r)), key=lambda j: (-r[j], j))
        ranks = [order.index(j) for j in range(len(r)) if l[j]]
        assert m["mrr"][i] == pytest.approx(np.mean([1 / (k + 1) for k in ranks]))
        dcg = sum(1 / math.log2(k + 2) for k in ranks if k < 10)
        idcg = sum(1 / math.log2(k + 2) for k in range(min(len(ranks), 10)))
        assert m["ndcg_at_10"][i] == pytest.approx(dcg / idcg)
        assert 0 <= m["auc"][i] <= 1 and 0 <= m["ndcg_at_5"][i] <= 1 + 1e-12


# --------------------------------------------------------------------------- tie rules
def _by_rule(rows, labs, ties, ks=(5, 10)):
    off, keys = _ragged(rows)
    _, labels = _ragged(labs)
    return ranking_metrics(off, keys, labels, ks=ks, ties=ties)


def test_two_tied_articles_under_each_rule():
    # the example: labels [1, 0], scores [0.3, 0.3]
    m = {t: _by_rule([[0.3, 0.3]], [[1, 0]], t) for t in TIE_RULES}
    assert m["inview"]["mrr"][0] == 1.0 and m["inview"]["ndcg_at_5"][0] == 1.0  # the clicked article listed first ranks first
    assert m["ebrec"]["mrr"][0] == 0.5  # the benchmark puts the last tied article first
    assert m["ebrec"]["ndcg_at_5"][0] == pytest.approx(1 / math.log2(3))
    assert m["mean"]["mrr"][0] == pytest.approx(0.75)  # (1 + 1/2) / 2
    assert m["mean"]["ndcg_at_5"][0] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert all(m[t]["auc"][0] == 0.5 for t in TIE_RULES)  # AUC counts the tie 1/2 under every rule


def test_an_all_tied_list_under_each_rule():
    # 4 articles, all scored 0.2, clicked at in-view positions 1 and 3
    rows, labs = [[0.2] * 4], [[0, 1, 0, 1]]
    inview, ebrec, mean = (_by_rule(rows, labs, t, ks=(2, 10)) for t in TIE_RULES)
    # inview: ranks 2 and 4; ebrec: the list reversed, ranks 3 and 1; mean: each click uniform on 1..4
    assert inview["mrr"][0] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert ebrec["mrr"][0] == pytest.approx((1 / 3 + 1) / 2)
    assert mean["mrr"][0] == pytest.approx(25 / 48)  # (1 + 1/2 + 1/3 + 1/4) / 4
    ideal = 1 + 1 / math.log2(3)
    assert inview["ndcg_at_10"][0] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / ideal)
    assert ebrec["ndcg_at_10"][0] == pytest.approx((1 + 1 / math.log2(4)) / ideal)
    discounts = [1, 1 / math.log2(3), 1 / math.log2(4), 1 / math.log2(5)]
    assert mean["ndcg_at_10"][0] == pytest.approx(2 * sum(discounts) / 4 / ideal)
    # @2: each click is in the top 2 with chance 1/2 at the mean of the two top discounts: exactly 1/2
    assert mean["ndcg_at_2"][0] == pytest.approx(0.5)
    assert inview["auc"][0] == ebrec["auc"][0] == mean["auc"][0] == 0.5


def test_two_tie_groups_and_an_untied_click():
    # scores [.5, .2, .5, .2, .9]: col 4 first; cols 0, 2 share ranks 2-3; cols 1, 3 share ranks 4-5
    rows, labs = [[0.5, 0.2, 0.5, 0.2, 0.9]], [[0, 1, 0, 0, 1]]
    m = {t: _by_rule(rows, labs, t) for t in TIE_RULES}
    assert m["inview"]["mrr"][0] == pytest.approx((1 + 1 / 4) / 2)
    assert m["ebrec"]["mrr"][0] == pytest.approx((1 + 1 / 5) / 2)
    assert m["mean"]["mrr"][0] == pytest.approx((1 + (1 / 4 + 1 / 5) / 2) / 2)
    # AUC: click 4 beats all 3 negatives; click 1 ties negative 3 (1/2) and loses to 0 and 2
    assert m["mean"]["auc"][0] == pytest.approx((3 + 0.5) / 6)


def test_an_unknown_tie_rule_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"ties: unknown tie rule 'first'; choose from \['inview', 'ebrec', 'mean'\]"):
        _by_rule([[0.1, 0.2]], [[1, 0]], "first")


def test_tie_ranks_and_orders_are_permutations_per_row():
    off, keys = _ragged([[0.1, 0.3, 0.3, 0.3], [2.0, 1.0], [0.5]])
    r = ragged_tie_ranks(off, keys)
    assert r.positions.tolist() == [3, 0, 1, 2, 0, 1, 0]
    assert r.first.tolist() == [3, 0, 0, 0, 0, 1, 0] and r.last.tolist() == [3, 2, 2, 2, 0, 1, 0]
    assert r.ordered("ebrec").tolist() == [3, 2, 1, 0, 0, 1, 0]
    assert r.ordered("mean").tolist() == r.ordered("inview").tolist() == r.positions.tolist()


def _all_tie_orders(r):
    """Every ranking of ``r`` by descending score, ties in every possible order."""
    groups = [[j for j in range(len(r)) if r[j] == v] for v in sorted(set(r), reverse=True)]
    for parts in itertools.product(*(itertools.permutations(g) for g in groups)):
        yield [j for part in parts for j in part]


def _mrr_ndcg(order, lab, k):
    ranks = [order.index(j) for j in range(len(lab)) if lab[j]]
    dcg = sum(1 / math.log2(p + 2) for p in ranks if p < k)
    idcg = sum(1 / math.log2(p + 2) for p in range(min(len(ranks), k)))
    return np.mean([1 / (p + 1) for p in ranks]), dcg / idcg


@settings(max_examples=120, deadline=None)
@given(impressions(max_length=6))
def test_ebrec_and_mean_rules_agree_with_their_definitions(data):
    """ebrec = the benchmark's ascending sort reversed (with a sort that keeps ties in order);
    mean = the average of MRR and nDCG over every order of the tied articles (enumerated)."""
    rows, labs = data
    ebrec = _by_rule(rows, labs, "ebrec", ks=(3, 10))
    mean = _by_rule(rows, labs, "mean", ks=(3, 10))
    for i, (r, l) in enumerate(zip(rows, labs)):
        benchmark = list(np.argsort(np.asarray(r), kind="stable")[::-1])
        for k in (3, 10):
            assert (ebrec["mrr"][i], ebrec[f"ndcg_at_{k}"][i]) == pytest.approx(_mrr_ndcg(benchmark, l, k))
            every = np.array([_mrr_ndcg(o, l, k) for o in _all_tie_orders(r)])
            assert (mean["mrr"][i], mean[f"ndcg_at_{k}"][i]) == pytest.approx(tuple(every.mean(axis=0)), rel=1e-12)
        assert ebrec["auc"][i] == mean["auc"][i] == pytest.approx(_naive_auc(r, l))


def test_without_ties_the_rules_agree_exactly():
    rng = np.random.default_rng(5)
    lens = rng.integers(2, 40, 300)
    off = np.concatenate([[0], np.cumsum(lens)])
    keys = rng.normal(size=off[-1])
    labels = (rng.random(off[-1]) < 0.2).astype(float)
    labels[off[:-1]] = 1.0
    m = {t: ranking_metrics(off, keys, labels, ties=t) for t in TIE_RULES}
    for name in m["inview"]:
        assert np.array_equal(m["inview"][name], m["ebrec"][name], equal_nan=True)
        assert np.array_equal(m["inview"][name], m["mean"][name], equal_nan=True)


def test_metrics_from_positions_of_a_permutation():
    off = np.array([0, 4])
    positions = np.array([3, 0, 2, 1])  # element 1 shown first, element 0 last
    labels = np.array([1, 0, 0, 1])
    m = ranking_metrics_from_positions(off, positions, labels)
    # negatives at positions 0 and 2; positive@1 beats the negative@2 (1 of 2), positive@3 beats none
    assert m["auc"][0] == pytest.approx(0.25)
    assert m["mrr"][0] == pytest.approx((1 / 4 + 1 / 2) / 2)


def test_concat_keeps_schema_and_fills_missing_columns():
    import polars as pl

    from steps.tables import concat

    a = pl.DataFrame({"x": [1], "y": [0.5]})
    b = pl.DataFrame({"x": [2]})
    out = concat([a, None, b, a.clear()])
    assert out["x"].to_list() == [1, 2] and out["y"].to_list() == [0.5, None]
    empty = concat([a.clear(), b.clear()])
    assert empty.is_empty() and empty.columns == ["x", "y"]
    assert concat([]).is_empty()
