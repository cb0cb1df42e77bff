"""NAILS, selection and Steck: hand-checked numbers and property tests."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from steps.align.nails import check_lambda, nails_factors, nails_ratio, nails_reweight
from steps.align.selection import sampling_keys, stochastic_top_n, top_n_indices
from steps.align.steck import queue_relevance, queues_padded, queues_shared, steck_greedy
from steps.align.targets import (
    custom_target,
    editorial_target,
    model_distribution,
    uniform_target,
)
from steps.errors import ConfigError
from steps.metrics import smoothed_kl


# --------------------------------------------------------------------------- targets
def test_editorial_and_uniform_targets():
    cats = ["NWS", "SPT", "NWS", "CRM"]
    ed = editorial_target(cats)
    assert ed.categories == ("CRM", "NWS", "SPT")
    np.testing.assert_allclose(ed.probs, [0.25, 0.5, 0.25])
    un = uniform_target(cats)
    np.testing.assert_allclose(un.probs, [1 / 3] * 3)


def test_custom_target_validation():
    cats = ["NWS", "SPT", "CRM"]
    t = custom_target("mine", {"NWS": 0.7, "SPT": 0.3}, cats)
    assert t.as_dict() == {"CRM": 0.0, "NWS": 0.7, "SPT": 0.3}
    with pytest.raises(ConfigError, match="unknown category 'ENT'"):
        custom_target("mine", {"NWS": 0.5, "ENT": 0.5}, cats)
    with pytest.raises(ConfigError, match="sum to 0.9"):
        custom_target("mine", {"NWS": 0.5, "SPT": 0.4}, cats)
    with pytest.raises(ConfigError, match="probability -0.1"):
        custom_target("mine", {"NWS": 1.1, "SPT": -0.1}, cats)


def test_model_distribution_is_mean_summed_probability():
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    cat = np.array([0, 0, 1])
    # category 0: (0.8 + 0.2) / 2 = 0.5
    np.testing.assert_allclose(model_distribution(probs, cat, 2), [0.5, 0.5])


# --------------------------------------------------------------------------- NAILS
def test_nails_hand_checked():
    # one row p = (0.4, 0.3, 0.3), categories (A, B, B); p(E) = (0.4, 0.6); target (0.5, 0.5)
    ratio = nails_ratio(np.array([0.5, 0.5]), np.array([0.4, 0.6]))
    np.testing.assert_allclose(ratio, [1.25, 5 / 6])
    # lambda = 0.5: factors 1 + 0.5 * (1.25 - 1) = 1.125 and 1 + 0.5 * (5/6 - 1) = 11/12
    f = nails_factors(ratio, 0.5)
    np.testing.assert_allclose(f, [1.125, 11 / 12])
    adj = nails_reweight(np.array([[0.4, 0.3, 0.3]]), np.array([0, 1, 1]), f)
    # 0.4*1.125 = 0.45, 0.3*11/12 = 0.275 (sum 1.0): no renormalisation needed here
    np.testing.assert_allclose(adj, [[0.45, 0.275, 0.275]])
    # a second row with another category mass is renormalised: (0.1*1.125, 0.9*11/12) / Z
    adj2 = nails_reweight(np.array([[0.1, 0.9]]), np.array([0, 1]), f)
    z = 0.1125 + 0.825
    np.testing.assert_allclose(adj2, [[0.1125 / z, 0.825 / z]])


def test_lambda_must_be_in_unit_interval():
    for bad in (-0.1, 1.01, "0.5", True):
        with pytest.raises(ConfigError):
            check_lambda(bad)


row_probs = hnp.arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(2, 12)),
                       elements=st.floats(0.01, 1.0)).map(lambda a: a / a.sum(axis=1, keepdims=True))


@settings(max_examples=100, deadline=None)
@given(row_probs, st.floats(0.0, 1.0), st.data())
def test_nails_keeps_rows_normalised_and_lambda_zero_is_identity(probs, lam, data):
    k = probs.shape[1]
    n_cat = data.draw(st.integers(1, min(k, 4)))
    cat = np.array(data.draw(st.lists(st.integers(0, n_cat - 1), min_size=k, max_size=k)))
    cat[:n_cat] = np.arange(n_cat)
    p_model = model_distribution(probs, cat, n_cat)
    target = np.array(data.draw(st.lists(st.floats(0.05, 1.0), min_size=n_cat, max_size=n_cat)))
    target /= target.sum()
    ratio = nails_ratio(target, p_model)
    adj = nails_reweight(probs, cat, nails_factors(ratio, lam))
    np.testing.assert_allclose(adj.sum(axis=1), 1.0)
    same = nails_reweight(probs, cat, nails_factors(ratio, 0.0))
    np.testing.assert_allclose(same, probs)
    # the label-shift identity: before per-row renormalisation, lambda = 1 moves the mean
    # summed probability of every category exactly onto the target
    unnormalised = probs * nails_factors(ratio, 1.0)[cat][None, :]
    np.testing.assert_allclose(model_distribution(unnormalised, cat, n_cat), target, atol=1e-12)


def test_nails_lambda_one_hits_target_when_rows_share_their_category_mass():
    rng = np.random.default_rng(0)
    cat = np.array([0, 0, 1, 1, 2])
    mass = np.array([0.6, 0.3, 0.1])
    probs = np.zeros((50, 5))
    for c in range(3):
        cols = np.flatnonzero(cat == c)
        w = rng.random((50, len(cols)))
        probs[:, cols] = mass[c] * w / w.sum(axis=1, keepdims=True)
    target = np.array([0.2, 0.3, 0.5])
    adj = nails_reweight(probs, cat, nails_factors(nails_ratio(target, model_distribution(probs, cat, 3)), 1.0))
    mix = model_distribution(adj, cat, 3)
    np.testing.assert_allclose(mix, target, atol=1e-12)
    assert smoothed_kl(target, mix) == pytest.approx(0.0, abs=1e-12)
    # the ranking within each row is kept inside a category
    for c in range(3):
        cols = np.flatnonzero(cat == c)
        np.testing.assert_array_equal(np.argsort(adj[:, cols], axis=1), np.argsort(probs[:, cols], axis=1))


# --------------------------------------------------------------------------- selection
@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 20)),
                  elements=st.sampled_from([0.0, 0.1, 0.2, 0.3, 1.0, -np.inf])), st.data())
def test_top_n_equals_stable_sort(scores, data):
    n = data.draw(st.integers(1, scores.shape[1]))
    np.testing.assert_array_equal(top_n_indices(scores, n), np.argsort(-scores, axis=1, kind="stable")[:, :n])


def test_top_n_rejects_n_larger_than_the_list():
    with pytest.raises(ValueError, match="n must be in"):
        top_n_indices(np.zeros((2, 3)), 4)


def test_stochastic_top_n_draws_without_replacement_with_the_right_law():
    p = np.array([0.1, 0.2, 0.1, 0.5, 0.1])
    probs = np.tile(p, (40_000, 1))
    top = stochastic_top_n(probs, 2, np.random.default_rng(123))
    assert (top[:, 0] != top[:, 1]).all()
    first = np.bincount(top[:, 0], minlength=5) / len(top)
    np.testing.assert_allclose(first, p, atol=0.01)
    # second draw of item 3 given item 0 first: 0.5 / 0.9
    mask = top[:, 0] == 0
    assert np.mean(top[mask, 1] == 3) == pytest.approx(0.5 / 0.9, abs=0.03)
    again = stochastic_top_n(probs, 2, np.random.default_rng(123))
    np.testing.assert_array_equal(top, again)


def test_zero_probability_items_come_last():
    keys = sampling_keys(np.array([[0.0, 0.5, 0.0, 0.5]]), np.random.default_rng(1))
    assert set(np.argsort(-keys[0], kind="stable")[:2]) == {1, 3}


# --------------------------------------------------------------------------- Steck
def _steck_shared(scores, cat, p, lam, n, a):
    qs, qi = queues_shared(queue_relevance(scores, lam), cat, len(p), n)
    return steck_greedy(qs, qi, p, lam, n, a)


def test_steck_hand_checked():
    # a0 (X, .5), a1 (X, .3), a2 (Y, .2); p* = (.5, .5); a = .5; N = 2
    scores = np.array([[0.5, 0.3, 0.2]])
    cat = np.array([0, 0, 1])
    p = np.array([0.5, 0.5])
    # step 1: either category gives q~ = (.75, .25): KL = .5 ln(.5/.75) + .5 ln(.5/.25) = 0.143841,
    #   so a0 wins on relevance. step 2 at lambda .5: a1 -> .5*.3 - .5*.143841 = 0.078080;
    #   a2 -> q = (.5, .5), KL 0 -> .5*.2 = 0.1: a2 wins.
    np.testing.assert_array_equal(_steck_shared(scores, cat, p, 0.5, 2, 0.5), [[0, 2]])
    # at lambda .2: a1 -> .8*.3 - .2*.143841 = 0.211232 > a2 -> .8*.2 = 0.16
    np.testing.assert_array_equal(_steck_shared(scores, cat, p, 0.2, 2, 0.5), [[0, 1]])
    np.testing.assert_array_equal(_steck_shared(scores, cat, p, 0.0, 3, 0.5), [[0, 1, 2]])


def _naive_steck(scores, cat, p, lam, n, a):
    chosen, counts = [], np.zeros(len(p))
    for t in range(min(n, len(scores))):
        best, pick = -np.inf, None
        for j in range(len(scores)):
            if j in chosen:
                continue
            c = counts.copy()
            c[cat[j]] += 1
            v = (1 - lam) * (scores[j] + sum(scores[i] for i in chosen)) - lam * smoothed_kl(p, c / (t + 1), a)
            if v > best + 1e-12:  # equal up to float rounding: keep the first candidate
                best, pick = v, j
        chosen.append(pick)
        counts[cat[pick]] += 1
    return chosen


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_steck_equals_the_naive_greedy(data):
    k = data.draw(st.integers(2, 14))
    n_cat = data.draw(st.integers(1, 4))
    cat = np.array(data.draw(st.lists(st.integers(0, n_cat - 1), min_size=k, max_size=k)))
    # scores on a coarse grid: equal scores are exactly equal, different ones clearly different
    scores = np.array(data.draw(st.lists(st.integers(0, 20), min_size=k, max_size=k))) / 20.0
    p = np.array(data.draw(st.lists(st.floats(0.0, 1.0), min_size=n_cat, max_size=n_cat))) + 1e-3
    p /= p.sum()
    lam = data.draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 0.99, 1.0]))
    n = data.draw(st.integers(1, k))
    a = data.draw(st.sampled_from([1e-4, 0.5, 1.0]))
    expected = _naive_steck(scores, cat, p, lam, n, a)
    got = _steck_shared(scores[None, :], cat, p, lam, n, a)[0]
    got_padded = steck_greedy(*queues_padded(queue_relevance(scores[None, :], lam), cat[None, :],
                                             np.ones((1, k), bool), n_cat), p, lam, n, a)[0]
    assert list(got) == expected
    assert list(got_padded) == expected


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(2, 15)), elements=st.floats(0, 1)), st.data())
def test_steck_at_lambda_zero_is_top_n_by_score(scores, data):
    k = scores.shape[1]
    n = data.draw(st.integers(1, k))
    cat = np.array(data.draw(st.lists(st.integers(0, 2), min_size=k, max_size=k)))
    got = _steck_shared(scores, cat, np.array([0.2, 0.3, 0.5]), 0.0, n, 0.5)
    np.testing.assert_array_equal(got, top_n_indices(scores, n))


def test_steck_padded_rows_stop_at_their_length():
    scores = np.array([[0.9, 0.1, 0.5, 0.0], [0.2, 0.8, 0.0, 0.0]])
    cat = np.array([[0, 1, 0, 0], [1, 0, 0, 0]])
    valid = np.array([[True, True, True, False], [True, True, False, False]])
    qs, qi = queues_padded(scores, cat, valid, 2)
    got = steck_greedy(qs, qi, np.array([0.5, 0.5]), 0.0, 4, 0.5)
    np.testing.assert_array_equal(got, [[0, 2, 1, -1], [1, 0, -1, -1]])
    assert math.isfinite(qs[0, 0, 0])
