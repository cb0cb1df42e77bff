"""End-to-end: ExplainFlow through Metaflow's Runner on tiny synthetic data, then a run from the
first run's checkpoint and ReChorus folder with a failed explain task, and its resume.

Runner runs here: one quick run shared by the tests that read it, one failed run and its resume
(training reproducibility is tests/test_explain_model.py::test_training_is_reproducible)."""

from pathlib import Path

# torch must be imported before metaflow in this process: metaflow's vendored typing_extensions
# replaces typing._collect_parameters with a version that rejects torch's generic classes, and the
# Runner imports metaflow, then the flow file (which imports torch) in the test process.
import torch  # noqa: F401  (isort: skip)
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tests.flowrun import EXPLAIN_QUICK, assert_replicates, card_data

pytestmark = [pytest.mark.flow, pytest.mark.slow]
QUICK = EXPLAIN_QUICK
FLOW = "explain_flow.py"


@pytest.fixture(scope="module")
def quick_run(flow_runner):
    run = flow_runner.run(FLOW, QUICK)
    assert run.ok, run.stderr[-3000:]
    return run


def test_artifacts_have_the_promised_shape(quick_run):
    data = quick_run.run.data
    att, users = data.attributions, data.explained_users
    assert att.columns == ["user_id", "event_position", "item_id", "attribution", "estimator", "baseline"]
    for col in ["user_id", "f_x", "f_baseline", "top_k_items", "n_events_kept", "seconds"]:
        assert col in users.columns
    assert sorted(users["user_id"].unique()) == data.explain_user_ids and len(data.explain_user_ids) == 3
    assert set(att["estimator"]) == {"exact", "kernel", "pruned"} and set(att["baseline"]) == {"padding"}
    # anyone can check: each user's attributions sum to f_x − f_baseline, for every estimator
    sums = att.group_by(["user_id", "estimator"]).agg(pl.col("attribution").sum())
    check = users.join(sums, on=["user_id", "estimator"])
    assert check.height == 9
    np.testing.assert_allclose(check["attribution"], check["f_x"] - check["f_baseline"], atol=1e-9)
    assert (check["f_x"] != check["f_baseline"]).all()
    assert all(len(k) == 5 for k in users["top_k_items"])
    exact = att.filter(pl.col("estimator") == "exact")
    assert exact["event_position"].null_count() == 0 and exact["event_position"].max() == -1
    metrics = data.model_metrics
    assert set(metrics["model"]) == {"GRU4Rec", "POP"} and set(metrics["protocol"]) == {"sampled", "full"}
    assert metrics["seed"].unique().to_list() == [11] and data.model_metrics_by_seed is None  # seeds: [seed]
    for k in (5, 10, 20):
        assert f"hr_at_{k}" in metrics.columns and f"ndcg_at_{k}" in metrics.columns
    for m in ("hr_at_10", "ndcg_at_10", "mrr"):  # intervals over the test instances bracket the estimates; Holm over the run
        assert {f"{m}_lo", f"{m}_hi", f"delta_{m}", f"p_{m}", f"p_{m}_holm"} <= set(metrics.columns), m
        has = metrics.drop_nulls([m, f"{m}_lo", f"{m}_hi"])
        assert has.height and ((has[f"{m}_lo"] <= has[m] + 1e-12) & (has[m] <= has[f"{m}_hi"] + 1e-12)).all(), m
    assert_replicates(data, metrics, ("hr_at_10", "ndcg_at_10", "mrr"))
    assert data.training_log.height >= 1
    assert data.feature_attributions.height > 0


def test_exports_and_card(quick_run, flow_runner):
    export = Path(quick_run.run.data.export_dir)
    assert export == flow_runner.cwd / "artifacts" / "ExplainFlow" / quick_run.run_id
    assert_frame_equal(pl.read_parquet(export / "attributions.parquet"), quick_run.run.data.attributions)
    for png in ["attributions_by_user.png", "recency_profile.png", "pruning_horizon.png"]:
        assert (export / png).stat().st_size > 10_000
    assert (export / "gru4rec.pt").exists() and (export / "model_metrics.csv").exists()
    text = card_data(quick_run.run["report"].task, "report")
    for heading in ["Model quality", "Explained users", "Attributions per user", "Average |attribution| by recency",
                    "TimeSHAP pruning horizon", "Feature-level attributions", "image", "GRU4Rec against POP"]:
        assert heading in text


def test_checkpoint_run_with_a_failed_explain_task_then_resume_reproduces_the_run(quick_run, flow_runner):
    """Load the trained model as a ReChorus checkpoint and read the synthetic ReChorus files back,
    in a run whose explain task of one user fails; the failed run explains the other users afresh,
    the resume explains the failed one: the same metrics and attributions as the first run come out."""
    folder = flow_runner.cwd / ".recalign" / "ExplainFlow" / quick_run.run_id / "input" / "synthetic"
    ckpt = Path(quick_run.run.data.export_dir) / "gru4rec.pt"
    user = quick_run.run.data.explain_user_ids[1]
    failed = flow_runner.run(FLOW, QUICK, env=flow_runner.env(RECALIGN_FAIL_AT=f"explain:{user}"),
                             data_dir=str(folder), checkpoint=str(ckpt))
    assert failed.status == "failed"
    assert not (flow_runner.cwd / "artifacts" / "ExplainFlow" / failed.run_id).exists()
    resumed = flow_runner.resume(FLOW, failed.run_id)
    assert resumed.ok, resumed.stderr[-3000:]
    data, ref = resumed.run.data, quick_run.run.data
    assert data.training_log.height == 0  # loaded, not trained
    assert data.explain_user_ids == ref.explain_user_ids
    assert_frame_equal(data.attributions, ref.attributions)
    assert_frame_equal(data.feature_attributions, ref.feature_attributions)
    assert_frame_equal(data.explained_users.drop("seconds"), ref.explained_users.drop("seconds"))
    assert_frame_equal(data.model_metrics, ref.model_metrics)


def test_candidates_artifact_reads_back(quick_run):
    """GRU4Rec's bundle (artifact ``candidates``): one row per test user, the test item held out,
    nothing the user consumed before among the candidates; genres from the synthetic item_meta."""
    from steps.bundles import bundle_of_run
    from steps.candidates import read_candidate_bundle

    data = quick_run.run.data
    assert list(data.candidates) == ["gru4rec"]
    c = read_candidate_bundle(bundle_of_run(f"ExplainFlow/{quick_run.run_id}", data.candidates, None))
    seq = data.data.load()
    test = seq.split("test").sort("user_id")
    assert c.user_ids.tolist() == test["user_id"].to_list() and c.heldout_ids.tolist() == test["item_id"].to_list()
    r = 0
    hist = set(c.item_id_of(c.history_rows[c.history_offsets[r]:c.history_offsets[r + 1]]).tolist())
    assert hist and not hist & set(c.item_id_of(c.candidate_rows[r]).tolist())
    assert c.meta["model"] == "gru4rec" and set(c.genres) == {f"genre{g}" for g in range(4)}  # synthetic n_genres: 4
