"""End-to-end: NewsRecFlow through Metaflow's Runner on tiny synthetic EB-NeRD (train → dump →
align → report), a failure injected in the train step and its resume, and AlignFlow's steps on the dump.

Runner runs here: one NewsRecFlow run shared by every test that reads it, one failed run and its
resume (also the two-run determinism check)."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal

from steps.metrics import mean_ranking_metrics, ranking_metrics
from tests.flowrun import NEWSREC_QUICK, assert_replicates, card_data

pytestmark = [pytest.mark.flow, pytest.mark.slow]
QUICK = NEWSREC_QUICK
SPEC = yaml.safe_load(QUICK.read_text())["synthetic"]


@pytest.fixture(scope="module")
def newsrec_run(flow_runner):
    run = flow_runner.run("newsrec_flow.py", QUICK)
    assert run.ok, run.stderr[-4000:]
    return run


def test_training_reaches_the_accuracy_goal_and_artifacts_have_their_shape(newsrec_run):
    data = newsrec_run.run.data
    tm = data.train_metrics
    assert tm.columns[:7] == ["model", "split", "epoch", "auc", "mrr", "ndcg_at_5", "ndcg_at_10"]
    assert sorted(tm.select("model", "split").rows()) == [
        ("nrms", "test"), ("nrms", "validation"), ("nrms_docvec", "test"), ("nrms_docvec", "validation")]
    assert tm["seed"].unique().to_list() == [42] and data.train_metrics_by_seed is None  # seeds: [seed]
    val = tm.filter(pl.col("split") == "validation")
    assert (val["auc"] >= 0.70).all(), val  # random = 0.5
    assert (tm.filter(pl.col("split") == "test")["auc"] > 0.6).all()
    curves = data.training_curves
    for model, art in data.model_artifacts.items():
        best = curves.filter((pl.col("model") == model) & pl.col("best"))
        assert best.height == 1 and best["epoch"][0] == art.best_epoch
        assert art.version.startswith(f"{model}-e{art.best_epoch}-") and Path(art.weights.path).exists()
        assert val.filter(pl.col("model") == model)["auc"][0] == best["val_auc"][0]
    for model, ref in data.predictions.items():
        ref.verify()
        assert ref.shape == (SPEC["n_test_impressions"] + SPEC["n_ba_rows"],)
    results = data.results
    assert results.columns[0] == "model" and set(results["model"]) == {"nrms", "nrms_docvec"}
    # per model: 1 target x (nails det + nails stoch) x 3 lambdas
    assert results.height == 2 * 1 * 2 * 3
    for m in ("kl_at_n", "coverage_at_n", "auc", "ndcg_at_10"):  # intervals bracket the estimates; Holm over the run
        assert {f"{m}_lo", f"{m}_hi", f"delta_{m}", f"p_{m}", f"p_{m}_holm"} <= set(results.columns), m
        has = results.drop_nulls([m, f"{m}_lo", f"{m}_hi"])
        assert has.height and ((has[f"{m}_lo"] <= has[m] + 1e-12) & (has[m] <= has[f"{m}_hi"] + 1e-12)).all(), m
    assert_replicates(data, results, ("kl_at_n", "coverage_at_n", "auc", "ndcg_at_10"))
    nails = results.filter((pl.col("method") == "nails") & (pl.col("selection") == "det"))
    for (model, dist), grp in nails.group_by(["model", "distribution"]):
        grp = grp.sort("lambda")
        assert grp["kl_at_n"][-1] < grp["kl_at_n"][0], (model, dist)  # alignment moves the trained model's top-N
        assert grp["auc"][0] == pytest.approx(tm.filter((pl.col("model") == model) & (pl.col("split") == "test"))["auc"][0])


def test_the_dump_reproduces_the_test_metrics_when_re_read(newsrec_run):
    tm = newsrec_run.run.data.train_metrics
    for model, ref in newsrec_run.run.data.predictions.items():
        df = pl.read_parquet(ref.path).filter(pl.col("impression_id") > 0)
        offsets = np.concatenate([[0], np.cumsum(df["scores"].list.len().to_numpy().astype(np.int64))])
        clicked = np.concatenate([np.isin(v, c) for v, c in zip(df["article_ids_inview"].to_list(), df["article_ids_clicked"].to_list())])
        again = mean_ranking_metrics(ranking_metrics(offsets, df["scores"].explode().to_numpy(), clicked))
        row = tm.filter((pl.col("model") == model) & (pl.col("split") == "test")).row(0, named=True)
        for k in ("auc", "mrr", "ndcg_at_5", "ndcg_at_10"):
            assert again[k] == row[k], (model, k)


def test_exports_and_card(newsrec_run, flow_runner):
    export = Path(newsrec_run.run.data.export_dir)
    assert export == flow_runner.cwd / "artifacts" / "NewsRecFlow" / newsrec_run.run_id
    assert pl.read_csv(export / "train_metrics.csv").height == 4
    assert (export / "training_curves.png").stat().st_size > 10_000
    for model in ("nrms", "nrms_docvec"):
        assert (export / "predictions" / f"{model}_test_scores.parquet").exists()
        assert (export / "submissions" / f"{model}_predictions.zip").exists()
        assert pl.read_csv(export / model / "results.csv").height == 6
        assert (export / model / "kl_vs_lambda.png").exists()
    data = card_data(newsrec_run.run["report"].task, "report")
    for text in ["Accuracy at the best epoch", "Training curves", "Alignment of `nrms`", "Alignment of `nrms_docvec`",
                 "Category mix at the best λ", "image"]:
        assert text in data


def test_failed_train_step_then_resume_matches_uninterrupted_run(newsrec_run, flow_runner):
    """Also the two-run determinism check: every task of the failed run and of its resume
    (data preparation, NRMS training, NRMSDocVec training, dumps, alignment) is computed afresh and
    must reproduce the first run bit for bit."""
    # one worker: NRMS trains first and its task is cloned by the resume; NRMSDocVec's train fails
    failed = flow_runner.run("newsrec_flow.py", QUICK, env=flow_runner.env(RECALIGN_FAIL_AT="train:nrms_docvec"), max_workers=1)
    assert failed.status == "failed"
    assert not (flow_runner.cwd / "artifacts" / "NewsRecFlow" / failed.run_id).exists()
    resumed = flow_runner.resume("newsrec_flow.py", failed.run_id)
    assert resumed.ok, resumed.stderr[-4000:]
    a, b = resumed.run.data, newsrec_run.run.data
    assert_frame_equal(a.train_metrics, b.train_metrics, check_exact=True)
    assert_frame_equal(a.training_curves, b.training_curves, check_exact=True)
    assert_frame_equal(a.results, b.results, check_exact=True)
    assert {m: r.sha256 for m, r in a.predictions.items()} == {m: r.sha256 for m, r in b.predictions.items()}
    assert {m: r.version for m, r in a.model_artifacts.items()} == {m: r.version for m, r in b.model_artifacts.items()}


def test_alignflow_steps_take_the_dump_of_a_newsrecflow_run(newsrec_run, tmp_path):
    """AlignFlow's ``prepare`` and ``evaluate`` steps, in-process, on what ``--predictions-from
    NewsRecFlow/<run>`` resolves to (through the Client, as the flow does): the dump of the paper's
    model, whose alignment reproduces the NewsRecFlow run's own numbers. (The chain through a
    second flow run is AlignFlow ← TailFlow in tests/test_calibrate_flow.py.)"""
    from recalign.runs import dump_source
    from steps.align.config import AlignConfig
    from steps.align.data import prepare_dump
    from steps.align.evaluate import evaluate_method, target_layout
    from steps.align.pipeline import resolve_inputs
    from steps.align.targets import resolve_target

    cfg = AlignConfig.from_dict({"name": "from_newsrec", "targets": ["Editorial"], "methods": ["nails"],
                                 "selections": ["det"], "lambdas": [0.0, 0.99], "submissions": False})
    predictions, articles = dump_source(f"NewsRecFlow/{newsrec_run.run_id}", "", "")
    inputs = resolve_inputs(predictions, articles, cfg.synthetic, tmp_path)
    assert inputs.predictions == newsrec_run.run.data.predictions["nrms_docvec"].path
    assert not inputs.synthetic
    prepared = prepare_dump(inputs.predictions, inputs.articles, tmp_path / "prepared", cfg.exclude_categories,
                            cfg.missing_category)
    theirs = pl.concat([
        evaluate_method(prepared, target_layout(prepared, resolve_target(t, prepared.candidate_categories),
                                                cfg.unknown_category_weight), "nails", cfg, tmp_path / "out").results
        for t in cfg.targets])
    ours = newsrec_run.run.data.results.filter((pl.col("model") == "nrms_docvec") & (pl.col("method") == "nails")
                                             & (pl.col("selection") == "det") & pl.col("lambda").is_in([0.0, 0.99]))
    assert theirs.height == ours.height == 2
    cols = ["distribution", "lambda"]
    assert theirs.sort(cols)["kl_at_n"].to_list() == ours.sort(cols)["kl_at_n"].to_list()


def test_the_candidates_artifact_calibrates_the_ba_lists_toward_the_users_histories(newsrec_run):
    """Each model's bundle of the beyond-accuracy block (artifact ``candidates``) reads back through
    the resolver AlignFlow's ``from_run`` uses; Steck toward the users' histories lowers C_KL."""
    from steps.align.config import AlignConfig
    from steps.align.lists import evaluate_lists, resolve_list_target
    from steps.bundles import bundle_of_run
    from steps.candidates import read_candidate_bundle

    data = newsrec_run.run.data
    assert set(data.candidates) == set(data.predictions)
    cs = read_candidate_bundle(bundle_of_run(f"NewsRecFlow/{newsrec_run.run_id}/nrms_docvec", data.candidates, "nrms_docvec"))
    assert cs.n_users == SPEC["n_ba_rows"] and cs.n_candidates == SPEC["n_candidates"] and cs.heldout_offsets is None
    assert cs.meta["repeated_user_rows"] == 0 and cs.history_times is not None and (np.diff(cs.history_offsets) > 0).all()
    assert (np.diff(cs.scores, axis=1) <= 0).all()  # best first
    cfg = AlignConfig.from_dict({"targets": ["history"], "lambdas": [0.0, 0.9], "selections": ["det"]})
    res = evaluate_lists(cs, resolve_list_target("history", cs), "steck", cfg).results.sort("lambda")
    assert res["c_kl_mean"][1] < res["c_kl_mean"][0]
