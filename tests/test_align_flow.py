"""End-to-end: AlignFlow through Metaflow's Runner on tiny synthetic data, failure and resume.

Runner runs here: the session's quick run (``quick_run``, tests/conftest.py), one failed run and
its resume, and one tiny ``on_cell_failure: continue`` run. Bad inputs are checked in-process
(tests/test_align_bad_inputs.py); the two-run determinism check is the resume test."""

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from steps.align.evaluate import INTERVAL_METRICS
from tests.flowrun import ALIGN_QUICK, assert_replicates, card_data, derived_config

pytestmark = [pytest.mark.flow, pytest.mark.slow]
QUICK = ALIGN_QUICK


def test_results_artifact_has_the_promised_shape(quick_run):
    results = quick_run.run.data.results
    assert isinstance(results, pl.DataFrame)
    for col in ["distribution", "method", "selection", "lambda", "kl_at_n", "kl_all", "user_kl_mean", "user_kl_std",
                "coverage_at_n", "auc", "mrr", "ndcg_at_5", "ndcg_at_10"]:
        assert col in results.columns
    # 2 targets x (nails det + nails stoch + steck + nails_steck) x 3 lambdas
    assert results.height == 2 * 4 * 3
    assert set(results["distribution"]) == {"Editorial", "NewsHeavy"}
    assert set(results["method"]) == {"nails", "steck", "nails_steck"}
    assert results.filter(pl.col("method") != "nails")["selection"].unique().to_list() == ["det"]
    assert results.filter(pl.col("method") != "nails")["kl_all"].null_count() == 12
    assert results.filter(pl.col("method") == "nails")["kl_all"].null_count() == 0
    # alignment works: KL@N falls from lambda 0 to 0.99 for NAILS det toward every target
    nails = results.filter((pl.col("method") == "nails") & (pl.col("selection") == "det"))
    for dist in ["Editorial", "NewsHeavy"]:
        d = nails.filter(pl.col("distribution") == dist).sort("lambda")
        assert d["kl_at_n"][-1] < d["kl_at_n"][0]
    for m in INTERVAL_METRICS:  # intervals bracket the estimates; Holm across the run never lowers a p-value
        assert {f"{m}_lo", f"{m}_hi", f"delta_{m}", f"delta_{m}_lo", f"delta_{m}_hi", f"p_{m}", f"p_{m}_holm"} <= set(results.columns)
        has = results.drop_nulls([m, f"{m}_lo", f"{m}_hi"])
        assert ((has[f"{m}_lo"] <= has[m] + 1e-12) & (has[m] <= has[f"{m}_hi"] + 1e-12)).all(), m
        assert (has[f"{m}_lo"] <= has[f"{m}_hi"] + 1e-12).all(), m
        assert (results[f"p_{m}_holm"].fill_null(1.0) >= results[f"p_{m}"].fill_null(1.0)).all()
    assert_replicates(quick_run.run.data, results, INTERVAL_METRICS)
    target = quick_run.run.data.target
    assert abs(sum(target["Editorial"].values()) - 1) < 1e-12
    assert abs(sum(quick_run.run.data.model_distribution.values()) - 1) < 1e-9


def test_exports_and_card(quick_run, flow_runner):
    export = Path(quick_run.run.data.export_dir)
    assert export == flow_runner.cwd / "artifacts" / "AlignFlow" / quick_run.run_id
    exported = pl.read_csv(export / "results.csv")
    assert exported.height == quick_run.run.data.results.height
    for png in ["kl_vs_lambda.png", "category_mix.png", "user_kl_density.png", "accuracy_vs_kl.png"]:
        assert (export / png).stat().st_size > 10_000
    zips = sorted((export / "submissions").glob("*.zip"))
    assert len(zips) == 24  # 2 targets x 4 methods/selections x 3 lambdas
    data = card_data(quick_run.run["report"].task, "report")
    for text in ["Results: the full grid", "Best λ per method", "Holm", "Category mix at the best λ", "User-level KL", "image"]:
        assert text in data


def test_failed_fanout_task_then_resume_matches_uninterrupted_run(quick_run, flow_runner):
    """Also the two-run determinism check: the failed run computes every task but the failed cell
    afresh and the resume computes that cell and everything after it; all must equal the first run
    bit for bit."""
    env = flow_runner.env(RECALIGN_FAIL_AT="evaluate:NewsHeavy/steck")
    failed = flow_runner.run("align_flow.py", QUICK, env=env)
    assert failed.status == "failed"
    assert not (flow_runner.cwd / "artifacts" / "AlignFlow" / failed.run_id).exists()
    resumed = flow_runner.resume("align_flow.py", failed.run_id)
    assert resumed.ok, resumed.stderr[-3000:]
    assert_frame_equal(resumed.run.data.results, quick_run.run.data.results, check_exact=True)
    assert_frame_equal(resumed.run.data.category_mix, quick_run.run.data.category_mix, check_exact=True)


def test_partial_grid_when_failed_cells_may_continue(flow_runner, tmp_path):
    """With ``on_cell_failure: continue`` a failed cell is listed and the rest of its target's grid
    is kept (one target, two methods, two λ: the smallest grid that shows it)."""
    path = derived_config(QUICK, tmp_path / "continue.yaml", targets=["Uniform"], methods=["nails", "steck"],
                          selections=["det"], lambdas=[0, 0.99], best_lambda=None, submissions=False,
                          run={"minutes_between_retries": 0, "retries": 0, "on_cell_failure": "continue"})
    run = flow_runner.run("align_flow.py", path, env=flow_runner.env(RECALIGN_FAIL_AT="evaluate:Uniform/steck"))
    assert run.ok, run.stderr[-3000:]
    failed = run.run.data.failed_cells
    assert len(failed) == 1 and failed[0].startswith("Uniform/steck: ")
    results = run.run.data.results
    assert results.filter(pl.col("method") == "steck").is_empty()
    assert results.height == 2 and set(results["method"]) == {"nails"} and set(results["distribution"]) == {"Uniform"}
    assert "Failed cells" in card_data(run.run["report"].task, "report")
