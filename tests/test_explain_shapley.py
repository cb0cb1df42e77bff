"""Shapley estimators (steps/explain/shapley.py) on games given as value tables, in float64."""

from itertools import permutations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steps.explain.game import all_coalitions
from steps.explain.shapley import (
    kernel_shap,
    kernel_weights,
    prune_horizon,
    pruned_players,
    shapley_from_values,
    shapley_weights,
)
from steps.seeding import rng_for


def table_game(values: np.ndarray):
    """A value function over coalitions (B, M) reading v from a table indexed by bitmask."""
    m = int(np.log2(len(values)))
    bits = 1 << np.arange(m)

    def v(coalitions):
        return values[(np.asarray(coalitions, dtype=np.int64) * bits).sum(axis=1)]

    return v


def brute_force_shapley(values: np.ndarray) -> np.ndarray:
    """Average marginal contribution over all M! orderings."""
    m = int(np.log2(len(values)))
    phi = np.zeros(m)
    orders = list(permutations(range(m)))
    for order in orders:
        mask = 0
        for i in order:
            phi[i] += values[mask | (1 << i)] - values[mask]
            mask |= 1 << i
    return phi / len(orders)


def pruned_exact(values: np.ndarray, tolerance: float) -> tuple[int, np.ndarray]:
    """Pruning + exact Shapley over the grouped players, for a table game over events."""
    m = int(np.log2(len(values)))
    v = table_game(values)
    pruning = prune_horizon(v, m, tolerance)
    players = pruned_players(m, pruning.n_kept)
    n_players = players.max() + 1
    grouped = np.array([v(c[players][None, :])[0] for c in all_coalitions(n_players)])
    return pruning.n_kept, shapley_from_values(grouped)


games = st.integers(1, 6).flatmap(
    lambda m: st.lists(st.floats(-10, 10, allow_nan=False), min_size=1 << m, max_size=1 << m).map(np.array)
)


# --------------------------------------------------------------------------- hand-checked
def test_two_player_game_by_hand():
    # v(∅)=0, v({0})=1, v({1})=2, v({0,1})=5
    # φ0 = ½(1 − 0) + ½(5 − 2) = 2 ; φ1 = ½(2 − 0) + ½(5 − 1) = 3 ; sum 5 = v(N) − v(∅)
    values = np.array([0.0, 1.0, 2.0, 5.0])
    np.testing.assert_allclose(shapley_from_values(values), [2.0, 3.0])
    np.testing.assert_allclose(kernel_shap(table_game(values), 2, 100, rng_for(0, "t")), [2.0, 3.0])


def test_weights_by_hand():
    # M = 3: s!(M−s−1)!/M! = 0!2!/3! = 1/3, 1!1!/3! = 1/6, 2!0!/3! = 1/3
    np.testing.assert_allclose(shapley_weights(3), [1 / 3, 1 / 6, 1 / 3])
    # kernel μ(z) = (M−1)/(C(M,s) s (M−s)); M = 3, s = 1: 2/(3·1·2) = 1/3; s = 2: 2/(3·2·1) = 1/3
    np.testing.assert_allclose(kernel_weights(3, np.array([1, 2])), [1 / 3, 1 / 3])


def test_pruned_players_layout():
    # 5 events, keep the 2 most recent: events 0,1,2 → group player 0; events 3, 4 → players 1, 2
    assert pruned_players(5, 2).tolist() == [0, 0, 0, 1, 2]
    assert pruned_players(3, 3).tolist() == [0, 1, 2]  # nothing pruned: one player per event


# --------------------------------------------------------------------------- exact
def test_exact_equals_brute_force_for_seven_players():
    rng = np.random.default_rng(3)
    values = rng.normal(size=1 << 7)
    np.testing.assert_allclose(shapley_from_values(values), brute_force_shapley(values), rtol=0, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(games)
def test_exact_equals_brute_force_over_orderings(values):
    np.testing.assert_allclose(shapley_from_values(values), brute_force_shapley(values), rtol=0, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(games, st.integers(0, 2**31 - 1))
def test_every_estimator_is_efficient(values, seed):
    m = int(np.log2(len(values)))
    total = values[-1] - values[0]
    v = table_game(values)
    assert np.isclose(shapley_from_values(values).sum(), total, atol=1e-9)
    for n_samples in (2, 6, 1 << m):  # sampled and enumerated
        assert np.isclose(kernel_shap(v, m, n_samples, rng_for(seed, "k")).sum(), total, atol=1e-8)
    for tol in (0.0, 0.3, 1.0):
        assert np.isclose(pruned_exact(values, tol)[1].sum(), total, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=8), st.floats(-3, 3), st.integers(0, 1000))
def test_additive_games_return_their_contributions(contrib, const, seed):
    a = np.array(contrib)
    m = len(a)
    values = all_coalitions(m) @ a + const  # v(S) = const + Σ_{i∈S} a_i
    np.testing.assert_allclose(shapley_from_values(values), a, atol=1e-9)
    np.testing.assert_allclose(kernel_shap(table_game(values), m, 1 << m, rng_for(seed, "a")), a, atol=1e-8)
    # pruning: kept events get their own contribution, the group gets the sum of the rest
    n_kept, phi = pruned_exact(values, 0.2)
    np.testing.assert_allclose(phi[-n_kept:], a[m - n_kept :], atol=1e-9)
    if n_kept < m:
        assert np.isclose(phi[0], a[: m - n_kept].sum(), atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=8, max_size=8), st.integers(0, 1000))
