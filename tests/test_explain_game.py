"""The value function of a GRU4Rec explanation and one user's explanation (float64)."""

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steps.errors import InputError
from steps.explain.config import ExplainConfig
from steps.explain.attribute import NO_FEATURE, events_present, explain_user, feature_membership, top_k_items
from steps.explain.game import SequenceGame, all_coalitions
from steps.explain.model import GRU4Rec, as_dtype
from steps.explain.shapley import shapley_from_values

N_ITEMS = 40
HISTORY = np.array([3, 7, 9, 11, 4, 5, 8])
TOP_K = np.array([1, 2, 30])


@pytest.fixture(scope="module")
def model():
    m = GRU4Rec(N_ITEMS, emb_size=8, hidden_size=6, seed=4)
    with torch.no_grad():  # larger weights than the N(0, 0.01²) init, so effects are not tiny
        m.i_embeddings.weight.mul_(100.0)
        m.out.weight.mul_(50.0)
    return as_dtype(m, torch.float64)


def direct_values(model, history, top_k, baseline):
    """v(S) by running the model itself on each perturbed history (one call per coalition)."""
    emb = model.i_embeddings.weight
    out = []
    for mask in all_coalitions(len(history)):
        if baseline == "removal":
            h = history[mask]
            if len(h) == 0:  # no events: the GRU state stays 0, the user vector is out.bias
                out.append(float(model.out.bias @ emb[torch.from_numpy(top_k)].mean(0)))
                continue
        else:
            h = np.where(mask, history, 0 if baseline == "padding" else baseline)
        scores = model(torch.from_numpy(h)[None], torch.tensor([len(h)]), torch.from_numpy(top_k)[None])
        out.append(float(scores.mean()))
    return np.array(out)


