"""Calibration of candidate lists: per-user targets, multi-genre Steck and NAILS, the bundle reader.

Hand-checked numbers for the targets and C_KL; property tests against a plain reference loop for
Steck (both the one-genre queue path and the multi-genre path); NAILS at λ = 1 reaching each user's
target; the reader's errors for bad bundles.
"""

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from steps.align.calibration import (
    ItemGenres,
    candidate_mass,
    history_targets,
    list_mix,
    mixed_targets,
    nails_reweight_lists,
    nails_user_ratio,
    steck_multigenre,
    steck_reference,
)
from steps.align.config import AlignConfig
from steps.align.lists import _steck_select, evaluate_lists, resolve_list_target
from steps.candidates import read_candidate_bundle, write_candidate_bundle
from steps.errors import ConfigError, InputError
from steps.metrics import smoothed_kl

# items 0..3 over genres (a, b, c): 0 = {a}, 1 = {a, b}, 2 = {c}, 3 = {a, b, c}
DENSE = np.array([[1, 0, 0], [0.5, 0.5, 0], [0, 0, 1], [1 / 3, 1 / 3, 1 / 3]])
GENRES = ItemGenres.from_csr(sp.csr_matrix(DENSE))


def test_history_target_counts_each_genre_of_a_film_equally():
    # user 0 watched items 0 and 1; user 1 item 3; user 2 nothing
    p, has = history_targets(np.array([0, 2, 3, 3]), np.array([0, 1, 3]), sp.csr_matrix(DENSE))
    np.testing.assert_allclose(p[0], [0.75, 0.25, 0.0])  # (1 + 0.5) / 2, 0.5 / 2
    np.testing.assert_allclose(p[1], [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_array_equal(p[2], [0, 0, 0])
    assert has.tolist() == [True, True, False]


def test_recency_weighted_history_halves_per_half_life():
    day = 86_400
    # item 0 watched 10 days before item 2: with a 10-day half-life its weight is 1/2
    p, _ = history_targets(np.array([0, 2]), np.array([0, 2]), sp.csr_matrix(DENSE), np.array([0, 10 * day]), half_life_days=10)
    np.testing.assert_allclose(p[0], [0.5 / 1.5, 0.0, 1.0 / 1.5])
    with pytest.raises(InputError, match="timestamps"):
        history_targets(np.array([0, 2]), np.array([0, 2]), sp.csr_matrix(DENSE), None, half_life_days=10)


def test_mixed_target_and_list_mix_and_c_kl_by_hand():
    np.testing.assert_allclose(mixed_targets(np.array([[1.0, 0, 0]]), np.array([0, 0.5, 0.5]), 0.2), [[0.8, 0.1, 0.1]])
    q = list_mix(np.array([[0, 1], [2, -1]]), GENRES)  # -1: an empty slot
    np.testing.assert_allclose(q, [[0.75, 0.25, 0.0], [0.0, 0.0, 1.0]])
    # C_KL(p, q) with alpha = 0.01: p = (0.5, 0.5, 0), q = (0.75, 0.25, 0)
    p = np.array([0.5, 0.5, 0.0])
    qt = 0.99 * q[0] + 0.01 * p
    expected = 0.5 * np.log(0.5 / qt[0]) + 0.5 * np.log(0.5 / qt[1])
    assert smoothed_kl(p, q[0], 0.01) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.5 * np.log(0.5 / 0.7475) + 0.5 * np.log(0.5 / 0.2525), rel=1e-12)


def _random_case(seed, n_items=25, n_genres=5, users=6, m=9, single=False):
    rng = np.random.default_rng(seed)
    dense = np.zeros((n_items, n_genres))
    for i in range(n_items):
        k = 1 if single else rng.integers(1, 4)
        dense[i, rng.choice(n_genres, k, replace=False)] = 1.0 / k
    rows = np.array([rng.choice(n_items, m, replace=False) for _ in range(users)])
    rel = rng.random((users, m))
    p = rng.dirichlet(np.ones(n_genres), size=users)
    p[:, rng.integers(n_genres)] = 0.0  # a genre the targets do not ask for
    p /= p.sum(axis=1, keepdims=True)
    return dense, rows, rel, p


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), lam=st.sampled_from([0.0, 0.2, 0.5, 0.8, 0.95, 1.0]), n=st.integers(1, 6),
       alpha=st.sampled_from([0.01, 0.5]))