def test_sampled_kernel_shap_recovers_additive_games(contrib, seed):
    # 30 sampled pairs for 8 players identify φ; an additive game is fitted without residual
    a = np.array(contrib)
    values = all_coalitions(8) @ a
    np.testing.assert_allclose(kernel_shap(table_game(values), 8, 60, rng_for(seed, "a")), a, atol=1e-7)


def nonlinear_values(m: int, null: int | None = None, swap: tuple[int, int] | None = None, seed: int = 0) -> np.ndarray:
    """v(S) = tanh(w·1_S) + (w'·1_S)² with player ``null`` absent from both terms and players
    ``swap`` given equal weights (so they are symmetric)."""
    rng = np.random.default_rng(seed)
    w, w2 = rng.normal(size=m), rng.normal(size=m)
    if null is not None:
        w[null] = w2[null] = 0.0
    if swap is not None:
        i, j = swap
        w[j], w2[j] = w[i], w2[i]
    z = all_coalitions(m).astype(float)
    return np.tanh(z @ w) + (z @ w2) ** 2


def test_null_events_get_zero():
    values = nonlinear_values(6, null=2)
    assert abs(shapley_from_values(values)[2]) < 1e-12
    assert abs(kernel_shap(table_game(values), 6, 1 << 6, rng_for(0, "n"))[2]) < 1e-10
    assert np.all(np.abs(shapley_from_values(values)[[0, 1, 3, 4, 5]]) > 1e-6)


def test_symmetric_events_get_equal_attributions():
    values = nonlinear_values(6, swap=(1, 4))
    phi = shapley_from_values(values)
    assert abs(phi[1] - phi[4]) < 1e-12
    assert abs(phi[1] - phi[2]) > 1e-6


# --------------------------------------------------------------------------- kernel SHAP
@settings(max_examples=30, deadline=None)
@given(games)
def test_kernel_shap_enumerating_all_coalitions_equals_exact(values):
    m = int(np.log2(len(values)))
    np.testing.assert_allclose(
        kernel_shap(table_game(values), m, (1 << m) - 2, rng_for(0, "e")), shapley_from_values(values), atol=1e-8
    )


def test_kernel_shap_converges_with_more_samples():
    m = 10
    values = nonlinear_values(m, seed=5)
    exact = shapley_from_values(values)
    v = table_game(values)

    def error(n):  # mean absolute error over 5 seeds
        return np.mean([np.abs(kernel_shap(v, m, n, rng_for(s, "c")) - exact).mean() for s in range(5)])

    errors = [error(n) for n in (32, 256, 1000)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05 * np.abs(exact).mean()


def test_kernel_shap_is_seeded():
    values = nonlinear_values(9, seed=1)
    a = kernel_shap(table_game(values), 9, 64, rng_for(7, "s"))
    b = kernel_shap(table_game(values), 9, 64, rng_for(7, "s"))
    c = kernel_shap(table_game(values), 9, 64, rng_for(8, "s"))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# --------------------------------------------------------------------------- pruning
def last_three_model(n_events: int):
    """An event-mask value function that only reads the last 3 events (nonlinearly)."""

    def v(masks):
        m = np.asarray(masks, dtype=float)
        return np.tanh(1.0 * m[:, -1] + 0.7 * m[:, -2] + 0.5 * m[:, -3] + 0.3 * m[:, -1] * m[:, -2])

    return v


@pytest.mark.parametrize("n_events", [4, 8, 20])
def test_model_reading_only_the_last_three_events_is_pruned_to_three(n_events):
    v = last_three_model(n_events)
    pruning = prune_horizon(v, n_events, 0.05)
    assert pruning.n_kept == 3
    # kept 1 or 2: the older group still holds event −3 (or −2): its value is clearly non-zero
    # e.g. kept 2: ½[(tanh 2.5 − tanh 2.0) + (tanh 0.5 − 0)] ≈ 0.242 > 0.05·tanh 2.5 ≈ 0.049
    assert np.all(np.abs(pruning.older_values[:2]) > pruning.tolerance)
    assert np.all(pruning.older_values[2:] == 0.0)


def test_pruning_keeps_everything_when_nothing_is_below_tolerance():
    values = all_coalitions(5) @ np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    assert prune_horizon(table_game(values), 5, 0.05).n_kept == 5
    assert prune_horizon(table_game(values), 1, 0.05).n_kept == 1
