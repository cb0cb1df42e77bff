"""End-to-end: TailFlow through Metaflow's Runner on tiny synthetic data, a failed task and resume."""

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from steps.storage import load_array
from tests.flowrun import TAIL_QUICK, assert_replicates, card_data

pytestmark = [pytest.mark.flow, pytest.mark.slow]
QUICK = TAIL_QUICK
ISSUE_COLUMNS = ["dataset", "method", "split", "recall_at_20", "recall_at_50", "ndcg_at_100", "coverage_at_20", "gini",
                 "tail_share", "epochs", "seconds"]
METHODS = ["ease", "ease_gd", "ipw", "tail_opt", "adversarial", "pop_rerank"]


@pytest.fixture(scope="module")
def quick_run(tail_quick_run):
    """The session's TailFlow run of configs/tail_quick.yaml (tests/conftest.py; AlignFlow's
    chained test reads its candidate bundles too)."""
    return tail_quick_run


def _deterministic(results: pl.DataFrame) -> pl.DataFrame:
    return results.drop("seconds")


def test_results_artifact(quick_run):
    results = quick_run.run.data.results
    assert isinstance(results, pl.DataFrame)
    assert results.columns[: len(ISSUE_COLUMNS)] == ISSUE_COLUMNS
    assert results.height == len(METHODS) * 2
    assert results["method"].unique(maintain_order=True).to_list() == METHODS
    assert set(results["split"]) == {"validation", "test"}
    trained = results.filter(pl.col("method").is_in(["ease_gd", "ipw", "tail_opt", "adversarial"]))
    assert (trained["epochs"] >= 1).all() and (results.filter(pl.col("method") == "ease")["epochs"] == 0).all()
    for col in ("recall_at_20", "ndcg_at_100", "coverage_at_20", "gini", "tail_share"):
        assert results[col].is_between(0, 1).all()
    # the reference's metric definitions and the item-weight diagnostics are columns too
    for col in ("hit_rate_at_20", "item_recall_unmasked_at_20", "item_ndcg_over_users"):
        assert results[col].is_between(0, 1).all()
    assert (results["coverage_per_100_users_at_20"] >= 20).all()
    weighted = results.filter(pl.col("method").is_in(["ipw", "adversarial"]))
    assert weighted["weight_popularity_spearman"].is_between(-1, 1).all()
    assert results.filter(~pl.col("method").is_in(["ipw", "adversarial"]))["weight_first_step"].is_null().all()
    # intervals bracket the estimate; paired deltas against EASE (its own 0) and Holm
    test = results.filter(pl.col("split") == "test")
    for m in ("recall_at_20", "ndcg_at_100", "hit_rate_at_20", "coverage_at_20", "gini"):
        assert ((results[f"{m}_lo"] <= results[m] + 1e-9) & (results[m] <= results[f"{m}_hi"] + 1e-9)).all(), m
        assert ((test[f"delta_{m}_lo"] <= test[f"delta_{m}"] + 1e-9) & (test[f"delta_{m}"] <= test[f"delta_{m}_hi"] + 1e-9)).all(), m
        assert (test.filter(pl.col("method") == "ease")[f"delta_{m}"] == 0).all() and f"p_{m}_holm" in results.columns
    assert (results["seed"] == 7).all() and quick_run.run.data.results_by_seed is None
    assert_replicates(quick_run.run.data, results, ("recall_at_20", "ndcg_at_100", "coverage_at_20", "gini"))


def test_promotion_raises_coverage_over_ease(quick_run):
    test = quick_run.run.data.results.filter(pl.col("split") == "test")
    cov = dict(zip(test["method"], test["coverage_at_20"]))
    for method in ("ipw", "tail_opt", "adversarial"):
        assert cov[method] > cov["ease"], (method, cov)
    # the report states the accuracy change against EASE for every method, whatever its sign
    statements = quick_run.run.data.statements
    assert len(statements) == len(METHODS) - 1
    assert all("Recall@20" in s and "coverage@20" in s for s in statements)


def test_exports_buckets_and_card(quick_run, flow_runner):
    data = quick_run.run.data
    export = Path(data.export_dir)
    assert export == flow_runner.cwd / "artifacts" / "TailFlow" / quick_run.run_id
    assert pl.read_csv(export / "results.csv").height == data.results.height
    for png in ("accuracy_vs_coverage.png", "exposure_by_popularity.png", "item_recall_by_popularity.png"):
        assert (export / png).stat().st_size > 10_000
    buckets = data.buckets.filter(pl.col("split") == "test")
    for method in METHODS:
        b = buckets.filter(pl.col("method") == method)
        assert b.height == 5 and b["exposure_share_at_20"].sum() == pytest.approx(1.0)
    lists = load_array(data.files["synthetic/adversarial"]["lists"])
    assert lists.shape[1] == 100
    html = card_data(quick_run.run["report"].task, "report")
    for text in ("Results", "Accuracy against coverage", "Exposure by popularity bucket", "against EASE", "image",
                 "Item weights: adversarial, or a popularity prior?"):
        assert text in html


def test_failed_train_task_then_resume_matches_uninterrupted_run(quick_run, flow_runner):
    """Also the two-run determinism check: the failed run prepares the data and trains
    every other method afresh, the resume retrains the failed one; all must equal the first run
    (only the wall-clock column ``seconds`` is left out)."""
    env = flow_runner.env(RECALIGN_FAIL_AT="train:synthetic/adversarial")
    failed = flow_runner.run("tail_flow.py", QUICK, env=env)
    assert failed.status == "failed"
    assert not (flow_runner.cwd / "artifacts" / "TailFlow" / failed.run_id).exists()
    resumed = flow_runner.resume("tail_flow.py", failed.run_id)
    assert resumed.ok, resumed.stderr[-3000:]
    assert_frame_equal(_deterministic(resumed.run.data.results), _deterministic(quick_run.run.data.results))
    assert_frame_equal(resumed.run.data.buckets, quick_run.run.data.buckets)


def test_candidates_artifact_reads_back(quick_run):
    """Each method's candidate bundle (artifact ``candidates``) reads back through the resolver and
    holds the evaluated test lists of the evaluable test users, as item ids."""
    import numpy as np

    from steps.bundles import bundle_of_run
    from steps.candidates import read_candidate_bundle

    data = quick_run.run.data
    assert list(data.candidates) == [f"synthetic/{m}" for m in METHODS] and data.candidates_notes == []
    prepared = quick_run.run["prepare"].task.data.prepared
    lists = load_array(data.files["synthetic/pop_rerank"]["lists"])
    c = read_candidate_bundle(bundle_of_run(f"TailFlow/{quick_run.run_id}/pop_rerank", data.candidates, "pop_rerank"))
    assert c.meta["model"] == "pop_rerank" and c.meta["dataset"] == "synthetic"
    assert c.n_users == data.data_summary["synthetic"]["test_users_evaluable"] and c.n_candidates == 100
    keep = np.isin(prepared.test_user_ids, c.user_ids)
    assert np.array_equal(prepared.test_user_ids[keep], c.user_ids)
    assert np.array_equal(prepared.item_ids[lists[keep]], c.item_id_of(c.candidate_rows))
    assert c.heldout_offsets is not None and c.history_offsets is not None and len(c.genres) == 10