def test_multigenre_steck_equals_the_reference_loop(seed, lam, n, alpha):
    dense, rows, rel, p = _random_case(seed)
    got = steck_multigenre(rel, rows, ItemGenres.from_csr(sp.csr_matrix(dense)), p, lam, n, alpha)
    np.testing.assert_array_equal(got, steck_reference(rel, rows, dense, p, lam, n, alpha))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), lam=st.sampled_from([0.0, 0.3, 0.7, 0.99, 1.0]), n=st.integers(1, 6))
def test_single_genre_fast_path_equals_the_reference_loop_and_the_general_path(seed, lam, n):
    dense, rows, rel, p = _random_case(seed, single=True)
    genres = ItemGenres.from_csr(sp.csr_matrix(dense))
    assert genres.single
    fast = _steck_select(rel, rows, genres, p, lam, n, 0.01)
    np.testing.assert_array_equal(fast, steck_reference(rel, rows, dense, p, lam, n, 0.01))
    np.testing.assert_array_equal(fast, steck_multigenre(rel, rows, genres, p, lam, n, 0.01))


def test_steck_at_lambda_zero_keeps_the_score_ranking():
    dense, rows, rel, p = _random_case(3)
    top = steck_multigenre(rel, rows, ItemGenres.from_csr(sp.csr_matrix(dense)), p, 0.0, 5, 0.01)
    np.testing.assert_array_equal(top, np.argsort(-rel, axis=1, kind="stable")[:, :5])


def test_nails_at_lambda_one_gives_each_user_its_target_single_genre():
    dense, rows, rel, p = _random_case(5, single=True)
    genres = ItemGenres.from_csr(sp.csr_matrix(dense))
    probs = np.exp(rel) / np.exp(rel).sum(axis=1, keepdims=True)
    covered = candidate_mass(probs, rows, genres) > 0
    p = np.where(covered, p + 0.05, 0.0)
    p /= p.sum(axis=1, keepdims=True)
    r = nails_user_ratio(probs, rows, genres, p)
    np.testing.assert_allclose(r.ratio, np.where(covered, p / np.where(covered, candidate_mass(probs, rows, genres), 1), 0))
    adj = nails_reweight_lists(probs, rows, genres, r.ratio, 1.0)
    np.testing.assert_allclose(candidate_mass(adj, rows, genres), p, atol=1e-12)
    np.testing.assert_allclose(nails_reweight_lists(probs, rows, genres, r.ratio, 0.0), probs, atol=1e-15)


def test_nails_at_lambda_one_reaches_a_reachable_multigenre_target():
    dense, rows, rel, _ = _random_case(9, users=20, m=12)
    genres = ItemGenres.from_csr(sp.csr_matrix(dense))
    probs = np.exp(rel) / np.exp(rel).sum(axis=1, keepdims=True)
    # a target reachable by construction: the re-weighted mix of some positive per-genre factors
    w = np.random.default_rng(1).gamma(1.0, size=(20, dense.shape[1]))
    p = candidate_mass(nails_reweight_lists(probs, rows, genres, w, 1.0), rows, genres)
    r = nails_user_ratio(probs, rows, genres, p)
    adj = nails_reweight_lists(probs, rows, genres, r.ratio, 1.0)
    np.testing.assert_allclose(candidate_mass(adj, rows, genres), p, atol=1e-9)
    assert r.max_error < 1e-9 and not r.restricted.any()


# --------------------------------------------------------------------------- bundles
ITEMS = pl.DataFrame({"item_id": [10, 20, 30, 40], "categories": [["a"], ["a", "b"], ["c"], ["a", "b", "c"]]})


def _bundle(tmp_path, ids=None, scores=None, items=ITEMS, history=True, name="b"):
    ids = np.array([[10, 20, 30], [40, 30, 10]]) if ids is None else ids
    scores = np.array([[3.0, 2, 1], [1, 2, 3]]) if scores is None else scores
    hist = (np.array([0, 2, 3]), np.array([10, 40, 30]), np.array([1, 2, 3])) if history else None
    write_candidate_bundle(tmp_path / name, np.array([5, 7]), ids, scores, items,
                           heldout=(np.array([0, 1, 2]), np.array([20, 10])), history=hist)
    return tmp_path / name


