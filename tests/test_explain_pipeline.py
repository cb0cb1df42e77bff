"""ExplainFlow's building blocks: inputs, stored data, the user sample, joins and summaries."""

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from steps.errors import InputError
from steps.explain.config import ExplainConfig
from steps.explain.explain import ATTRIBUTION_SCHEMA, FEATURE_SCHEMA, USER_SCHEMA, Explanation
from steps.explain.pipeline import (
    choose_users,
    efficiency_check,
    join_explanations,
    recency_profile,
    resolve_dataset,
    store_dataset,
)

SMALL = ExplainConfig.from_dict({"n_neg": 10, "explain_users": 4, "synthetic": {
    "n_users": 20, "n_items": 40, "n_genres": 4, "min_len": 5, "max_len": 8}})


def test_inputs_and_stored_data(tmp_path):
    with pytest.raises(InputError, match="alternatives"):
        resolve_dataset(SMALL, "x", "y", "", tmp_path)
    with pytest.raises(InputError, match="--ml1m-movies needs --ml1m-ratings"):
        resolve_dataset(SMALL, "", "", "movies.dat", tmp_path)
    data = resolve_dataset(SMALL, "", "", "", tmp_path)
    assert (tmp_path / "synthetic" / "train.csv").exists() and data.source == "synthetic"
    stored = store_dataset(data, tmp_path / "stored")
    back = stored.load()
    assert_frame_equal(back.interactions, data.interactions)
    assert_frame_equal(back.item_features, data.item_features)
    assert back.n_items == data.n_items and back.feature_name == "i_genre"


def test_choose_users(tmp_path):
    data = resolve_dataset(SMALL, "", "", "", tmp_path)
    picked = choose_users(data, SMALL)
    assert len(picked) == 4 and picked == sorted(picked) and picked == choose_users(data, SMALL)
    assert choose_users(data, ExplainConfig.from_dict({**SMALL.as_dict(), "seed": 1})) != picked
    assert choose_users(data, ExplainConfig.from_dict({**SMALL.as_dict(), "explain_user_ids": [3, 1]})) == [3, 1]
    with pytest.raises(InputError, match="user 99 is not in the data"):
        choose_users(data, ExplainConfig.from_dict({**SMALL.as_dict(), "explain_user_ids": [1, 99]}))


def explanation(user, rows):
    att = pl.DataFrame([{"user_id": user, "event_position": p, "item_id": None if p is None else 10 + p,
                         "attribution": a, "estimator": e, "baseline": "padding"} for e, p, a in rows], schema=ATTRIBUTION_SCHEMA)
    users = pl.DataFrame([{"user_id": user, "estimator": e, "baseline": "padding", "f_x": 1.0, "f_baseline": 0.0,
                           "top_k_items": [1], "n_events": 2, "n_events_kept": 2, "seconds": 0.1}
                          for e in dict.fromkeys(r[0] for r in rows)], schema=USER_SCHEMA)
    return Explanation(att, users, pl.DataFrame(schema=FEATURE_SCHEMA))


def test_join_recency_and_efficiency():
    a = explanation(7, [("pruned", None, 0.25), ("pruned", -1, 0.75), ("exact", -2, 0.4), ("exact", -1, 0.6)])
    b = explanation(2, [("exact", -1, -0.2), ("exact", -2, 1.2)])
    joined = join_explanations([a, b])
    # users in id order; estimators exact, kernel, pruned; positions −1, −2, then the pruned group
    assert joined.attributions.select("user_id", "estimator", "event_position").rows() == [
        (2, "exact", -1), (2, "exact", -2), (7, "exact", -1), (7, "exact", -2), (7, "pruned", -1), (7, "pruned", None)]
    assert joined.users.select("user_id", "estimator").rows() == [(2, "exact"), (7, "exact"), (7, "pruned")]
    prof = recency_profile(joined.attributions)
    # exact at −1: |−0.2| and |0.6| → 0.4; at −2: |1.2| and |0.4| → 0.8; pruned group left out
    assert prof.select("estimator", "event_position", "mean_abs_attribution", "users").rows() == [
        ("exact", -1, pytest.approx(0.4), 2), ("exact", -2, pytest.approx(0.8), 2), ("pruned", -1, 0.75, 1)]
    eff = efficiency_check(joined.attributions, joined.users)
    # sums: user 2 exact 1.0, user 7 exact 1.0, user 7 pruned 1.0 — all equal f_x − f_baseline = 1
    assert eff["efficiency_gap"].max() == pytest.approx(0.0, abs=1e-12)