@pytest.mark.parametrize("baseline", ["padding", "removal", 17])
def test_all_paths_equal_the_model_on_perturbed_histories(model, baseline):
    game = SequenceGame(model, HISTORY, TOP_K, baseline)
    expected = direct_values(model, HISTORY, TOP_K, baseline)
    np.testing.assert_allclose(game.all_values(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(game.values(all_coalitions(len(HISTORY))), expected, rtol=0, atol=1e-12)
    chunked = SequenceGame(model, HISTORY, TOP_K, baseline, max_states=4)  # 2 players per chunk
    np.testing.assert_allclose(chunked.all_values(), expected, rtol=0, atol=1e-12)
    assert game.full_value() == pytest.approx(expected[-1], abs=1e-12)
    assert game.empty_value() == pytest.approx(expected[0], abs=1e-12)
    assert np.ptp(expected) > 1e-3  # the coalitions do change the score


@pytest.mark.parametrize("players", [[0, 0, 1, 1, 1, 2, 3], [0, 1, 0, 2, 1, 2, 0]])
def test_grouped_players(model, players):
    game = SequenceGame(model, HISTORY, TOP_K, "padding").with_players(np.array(players))
    events = direct_values(model, HISTORY, TOP_K, "padding")
    coalitions = all_coalitions(game.n_players)
    event_index = (coalitions[:, players] * (1 << np.arange(len(HISTORY)))).sum(axis=1)
    np.testing.assert_allclose(game.all_values(), events[event_index], atol=1e-12)


def test_explicit_top_k_not_the_baselines(model):
    """The defect of the reference notebooks: the top-K must be the user's, computed from the
    unperturbed history, also when the baseline sequence is scored."""
    cfg = ExplainConfig.from_dict({"top_k": 3, "estimators": ["exact"], "exclude_history_from_top_k": False})
    user_top = top_k_items(model, HISTORY, 3, exclude_history=False)
    baseline_seq = np.zeros_like(HISTORY)
    with torch.no_grad():
        scores = model.score_all(torch.from_numpy(HISTORY)[None], torch.tensor([7]))[0].numpy()
        base_scores = model(torch.from_numpy(baseline_seq)[None], torch.tensor([7]), torch.arange(N_ITEMS)[None])[0].numpy()
    np.testing.assert_array_equal(np.sort(user_top), np.sort(np.argsort(-scores[1:])[:3] + 1))
    baseline_top = np.argsort(-base_scores[1:])[:3] + 1
    assert set(baseline_top) != set(user_top)  # so the test can tell the two apart
    e = explain_user(model, 1, HISTORY, cfg)
    row = e.users.row(0, named=True)
    assert row["top_k_items"] == user_top.tolist()
    assert row["f_x"] == pytest.approx(scores[user_top].mean(), abs=1e-12)
    assert row["f_baseline"] == pytest.approx(base_scores[user_top].mean(), abs=1e-12)
    assert row["f_baseline"] != pytest.approx(base_scores[baseline_top].mean(), abs=1e-6)


def test_top_k_excludes_padding_and_history(model):
    top = top_k_items(model, HISTORY, 10, exclude_history=True)
    assert len(set(top)) == 10 and 0 not in top and not set(top) & set(HISTORY)
    with pytest.raises(InputError, match="K = 33 is larger than the 32 items"):
        top_k_items(model, HISTORY, 33)  # 39 items minus 7 history items
    with pytest.raises(InputError, match="K = 40"):
        top_k_items(model, HISTORY, 40, exclude_history=False)


def test_top_k_excludes_everything_consumed_and_stays_in_the_data_catalogue(model):
    """Items consumed before the history_max window are not recommended again; a checkpoint with
    more item embeddings than the data has items recommends only the data's items."""
    free = top_k_items(model, HISTORY, 5)
    older = free[:2]  # two items the user consumed long ago (outside the window)
    consumed = np.concatenate([HISTORY, older])
    top = top_k_items(model, HISTORY, 5, consumed=consumed)
    assert not set(top) & set(consumed) and top[:3].tolist() == free[2:].tolist()
    assert top_k_items(model, HISTORY, 5, exclude_history=False, consumed=consumed).tolist() == \
        top_k_items(model, HISTORY, 5, exclude_history=False).tolist()
    small = top_k_items(model, HISTORY, 5, n_items=20)
    with torch.no_grad():
        scores = model.score_all(torch.from_numpy(HISTORY)[None], torch.tensor([len(HISTORY)]))[0, :20].numpy()
    scores[0] = -np.inf
    scores[HISTORY[HISTORY < 20]] = -np.inf
    assert small.tolist() == np.argsort(-scores, kind="stable")[:5].tolist() and small.max() < 20
    with pytest.raises(InputError, match=r"K = 20 is larger than the 12 items"):
        top_k_items(model, HISTORY, 20, n_items=20)  # 19 items minus the 7 history items


def test_explanation_tables_add_up(model):
    cfg = ExplainConfig.from_dict({"top_k": 4, "kernel_samples": 64, "pruning_tolerance": 0.3})
    codes = np.arange(N_ITEMS) % 3
    codes[5] = -1
    e = explain_user(model, 9, HISTORY, cfg, (codes, ["g0", "g1", "g2"]))
    assert set(e.attributions["estimator"]) == {"exact", "kernel", "pruned"}
    sums = e.attributions.group_by("estimator").agg(pl.col("attribution").sum())
    users = e.users.join(sums, on="estimator")
    np.testing.assert_allclose(users["attribution"], users["f_x"] - users["f_baseline"], atol=1e-12)
    exact = e.attributions.filter(pl.col("estimator") == "exact").sort("event_position")
    assert exact["event_position"].to_list() == list(range(-7, 0))
    assert exact["item_id"].to_list() == HISTORY.tolist()
    np.testing.assert_allclose(
        exact["attribution"], shapley_from_values(direct_values(model, HISTORY, np.array(e.users["top_k_items"][0].to_list()), "padding")),
        atol=1e-12,
    )
    pruned = e.users.filter(pl.col("estimator") == "pruned").row(0, named=True)
    rows = e.attributions.filter(pl.col("estimator") == "pruned")
    grouped = pruned["n_events_kept"] < 6  # one older event left alone is reported as that event
    assert rows.height == pruned["n_events_kept"] + grouped
    assert rows["event_position"].null_count() == grouped
    # feature level: one player per distinct feature of the history's items; "<none>" for item 5
    f = e.features
    assert f["attribution"].sum() == pytest.approx(pruned["f_x"] - pruned["f_baseline"], abs=1e-12)
    assert dict(zip(f["feature"], f["n_events"])) == {"<none>": 1, "g0": 2, "g1": 2, "g2": 2}


def test_bad_inputs(model):
    with pytest.raises(InputError, match="empty history"):
        SequenceGame(model, np.array([], dtype=np.int64), TOP_K)
    with pytest.raises(InputError, match="item id 40 at position 2 is unknown"):
        SequenceGame(model, np.array([1, 2, 40]), TOP_K)
    with pytest.raises(InputError, match="baseline: item id 99"):
        SequenceGame(model, HISTORY, TOP_K, 99)
    with pytest.raises(InputError, match="top_k_items: item id 0"):
        SequenceGame(model, HISTORY, np.array([0]))


def test_all_values_do_not_depend_on_worker_threads(model):
    game = SequenceGame(model, HISTORY, TOP_K, "removal", max_states=8)  # 16 chunks of 8 states
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = game.all_values()
        torch.set_num_threads(2)
        two = game.all_values()
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(one, two)
    assert torch.get_num_threads() == before


# --------------------------------------------------------------------------- value scale, top-K rule, estimator sharing, features
def hand_built_model():
    """GRU4Rec with 1-dim embeddings e = [0, 5, 4, 3, 2, 1] (items 0..5), hidden size 1, whose GRU
    forgets everything but the last item: W_ih = (0, 0, 1), W_hh = 0, update-gate bias −60
    (z = σ(−60) ≈ 1e-26), so h = tanh(e_last); out = identity. Score of item i: tanh(e_last) · e_i."""
    m = GRU4Rec(6, emb_size=1, hidden_size=1)
    with torch.no_grad():
        m.i_embeddings.weight.copy_(torch.tensor([[0.0], [5.0], [4.0], [3.0], [2.0], [1.0]]))
        m.rnn.weight_ih_l0.copy_(torch.tensor([[0.0], [0.0], [1.0]]))
        m.rnn.weight_hh_l0.zero_()
        m.rnn.bias_ih_l0.copy_(torch.tensor([0.0, -60.0, 0.0]))
        m.rnn.bias_hh_l0.zero_()
        m.out.weight.fill_(1.0)
        m.out.bias.zero_()
    return as_dtype(m, torch.float64)


@pytest.mark.parametrize("scale, keep_consumed, top, mean_score", [
    ("notebook", True, [1, 2, 3], (5 + 4 + 3) / 3 / 10),  # the reference notebook: /10 again, consumed kept
    ("notebook", False, [3, 4, 5], (3 + 2 + 1) / 3 / 10),
    ("mean", True, [1, 2, 3], (5 + 4 + 3) / 3),
    ("mean", False, [3, 4, 5], (3 + 2 + 1) / 3),  # the default
])
def test_value_scale_and_top_k_rule_on_a_hand_built_model(scale, keep_consumed, top, mean_score):
    """History [1, 2]: the user vector is tanh(e_2) = tanh(4), so f(x) = tanh(4) · mean e over the
    top-3; with the padding baseline the last event alone decides (h = tanh(0) = 0 without it):
    φ(−1) = f(x), φ(−2) = 0, f(baseline) = 0."""
    cfg = ExplainConfig.from_dict({"top_k": 3, "value_scale": scale, "exclude_history_from_top_k": not keep_consumed,
                                   "estimators": ["exact", "kernel", "pruned"], "kernel_samples": 8, "feature_level": False})
    e = explain_user(hand_built_model(), 1, np.array([1, 2]), cfg)
    f_x = np.tanh(4.0) * mean_score
    for row in e.users.iter_rows(named=True):
        assert row["top_k_items"] == top
        assert row["f_x"] == pytest.approx(f_x, abs=1e-14) and row["f_baseline"] == 0.0
    for est in ("exact", "kernel", "pruned"):
        att = e.attributions.filter(pl.col("estimator") == est).sort("event_position")
        np.testing.assert_allclose(att["attribution"], [0.0, f_x], atol=1e-14)


def test_pruned_with_a_full_horizon_reuses_the_exact_evaluation(model, monkeypatch):
    calls = []
    real = SequenceGame.all_values
    monkeypatch.setattr(SequenceGame, "all_values", lambda self: calls.append(self.n_players) or real(self))
    for order in (["exact", "pruned"], ["pruned", "exact"]):
        calls.clear()
        cfg = ExplainConfig.from_dict({"top_k": 4, "estimators": order, "pruning_tolerance": 0.0, "feature_level": False})
        e = explain_user(model, 3, HISTORY, cfg)
        assert calls == [7]  # one evaluation of all 2^7 coalitions
        att = {est: e.attributions.filter(pl.col("estimator") == est).sort("event_position") for est in order}
        assert att["pruned"]["attribution"].to_list() == att["exact"]["attribution"].to_list()
        assert att["pruned"]["event_position"].to_list() == list(range(-7, 0))
        assert e.users.filter(pl.col("estimator") == "pruned")["n_events_kept"].item() == 7
    calls.clear()  # a horizon that groups events evaluates the grouped game as well
    cfg = ExplainConfig.from_dict({"top_k": 4, "estimators": ["exact", "pruned"], "pruning_tolerance": 0.5,
                                   "feature_level": False})
    kept = explain_user(model, 3, HISTORY, cfg).users.filter(pl.col("estimator") == "pruned")["n_events_kept"].item()
    assert kept < 6 and calls == [7, kept + 1]


def test_every_estimator_evaluates_with_single_threaded_kernels(model, monkeypatch):
    """One thread policy (game.run_chunks) for exact, kernel, pruned and feature-level: kernels
    run single-threaded (work is split into independent chunks on worker threads), and the
    thread setting is restored afterwards."""
    seen = []
    real = SequenceGame._cell
    monkeypatch.setattr(SequenceGame, "_cell", lambda self, *a: seen.append(torch.get_num_threads()) or real(self, *a))
    before = torch.get_num_threads()
    cfg = ExplainConfig.from_dict({"top_k": 4, "kernel_samples": 600, "pruning_tolerance": 0.3})
    codes = np.arange(N_ITEMS) % 3
    try:
        torch.set_num_threads(2)
        two = explain_user(model, 9, HISTORY, cfg, (codes, ["g0", "g1", "g2"]))
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        one = explain_user(model, 9, HISTORY, cfg, (codes, ["g0", "g1", "g2"]))
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}
    assert two.attributions.equals(one.attributions) and two.features.equals(one.features)


def test_multi_hot_features_sum_to_the_total(model):
    """Items with several genres: one player per genre; an event is present when all its
    genres are. Checked against the event game evaluated by running the model itself."""
    names = ["Action", "Comedy", "Drama"]
    member = np.zeros((N_ITEMS, 3), dtype=bool)
    member[[3, 7, 9], 0] = True  # HISTORY = [3, 7, 9, 11, 4, 5, 8]
    member[[9, 11, 4], 1] = True  # item 9: Action and Comedy
    member[8, 2] = True  # item 5 has no genre
    cfg = ExplainConfig.from_dict({"top_k": 4, "estimators": ["exact"]})
    e = explain_user(model, 5, HISTORY, cfg, (member, names))
    f = e.features
    assert f["feature"].to_list() == ["Action", "Comedy", "Drama", "<none>"]
    assert f["n_events"].to_list() == [3, 3, 1, 1]
    row = e.users.row(0, named=True)
    assert f["attribution"].sum() == pytest.approx(row["f_x"] - row["f_baseline"], abs=1e-12)
    # by hand: with only Action present, events 3 and 7 are (9 also needs Comedy)
    assert events_present(np.array([[1, 0, 0, 0]], bool), feature_membership((member, names), HISTORY)[0]).tolist() == \
        [[True, True, False, False, False, False, False]]
    events = direct_values(model, HISTORY, np.array(row["top_k_items"]), "padding")
    genre_sets = [{0}, {0}, {0, 1}, {1}, {1}, {3}, {2}]  # players of each event (3 = <none>)
    table = np.array([events[sum(1 << t for t, g in enumerate(genre_sets) if g <= {p for p in range(4) if k >> p & 1})]
                      for k in range(16)])
    np.testing.assert_allclose(f["attribution"], shapley_from_values(table), atol=1e-12)
    assert np.ptp(f["attribution"].to_numpy()) > 1e-3


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 5), min_size=n, max_size=n),  # each event's item (ids 0..5)
    st.lists(st.lists(st.booleans(), min_size=3, max_size=3), min_size=6, max_size=6),  # item → 3 values
)))
def test_feature_membership_invariants(case):
    """Every event belongs to at least one player (``<none>`` when its item has no value); the
    full coalition keeps every event and the empty one none (so feature attributions sum to
    f(x) − f(baseline)); an event is present exactly when all of its values are."""
    history, table = np.array(case[0]), np.array(case[1])
    member, labels = feature_membership((table, ["a", "b", "c"]), history)
    assert member.any(axis=1).all() and member.any(axis=0).all()
    assert (NO_FEATURE in labels) == (~table[history].any(axis=1)).any()
    coalitions = all_coalitions(len(labels))
    present = events_present(coalitions, member)
    assert present[-1].all() and not present[0].any()
    expected = np.array([[set(np.flatnonzero(member[t])) <= set(np.flatnonzero(c)) for t in range(len(history))]
                         for c in coalitions])
    assert np.array_equal(present, expected)
    codes = np.where(table.any(axis=1), table.argmax(axis=1), -1)  # categorical: one value per item
    m1, l1 = feature_membership((codes, ["a", "b", "c"]), history)
    assert (m1.sum(axis=1) == 1).all()