def test_bundle_round_trip(tmp_path):
    cs = read_candidate_bundle(_bundle(tmp_path))
    np.testing.assert_array_equal(cs.item_ids_sorted[cs.candidate_rows], [[10, 20, 30], [40, 30, 10]])
    np.testing.assert_allclose(cs.item_genre.toarray(), DENSE)
    assert cs.genres == ("a", "b", "c") and not cs.single_genre
    np.testing.assert_array_equal(cs.history_offsets, [0, 2, 3])


def test_bundle_errors_name_file_row_and_value(tmp_path):
    with pytest.raises(InputError, match=r"items.parquet: row 1 \(item_id 20\): column 'categories' is empty"):
        _bundle(tmp_path, items=ITEMS.with_columns(pl.Series("categories", [["a"], [], ["c"], ["a"]])), name="e1")
        read_candidate_bundle(tmp_path / "e1")
    with pytest.raises(InputError, match=r"row 1 \(user_id 7\): item 30 appears twice in 'item_ids' \(positions 1 and 2\)"):
        read_candidate_bundle(_bundle(tmp_path, ids=np.array([[10, 20, 30], [40, 30, 30]]), name="e2"))
    with pytest.raises(InputError, match=r"row 1 \(user_id 7\): column 'scores' holds nan"):
        read_candidate_bundle(_bundle(tmp_path, scores=np.array([[3.0, 2, 1], [1, np.nan, 3]]), name="e3"))
    with pytest.raises(InputError, match="item 99 in 'item_ids' is not in"):
        read_candidate_bundle(_bundle(tmp_path, ids=np.array([[10, 20, 30], [40, 30, 99]]), name="e4"))


def test_bundle_with_rows_of_different_lengths_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = _bundle(tmp_path)
    t = pa.table({"user_id": [5, 7], "item_ids": [[10, 20, 30], [40, 30]], "scores": [[3.0, 2, 1], [1.0, 2]]})
    pq.write_table(t, folder / "candidates.parquet")
    with pytest.raises(InputError, match="checksum"):  # the manifest notices the change first
        read_candidate_bundle(folder)
    (folder / "manifest.json").unlink()  # a hand-made folder without a manifest
    with pytest.raises(InputError, match=r"row 1 \(user_id 7\): 'item_ids' has 2 candidates but row 0 has 3"):
        read_candidate_bundle(folder, verify=False)


def test_targets_refuse_unknown_genres_and_users_without_history(tmp_path):
    cs = read_candidate_bundle(_bundle(tmp_path))
    with pytest.raises(InputError, match=r"genre .Drama. is not in the item table of .*its genres: a, b, c"):
        resolve_list_target({"name": "t", "distribution": {"Drama": 1.0}}, cs)
    ids = np.array([[10, 20, 30], [40, 30, 10]])
    write_candidate_bundle(tmp_path / "h", np.array([5, 7]), ids, np.ones((2, 3)), ITEMS,
                           history=(np.array([0, 2, 2]), np.array([10, 40]), None))
    cs = read_candidate_bundle(tmp_path / "h")
    with pytest.raises(InputError, match=r"user_id 7 \(candidates row 1\) has no history"):
        resolve_list_target("history", cs)
    skipped = resolve_list_target("history", cs, missing_history="skip")
    assert skipped.users.tolist() == [0] and "1 user(s) without history were skipped" in skipped.notes[0]


def test_config_refuses_bad_targets_and_datasets():
    with pytest.raises(ConfigError, match=r"targets\[0\] \(h\)\.half_life_days"):
        AlignConfig.from_dict({"targets": [{"name": "h", "kind": "history", "half_life_days": -1}]})
    with pytest.raises(ConfigError, match="history_mix needs a weight"):
        AlignConfig.from_dict({"targets": [{"name": "h", "kind": "history_mix"}]})
    with pytest.raises(ConfigError, match=r"datasets\[0\] \(n\)\.targets: per-user targets"):
        AlignConfig.from_dict({"datasets": [{"name": "n", "kind": "ebnerd", "targets": ["history"]}]})
    with pytest.raises(ConfigError, match="give exactly one of path, from_run or synthetic"):
        AlignConfig.from_dict({"datasets": [{"name": "c", "kind": "candidates"}]})


