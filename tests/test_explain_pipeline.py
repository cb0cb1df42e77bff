"""ExplainFlow's building blocks: inputs, stored data, the user sample, joins and summaries."""

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from steps.errors import ConfigError, InputError
from steps.explain.config import ExplainConfig
from steps.explain.attribute import ATTRIBUTION_SCHEMA, FEATURE_SCHEMA, USER_SCHEMA, Explanation
from steps.explain.pipeline import (
    check_settings_against_data,
    choose_users,
    describe_settings,
    efficiency_check,
    join_explanations,
    model_quality_legend,
    model_quality_table,
    recency_profile,
    resolve_dataset,
    run_model_metrics,
    store_dataset,
)
from steps.explain.train import metric_rows, training_negative_exclusions
from steps.uncertainty import UncertaintySpec

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


def test_settings_are_checked_against_the_data_before_training(tmp_path):
    data = resolve_dataset(SMALL, "", "", "", tmp_path)  # 10 negatives per dev/test row, 40 items
    base = {**SMALL.as_dict(), "ks": [5, 10]}
    check_settings_against_data(data, ExplainConfig.from_dict(base))
    for bad, message in [
        ({"ks": [5, 12]}, r"ks: K = 12 is larger than the 11 candidates per dev/test row \(1 positive \+ 10 negatives"),
        ({"ks": [5], "full_ranking": True, "top_k": 41}, "top_k: K = 41 is larger than the catalogue of 40 items"),
        ({"baseline": 41}, r"baseline: item 41 is not in the catalogue of synthetic \(item ids 1..40\)"),
        ({"explain_user_ids": [1, 99]}, "user 99 is not in the data"),
    ]:
        with pytest.raises((ConfigError, InputError), match=message):
            check_settings_against_data(data, ExplainConfig.from_dict({**base, **bad}))
    # without a synthetic section the config is not checked for synthetic room; synthesising is
    roomless = ExplainConfig.from_dict({"n_neg": 390})  # default synthetic: 400 items, up to 50 events
    with pytest.raises(ConfigError, match="synthetic.n_items: 400 items leave too few negatives"):
        resolve_dataset(roomless, "", "", "", tmp_path / "r")


def test_training_negatives_exclude_only_the_users_train_items(tmp_path):
    data = resolve_dataset(SMALL, "", "", "", tmp_path)
    keys = training_negative_exclusions(data)
    n = data.n_items
    for split, excluded in (("train", True), ("dev", False), ("test", False)):
        rows = data.split(split)
        # a dev/test item the user never had in train must stay drawable as a negative
        if split != "train":
            train_keys = set((data.split("train")["user_id"] * n + data.split("train")["item_id"]).to_list())
            rows = rows.filter(~(pl.col("user_id") * n + pl.col("item_id")).is_in(list(train_keys)))
        assert rows.height > 0
        in_keys = np.isin((rows["user_id"] * n + rows["item_id"]).to_numpy(), keys)
        assert in_keys.all() if excluded else not in_keys.any()


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


def test_card_says_the_value_scale_top_k_rule_and_feature_columns():
    multi = {"item_feature_columns": ["i_Action", "i_Comedy"], "item_feature_multi_hot": True}
    text = describe_settings(ExplainConfig.from_dict({"value_scale": "notebook", "exclude_history_from_top_k": False}), multi)
    assert "divided by 10 again (`value_scale: notebook`)" in text
    assert "consumed are kept, as in the reference notebook" in text
    assert "2 0/1 column(s) as one multi-valued feature (`i_Action`, `i_Comedy`)" in text
    text = describe_settings(ExplainConfig(), {"item_feature_columns": ["i_genre"], "item_feature_multi_hot": False})
    assert "the mean of the top-K scores." in text and "are excluded" in text and "categorical column `i_genre`" in text
    assert "none (no item_meta.csv)" in describe_settings(ExplainConfig(), {"item_feature_columns": []})
    assert "not computed" in describe_settings(ExplainConfig.from_dict({"feature_level": False}), multi)


def seeds_table(spec: UncertaintySpec) -> pl.DataFrame:
    """model_metrics of two seeds on 100 test rows: GRU4Rec hits on 60 % (seed 1) or 70 % (seed 2), POP on 20 %."""
    pop = {"hr_at_10": np.r_[np.ones(20), np.zeros(80)], "mrr": np.full(100, 0.1)}
    parts = []
    for seed, hits in ((1, 60), (2, 70)):
        gru = {"hr_at_10": np.r_[np.ones(hits), np.zeros(100 - hits)], "mrr": np.full(100, 0.5)}
        parts.append(pl.DataFrame(metric_rows({"GRU4Rec": gru, "POP": pop}, "test", "sampled", spec)).with_columns(
            pl.lit(seed, dtype=pl.Int64).alias("seed")))
    return pl.concat(parts)


def test_run_model_metrics_holm_over_the_run_and_seed_means_of_point_metrics_only():
    spec = UncertaintySpec(resamples=200, seed=1)
    table, by_seed, replicates = run_model_metrics(seeds_table(spec), spec, several_seeds=True)
    assert replicates.table.height == table.height and not any(c.endswith("_star") for c in table.columns)
    assert len(replicates.table["hr_at_10_star"][0]) == 200
    assert {"p_hr_at_10_holm", "p_mrr_holm"} <= set(table.columns)
    gru = table.filter(pl.col("model") == "GRU4Rec")
    assert (gru["p_hr_at_10_holm"] >= gru["p_hr_at_10"]).all() and table["p_mrr_holm"].null_count() == 2  # POP: no test
    assert by_seed.columns == ["model", "split", "protocol", "n_seeds", "hr_at_10_mean", "hr_at_10_sd", "mrr_mean",
                               "mrr_sd", "hr_at_10_seed_lo", "hr_at_10_seed_hi", "mrr_seed_lo", "mrr_seed_hi"]
    assert by_seed.filter(pl.col("model") == "GRU4Rec")["hr_at_10_mean"][0] == pytest.approx(0.65)
    assert run_model_metrics(seeds_table(spec), spec, several_seeds=False)[1] is None
    off, _, none = run_model_metrics(seeds_table(UncertaintySpec(resamples=0)), UncertaintySpec(resamples=0), several_seeds=False)
    assert none is None
    assert off.columns == ["model", "split", "protocol", "rows", "hr_at_10", "mrr", "seed"]


def test_model_quality_table_shows_intervals_and_marks_holm_survivors():
    spec = UncertaintySpec(resamples=200, seed=1)
    table, _, _ = run_model_metrics(seeds_table(spec), spec, several_seeds=True)
    q = model_quality_table(table, (5, 10))
    assert q.columns == ["split", "protocol", "seed", "GRU4Rec HR@10", "POP HR@10", "Δ HR@10", "GRU4Rec nDCG@10",
                         "POP nDCG@10", "Δ nDCG@10", "GRU4Rec MRR", "POP MRR", "Δ MRR"]
    row = q.row(0, named=True)
    assert row["seed"] == "1" and row["GRU4Rec HR@10"].startswith("0.6 [") and row["POP MRR"] == "0.1 [0.1, 0.1]"
    assert row["Δ HR@10"].startswith("0.4 [") and row["Δ HR@10"].endswith(" ✓") and row["Δ nDCG@10"] == "–"
    legend = model_quality_legend(table, spec)
    assert "200 resamples of the evaluated instances" in legend and "Δ = GRU4Rec − POP" in legend
    assert "all 4 p-values" in legend  # 2 seeds × 2 metrics of GRU4Rec
    assert model_quality_table(table.select("model", "split", "protocol", "hr_at_10"), (10,)).is_empty()
