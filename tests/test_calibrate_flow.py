"""End-to-end: AlignFlow calibrating candidate lists — real MovieLens-100K (EASE) and a TailFlow
run's lists in one run over two datasets (the chain TailFlow → AlignFlow), with a failure and resume."""

from pathlib import Path

import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal

from tests.flowrun import CONFIGS, card_data

pytestmark = [pytest.mark.flow, pytest.mark.slow]


@pytest.fixture(scope="module")
def calibrate_config(tail_quick_run, tmp_path_factory) -> Path:
    """configs/align_calibrate_ml100k.yaml on the real files, on a smaller grid, plus the TailFlow run's EASE lists."""
    cfg = yaml.safe_load((CONFIGS / "align_calibrate_ml100k.yaml").read_text())
    cfg["datasets"].append({"name": "tail", "kind": "candidates", "from_run": f"TailFlow/{tail_quick_run.run_id}/ease",
                            "targets": ["history", "Uniform"]})
    cfg["targets"] = ["history", cfg["targets"][2]]  # own history; 70 % history + 30 % uniform
    cfg["methods"] = ["steck", "nails"]
    cfg["lambdas"] = [0, 0.5, 0.9]
    path = tmp_path_factory.mktemp("calibrate") / "calibrate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def calibrate_run(flow_runner, calibrate_config):
    run = flow_runner.run("align_flow.py", calibrate_config)
    assert run.ok, run.stderr[-3000:]
    return run


def test_real_ml100k_and_tailflow_lists_in_one_results_table(calibrate_run):
    res = calibrate_run.run.data.results
    assert res.columns[0] == "dataset" and set(res["dataset"]) == {"ml100k_ease", "tail"}
    ml = res.filter(pl.col("dataset") == "ml100k_ease")
    assert set(ml["distribution"]) == {"history", "history_uniform"}
    assert ml.height == 2 * 2 * 3  # targets x methods x lambdas
    steck = ml.filter((pl.col("method") == "steck") & (pl.col("distribution") == "history")).sort("lambda")
    # Steck's finding on real data: calibration lowers C_KL a lot for a small loss of precision
    assert steck["c_kl_mean"][2] < 0.5 * steck["c_kl_mean"][0]
    assert 0.9 * steck["precision_at_n"][0] > steck["precision_at_n"][2] > 0.5 * steck["precision_at_n"][0]
    for col in ("c_kl_mean", "precision_at_n", "recall_at_n", "ndcg_at_n", "coverage_at_n", "kl_at_n"):
        assert ml[col].null_count() == 0
    tail = res.filter(pl.col("dataset") == "tail")
    assert set(tail["distribution"]) == {"history", "Uniform"} and tail["precision_at_n"].null_count() == 0
    summary = calibrate_run.run.data.data_summary
    assert summary["ml100k_ease"]["users"] == 942 and summary["ml100k_ease"]["candidates_per_user"] == 100
    assert "RecBole" in summary["ml100k_ease"]["source"]
    assert summary["tail"]["source"].startswith("run TailFlow/")


def test_exports_and_card_per_dataset(calibrate_run):
    export = Path(calibrate_run.run.data.export_dir)
    for ds in ("ml100k_ease", "tail"):
        for png in ("calibration_vs_lambda.png", "user_genre_mix.png", "kl_vs_lambda.png"):
            assert (export / f"{ds}__{png}").stat().st_size > 10_000
    mix = pl.read_csv(export / "example_user_mix.csv")
    assert set(mix["list"]) >= {"target", "top-N (λ = 0)"}
    data = card_data(calibrate_run.run["report"].task, "report")
    for text in ("Dataset `ml100k_ease`", "Dataset `tail`", "Calibration (C_KL)", "One user's genre mix"):
        assert text in data


def test_failed_cell_then_resume_matches_uninterrupted_run(calibrate_run, flow_runner, calibrate_config):
    env = flow_runner.env(RECALIGN_FAIL_AT="evaluate:ml100k_ease/history/steck")
    failed = flow_runner.run("align_flow.py", calibrate_config, env=env)
    assert failed.status == "failed"
    assert not (flow_runner.cwd / "artifacts" / "AlignFlow" / failed.run_id).exists()
    resumed = flow_runner.resume("align_flow.py", failed.run_id)
    assert resumed.ok, resumed.stderr[-3000:]
    assert_frame_equal(resumed.run.data.results, calibrate_run.run.data.results, check_exact=True)
