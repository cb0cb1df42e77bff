"""The ``recalign`` command line: synth, export, compare."""

import subprocess
import sys

import polars as pl
import pytest

from recalign.cli import main, metric_deltas

pytestmark = [pytest.mark.flow]


def recalign(args, cwd, env):
    return subprocess.run([sys.executable, "-m", "recalign.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_synth_ebnerd_writes_files_the_loaders_accept(tmp_path):
    from steps.align.data import prepare_dump
    from steps.newsrec.ebnerd import read_articles

    assert main(["synth", "ebnerd", "--out", str(tmp_path), "--size", "tiny", "--seed", "3"]) == 0
    dump = tmp_path / "nails_dump"
    p = prepare_dump(dump / "predictions.parquet", dump / "articles.parquet", tmp_path / "prep")
    assert p.n_ba_rows == 1000 and p.n_impressions == 2000
    articles = read_articles(tmp_path / "ebnerd" / "ebnerd_synthetic" / "articles.parquet")
    assert articles.height == 300
    assert (tmp_path / "ebnerd" / "ebnerd_synthetic" / "train" / "behaviors.parquet").exists()


def test_synth_ml_and_sequences_write_files_the_loaders_accept(tmp_path):
    from steps.explain.data import read_rechorus
    from steps.tail.data import read_ml20m

    assert main(["synth", "ml", "--out", str(tmp_path / "ml"), "--size", "tiny"]) == 0
    ratings = read_ml20m(tmp_path / "ml" / "ratings.csv")
    assert ratings.height > 10_000
    assert main(["synth", "sequences", "--out", str(tmp_path / "seq"), "--size", "tiny"]) == 0
    data = read_rechorus(tmp_path / "seq")
    assert data.interactions["item_id"].max() <= 150 and data.n_items == 151  # ids 1..150 and padding 0


def test_synth_rejects_unknown_kinds(tmp_path, capsys):
    assert main(["synth", "imdb", "--out", str(tmp_path)]) == 2
    assert "unknown kind 'imdb'" in capsys.readouterr().err


def test_export_and_compare_a_finished_run(quick_run, flow_runner, tmp_path):
    env = flow_runner.env()
    out = tmp_path / "export"
    r = recalign(["export", f"AlignFlow/{quick_run.run_id}", "--out", str(out)], flow_runner.cwd, env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert pl.read_csv(out / "results.csv").height == quick_run.run.data.results.height
    assert (out / "export" / "category_mix.png").exists()
    assert len(list((out / "export" / "submissions").glob("*.zip"))) == 36
    assert (out / "card_report_report.html").stat().st_size > 10_000
    r = recalign(["compare", f"AlignFlow/{quick_run.run_id}", f"AlignFlow/{quick_run.run_id}", "--out", str(tmp_path / "d.csv")],
                 flow_runner.cwd, env)
    assert r.returncode == 0, r.stderr[-2000:]
    deltas = pl.read_csv(tmp_path / "d.csv")
    assert deltas.height == quick_run.run.data.results.height
    assert deltas["kl_at_n_delta"].abs().max() == 0.0
    r = recalign(["export", "AlignFlow/999999", "--out", str(tmp_path / "x")], flow_runner.cwd, env)
    assert r.returncode != 0 and "AlignFlow/999999 not found" in r.stderr


def test_metric_deltas_hand_checked():
    a = pl.DataFrame({"distribution": ["E", "E"], "lambda": [0.0, 0.5], "kl_at_n": [0.5, 0.2], "n_repeats": [1, 1]})
    b = pl.DataFrame({"distribution": ["E", "E"], "lambda": [0.0, 0.5], "kl_at_n": [0.4, 0.3], "n_repeats": [1, 1]})
    d = metric_deltas(a, b).sort("lambda")
    assert d["kl_at_n_delta"].to_list() == pytest.approx([-0.1, 0.1])
    assert d.columns == ["distribution", "lambda", "kl_at_n_a", "kl_at_n_b", "kl_at_n_delta"]