def test_evaluate_lists_calibrates_toward_the_history(tmp_path):
    from steps.align.synthetic_lists import SyntheticListsSpec, write_synthetic_lists

    folder = write_synthetic_lists(tmp_path / "s", SyntheticListsSpec(users=120, items=150, candidates=30))
    cs = read_candidate_bundle(folder)
    cfg = AlignConfig.from_dict({"targets": ["history"], "lambdas": [0, 0.5, 0.99], "selections": ["det"]})
    target = resolve_list_target("history", cs)
    res = evaluate_lists(cs, target, "steck", cfg).results.sort("lambda")
    assert res["c_kl_mean"][0] > 2 * res["c_kl_mean"][2]  # calibration lowers the miscalibration
    assert res["precision_at_n"].null_count() == 0 and 0 < res["precision_at_n"][0] <= 1
    nails = evaluate_lists(cs, target, "nails", cfg).results.sort("lambda")
    assert nails["kl_all"][2] < nails["kl_all"][0]


def test_exact_ties_go_to_the_first_listed_candidate():
    # relevance on a coarse grid and a target in quarters: objectives tie exactly between
    # candidates of different genre sets, whose values are rounded differently
    rng = np.random.default_rng(4)
    for _ in range(60):
        dense, rows, _, _ = _random_case(int(rng.integers(1 << 30)), users=4, m=8)
        rel = rng.choice([0.0, 0.25, 0.5], size=rows.shape)
        p = rng.choice([0.0, 0.25, 0.5], size=(4, dense.shape[1])) + 0.25
        p /= p.sum(axis=1, keepdims=True)
        for lam in (0.5, 1.0):
            got = steck_multigenre(rel, rows, ItemGenres.from_csr(sp.csr_matrix(dense)), p, lam, 4, 0.01)
            np.testing.assert_array_equal(got, steck_reference(rel, rows, dense, p, lam, 4, 0.01))


def test_results_do_not_depend_on_the_chunk_size(tmp_path):
    from steps.align.synthetic_lists import SyntheticListsSpec, write_synthetic_lists

    cs = read_candidate_bundle(write_synthetic_lists(tmp_path / "s", SyntheticListsSpec(users=90, items=120, candidates=20)))
    for spec in ("history", "Uniform", {"name": "skew", "distribution": {"Action": 0.97, "Adventure": 0.03}}):
        target = resolve_list_target(spec, cs)
        for method in ("nails", "nails_steck"):
            small = AlignConfig.from_dict({"targets": [spec], "lambdas": [0, 0.9, 1.0], "list_chunk_cells": 1000})
            large = AlignConfig.from_dict({"targets": [spec], "lambdas": [0, 0.9, 1.0]})
            a = evaluate_lists(cs, target, method, small).results
            b = evaluate_lists(cs, target, method, large).results
            assert a.drop("n_repeats").equals(b.drop("n_repeats")) or np.allclose(
                a.select(pl.col(pl.Float64)).fill_null(0).to_numpy(), b.select(pl.col(pl.Float64)).fill_null(0).to_numpy(),
                atol=1e-9, equal_nan=True)
            assert not np.isnan(a["kl_all"].drop_nulls().to_numpy()).any()


def test_evaluate_lists_reports_intervals_and_deltas_to_lambda_zero(tmp_path):
    from steps.align.synthetic_lists import SyntheticListsSpec, write_synthetic_lists

    cs = read_candidate_bundle(write_synthetic_lists(tmp_path / "s", SyntheticListsSpec(users=90, items=120, candidates=20)))
    cfg = AlignConfig.from_dict({"lambdas": [0, 0.5, 1.0], "uncertainty": {"resamples": 200}})
    for method in ("nails", "steck"):
        res = evaluate_lists(cs, resolve_list_target("history", cs), method, cfg).results
        for m in ("kl_at_n", "user_kl_mean", "c_kl_mean", "coverage_at_n", "precision_at_n", "recall_at_n", "ndcg_at_n"):
            assert (res[f"{m}_lo"] <= res[m] + 1e-9).all() and (res[m] <= res[f"{m}_hi"] + 1e-9).all(), m
            d = res.filter(pl.col("lambda") > 0)
            assert (d[f"delta_{m}_lo"] <= d[f"delta_{m}"] + 1e-9).all() and (d[f"delta_{m}"] <= d[f"delta_{m}_hi"] + 1e-9).all()
            base = res.filter(pl.col("lambda") == 0)
            assert d[f"p_{m}"].null_count() == 0 and base[f"p_{m}"].null_count() == base.height
        assert (res.filter(pl.col("lambda") == 1.0)["p_c_kl_mean"] < 0.05).all()
