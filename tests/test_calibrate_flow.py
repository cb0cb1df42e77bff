"""End-to-end: AlignFlow calibrating candidate lists — real MovieLens-100K (EASE) and a TailFlow
run's lists in one run over two datasets (the chain TailFlow → AlignFlow), with a failure and resume.

The ML-100K dataset is a slice of the real files (the first ``SLICE_USERS`` users' ratings, every
film) written as a GroupLens folder, on a short grid (one target per dataset, two methods, two λ):
the flow's path is the same as on the whole file, in a fraction of the tasks and CPU time. The
whole-file numbers are for the benchmarks, not the test suite."""

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tests.flowrun import ALIGN_ML100K, card_data, derived_config

pytestmark = [pytest.mark.flow, pytest.mark.slow]
SLICE_USERS = 200  # ML-100K user ids 1..200 (of 943)
#: 70 % of the user's own history + 30 % uniform over the genres (a per-user mixed target)
HISTORY_UNIFORM = {"name": "history_uniform", "kind": "history_mix", "weight": 0.3, "mix_with": "Uniform"}


def write_ml100k_slice(folder: Path, n_users: int) -> tuple[Path, int]:
    """The real ML-100K ratings of users 1..n_users (and every film) as a GroupLens ``ml-100k/``
    folder; returns it and the number of users the EASE split keeps (two positives or more)."""
    from steps.movielens import ML100K_GENRES, load_ml100k

    ml = load_ml100k("recbole")
    ratings = ml.ratings.filter(pl.col("user_id") <= n_users).sort(["user_id", "item_id"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{int(r)}\t{t}\n" for u, i, r, t in ratings.iter_rows()), encoding="latin-1")
    lines = []
    for item_id, title, genres in ml.items.sort("item_id").iter_rows():
        flags = "|".join("1" if g in genres else "0" for g in ML100K_GENRES)
        lines.append(f"{item_id}|{title}||||{flags}")  # id, title, release, video release, URL, 19 flags
    (folder / "u.item").write_text("\n".join(lines) + "\n", encoding="latin-1", errors="replace")
    kept = ratings.filter(pl.col("rating") >= 4).group_by("user_id").len().filter(pl.col("len") >= 2).height
    return folder, kept


@pytest.fixture(scope="module")
def ml100k_slice(tmp_path_factory) -> tuple[Path, int]:
    return write_ml100k_slice(tmp_path_factory.mktemp("ml100k") / "ml-100k", SLICE_USERS)


@pytest.fixture(scope="module")
def calibrate_config(tail_quick_run, ml100k_slice, tmp_path_factory) -> Path:
    """The ML-100K config on the slice, on a short grid, plus the TailFlow run's EASE lists."""
    import yaml

    base = yaml.safe_load(ALIGN_ML100K.read_text())
    ml = {**base["datasets"][0], "source": str(ml100k_slice[0])}
    tail = {"name": "tail", "kind": "candidates", "from_run": f"TailFlow/{tail_quick_run.run_id}/ease",
            "targets": [HISTORY_UNIFORM]}
    return derived_config(ALIGN_ML100K, tmp_path_factory.mktemp("calibrate") / "calibrate.yaml",
                          datasets=[ml, tail], targets=["history"], methods=["steck", "nails"], selections=["det"],
                          lambdas=[0, 0.9])


@pytest.fixture(scope="module")
def calibrate_run(flow_runner, calibrate_config):
    run = flow_runner.run("align_flow.py", calibrate_config)
    assert run.ok, run.stderr[-3000:]
    return run


def test_real_ml100k_and_tailflow_lists_in_one_results_table(calibrate_run, ml100k_slice):
    res = calibrate_run.run.data.results
    assert res.columns[0] == "dataset" and set(res["dataset"]) == {"ml100k_ease", "tail"}
    ml = res.filter(pl.col("dataset") == "ml100k_ease")
    assert set(ml["distribution"]) == {"history"}
    assert ml.height == 1 * 2 * 2  # targets x methods x lambdas
    steck = ml.filter((pl.col("method") == "steck") & (pl.col("distribution") == "history")).sort("lambda")
    # Steck's finding on real data (it holds on the slice too): calibration lowers C_KL a lot for a
    # small loss of precision
    assert steck["c_kl_mean"][-1] < 0.5 * steck["c_kl_mean"][0]
    assert 0.9 * steck["precision_at_n"][0] > steck["precision_at_n"][-1] > 0.5 * steck["precision_at_n"][0]
    for col in ("c_kl_mean", "precision_at_n", "recall_at_n", "ndcg_at_n", "coverage_at_n", "kl_at_n"):
        assert ml[col].null_count() == 0
    tail = res.filter(pl.col("dataset") == "tail")
    assert set(tail["distribution"]) == {"history_uniform"} and tail["precision_at_n"].null_count() == 0
    assert tail.height == 1 * 2 * 2
    summary = calibrate_run.run.data.data_summary
    folder, kept = ml100k_slice
    assert summary["ml100k_ease"]["users"] == kept and summary["ml100k_ease"]["candidates_per_user"] == 100
    assert "GroupLens" in summary["ml100k_ease"]["source"] and str(folder) in summary["ml100k_ease"]["source"]
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
