"""evaluate_method end to end on a small synthetic dump: determinism, invariants, submissions."""

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from steps.align.config import AlignConfig
from steps.align.data import iter_impressions, prepare_dump
from steps.align.evaluate import evaluate_method, steck_positions, target_layout
from steps.align.report import best_lambdas, comparison_table, comparison_wide
from steps.align.submission import read_submission, submission_lines
from steps.align.synthetic import SyntheticDumpSpec, write_synthetic_dump
from steps.align.targets import resolve_target
from steps.metrics import TIE_RULES, ragged_ranks, ranking_metrics
from steps.ragged import segment_softmax

SPEC = SyntheticDumpSpec(n_articles=300, n_candidates=80, n_ba_rows=600, n_impressions=900, chunk_rows=400, seed=9)
CFG = AlignConfig.from_dict({"lambdas": [0, 0.5, 1.0], "repeats": 2, "ba_chunk_rows": 250, "batch_impressions": 400})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    paths = write_synthetic_dump(out, SPEC)
    return prepare_dump(paths["predictions"], paths["articles"], out / "prepared"), out


def run(prepared, target_name, method, out, cfg=CFG):
    p, _ = prepared
    target = resolve_target(target_name, p.candidate_categories)
    return evaluate_method(p, target_layout(p, target, cfg.unknown_category_weight), method, cfg, out)


def test_same_seed_identical_results_and_submissions(prepared, tmp_path):
    a = run(prepared, "Uniform", "nails", tmp_path / "a")
    b = run(prepared, "Uniform", "nails", tmp_path / "b")
    assert_frame_equal(a.results, b.results)
    assert_frame_equal(a.category_mix, b.category_mix)
    for sa, sb in zip(a.submissions, b.submissions):
        assert sa["file"].sha256 == sb["file"].sha256
    other = run(prepared, "Uniform", "nails", tmp_path / "c", AlignConfig.from_dict({**CFG.as_dict(), "seed": 5}))
    stoch = pl.col("selection") == "stoch"
    assert not a.results.filter(stoch)["kl_at_n"].equals(other.results.filter(stoch)["kl_at_n"])
    assert a.results.filter(~stoch).equals(other.results.filter(~stoch))


def test_lambda_zero_is_the_model_and_lambda_one_matches_the_target(prepared, tmp_path):
    res = run(prepared, "Editorial", "nails", tmp_path).results
    det = res.filter(pl.col("selection") == "det").sort("lambda")
    steck = run(prepared, "Editorial", "steck", tmp_path).results.sort("lambda")
    # at lambda 0 NAILS det, Steck and the untouched model are the same ranking
    for col in ["kl_at_n", "user_kl_mean", "coverage_at_n", "auc", "mrr", "ndcg_at_10"]:
        assert det[col][0] == pytest.approx(steck[col][0])
    # KL of the summed probabilities falls to ~0 at lambda 1 (the label-shift correction)
    assert det["kl_all"][-1] < 0.02 * det["kl_all"][0]
    assert det["kl_at_n"][-1] < det["kl_at_n"][0]
    # Steck at lambda 1 calibrates every list: user-level KL far below the model's
    assert steck["user_kl_mean"][-1] < 0.5 * steck["user_kl_mean"][0]
    assert steck["kl_all"].null_count() == 3
    stoch = res.filter(pl.col("selection") == "stoch")
    assert (stoch["n_repeats"] == 2).all() and stoch["kl_at_n_sd"].null_count() == 0


def test_submission_ranks_are_permutations_in_view_order(prepared, tmp_path):
    p, _ = prepared
    out = run(prepared, "Uniform", "steck", tmp_path)
    sub = next(s for s in out.submissions if s["lambda"] == 0.5)
    ids, ranks = read_submission(sub["file"].path)
    batch = next(iter_impressions(p, 10_000))
    np.testing.assert_array_equal(ids, batch.impression_ids)
    lens = np.diff(batch.offsets)
    assert [len(r) for r in ranks] == lens.tolist()
    assert all(sorted(r) == list(range(1, len(r) + 1)) for r in ranks)
    # the ranks are Steck's greedy order for this lambda
    target = resolve_target("Uniform", p.candidate_categories)
    lay = target_layout(p, target, CFG.unknown_category_weight)
    probs = segment_softmax(batch.offsets, batch.logits)
    pos = steck_positions(batch.offsets, probs, lay.slot_of_category[batch.category_index],
                          lay.p_star_with_other(CFG.unknown_category_weight), (0.5,), CFG.steck_smoothing_rerank)[0.5]
    np.testing.assert_array_equal(np.concatenate(ranks), pos + 1)


def test_det_submission_at_lambda_zero_ranks_by_score(prepared, tmp_path):
    p, _ = prepared
    out = run(prepared, "Editorial", "nails", tmp_path)
    sub = next(s for s in out.submissions if s["lambda"] == 0.0 and s["selection"] == "det")
    _, ranks = read_submission(sub["file"].path)
    batch = next(iter_impressions(p, 10_000))
    pos, _ = ragged_ranks(batch.offsets, batch.logits)
    np.testing.assert_array_equal(np.concatenate(ranks), pos + 1)


def test_submission_line_format():
    text = submission_lines(np.array([237, 291]), np.array([0, 3, 5]), np.array([2, 3, 1, 2, 1]))
    assert text == "237 [2,3,1]\n291 [2,1]\n"


def test_best_lambda_and_comparison(prepared, tmp_path):
    res = pl.concat([run(prepared, "Editorial", m, tmp_path).results for m in ["nails", "steck", "nails_steck"]])
    mix = pl.concat([run(prepared, "Editorial", m, tmp_path).category_mix for m in ["nails", "steck"]])
    cfg = AlignConfig.from_dict({**CFG.as_dict(), "best_lambda": {"Editorial": {"nails_det": 0.5}}})
    best = best_lambdas(res, cfg)
    row = best.filter(pl.col("compared") == "nails_det").row(0, named=True)
    assert row["lambda"] == 0.5 and row["chosen_by"] == "config"
    auto = best.filter(pl.col("compared") == "steck").row(0, named=True)
    steck = res.filter(pl.col("method") == "steck")
    assert auto["lambda"] == steck.sort("user_kl_mean")["lambda"][0] and auto["chosen_by"] == "auto"
    comp = comparison_table(res, mix, best)
    wide = comparison_wide(comp, "Editorial")
    assert wide["row"].to_list()[-2:] == ["kl", "coverage"]
    assert "baseline" in wide.columns and "nails_det_0.5" in wide.columns


def test_nails_steck_at_lambda_zero_is_nails_at_its_lambda(prepared, tmp_path):
    cfg = AlignConfig.from_dict({**CFG.as_dict(), "nails_steck_nails_lambda_default": 0.5})
    nails = run(prepared, "Uniform", "nails", tmp_path, cfg).results
    combo = run(prepared, "Uniform", "nails_steck", tmp_path, cfg).results
    a = nails.filter((pl.col("selection") == "det") & (pl.col("lambda") == 0.5))
    b = combo.filter(pl.col("lambda") == 0.0)
    for col in ["kl_at_n", "user_kl_mean", "coverage_at_n", "auc", "mrr", "ndcg_at_5", "ndcg_at_10"]:
        assert b[col][0] == pytest.approx(a[col][0], abs=1e-12), col


def test_accuracy_columns_rank_tied_scores_by_the_configured_rule(prepared, tmp_path):
    """Logits rounded to 0.5 tie often; NAILS det at λ = 0 ranks by the model's scores, so its
    accuracy columns are the metric library's under the configured ``ties``."""
    import pyarrow.parquet as pq

    _, out = prepared
    table = pl.read_parquet(out / "predictions.parquet").with_columns(
        (pl.col("scores").list.eval(pl.element() * 2).list.eval(pl.element().round(0)) / 2).cast(pl.List(pl.Float32)))
    pq.write_table(table.to_arrow(), tmp_path / "tied.parquet")
    tied = prepare_dump(tmp_path / "tied.parquet", out / "articles.parquet", tmp_path / "prepared")
    batch = next(iter_impressions(tied, 10_000))
    rows = batch.labelled_rows
    mrr = {}
    for ties in TIE_RULES:
        cfg = AlignConfig.from_dict({"lambdas": [0.0], "selections": ["det"], "submissions": False, "ties": ties})
        got = run((tied, out), "Uniform", "nails", tmp_path / ties, cfg).results.row(0, named=True)
        want = ranking_metrics(batch.offsets, batch.logits, batch.clicked, ties=ties)
        for name in ("auc", "mrr", "ndcg_at_5", "ndcg_at_10"):
            assert got[name] == pytest.approx(float(np.mean(want[name][rows])), rel=1e-12), (ties, name)
        mrr[ties] = got["mrr"]
    assert mrr["inview"] != mrr["ebrec"] and min(mrr["inview"], mrr["ebrec"]) < mrr["mean"] < max(mrr["inview"], mrr["ebrec"])


def test_results_carry_intervals_that_bracket_the_estimates_and_deltas_to_lambda_zero(prepared, tmp_path):
    from steps.align.evaluate import INTERVAL_METRICS

    for method in ("nails", "steck"):
        res = run(prepared, "Uniform", method, tmp_path / method).results
        for m in INTERVAL_METRICS:
            for col in (f"{m}_lo", f"{m}_hi", f"delta_{m}", f"delta_{m}_lo", f"delta_{m}_hi", f"p_{m}"):
                assert col in res.columns
            has = res.filter(pl.col(m).is_not_null())
            if m == "kl_all" and method == "steck":
                assert has.height == 0
                continue
            assert has.height == res.height
            assert (has[f"{m}_lo"] <= has[m] + 1e-12).all() and (has[m] <= has[f"{m}_hi"] + 1e-12).all(), m
            d = has.filter(pl.col("lambda") > 0)
            assert (d[f"delta_{m}_lo"] <= d[f"delta_{m}"] + 1e-12).all() and (d[f"delta_{m}"] <= d[f"delta_{m}_hi"] + 1e-12).all()
            assert ((d[f"p_{m}"] >= 0) & (d[f"p_{m}"] <= 1)).all()  # the normal test underflows to 0 for huge shifts
            base = has.filter(pl.col("lambda") == 0)
            assert (base[f"delta_{m}"] == 0).all() and base[f"p_{m}"].null_count() == base.height
        # λ = 0.5 moves the KL of the aggregate mix clearly: the paired test sees it
        assert (res.filter(pl.col("lambda") == 1.0)["p_kl_at_n"] < 0.01).all()


def test_uncertainty_off_leaves_the_interval_columns_empty(prepared, tmp_path):
    cfg = AlignConfig.from_dict({**CFG.as_dict(), "uncertainty": {"resamples": 0}})
    off = run(prepared, "Uniform", "steck", tmp_path, cfg).results
    on = run(prepared, "Uniform", "steck", tmp_path / "on").results
    assert off["auc_lo"].null_count() == off.height and off["p_auc"].null_count() == off.height
    assert_frame_equal(off.select("lambda", "auc", "kl_at_n"), on.select("lambda", "auc", "kl_at_n"))
