"""The ``recalign`` command line: synth, export, compare."""

import subprocess
import sys

import numpy as np
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
    assert len(list((out / "export" / "submissions").glob("*.zip"))) == 24  # 2 targets x 4 methods/selections x 3 lambdas
    assert (out / "card_report_report.html").stat().st_size > 10_000
    r = recalign(["compare", f"AlignFlow/{quick_run.run_id}", f"AlignFlow/{quick_run.run_id}", "--out", str(tmp_path / "d.csv")],
                 flow_runner.cwd, env)
    assert r.returncode == 0, r.stderr[-2000:]
    deltas = pl.read_csv(tmp_path / "d.csv")
    assert deltas.height == quick_run.run.data.results.height
    assert deltas["kl_at_n_delta"].abs().max() == 0.0
    # a run against itself: the same units on the same resamples, so every paired interval is [0, 0]
    assert "paired bootstrap on the same resamples" in r.stdout
    for m in ("kl_at_n", "ndcg_at_10", "coverage_at_n"):
        paired = deltas.filter(pl.col(f"{m}_delta_paired"))
        assert paired.height > 0 and paired[f"{m}_delta_lo"].abs().max() == 0 and paired[f"{m}_delta_hi"].abs().max() == 0, m
    r = recalign(["export", "AlignFlow/999999", "--out", str(tmp_path / "x")], flow_runner.cwd, env)
    assert r.returncode != 0 and "AlignFlow/999999 not found" in r.stderr


class _FakeRun:
    """What ``cmd_export`` reads of a Metaflow run: pathspec, data (``export_dir``), steps (none here)."""

    def __init__(self, pathspec, export_dir):
        self.pathspec = pathspec
        self.data = type("Data", (), {"export_dir": export_dir, "__contains__": lambda self, k: k == "export_dir"})()

    def __iter__(self):
        return iter(())


def test_export_replaces_an_earlier_export_and_refuses_other_folders(tmp_path, monkeypatch):
    import json

    import recalign.cli as cli

    exported = tmp_path / "artifacts"
    (exported / "submissions").mkdir(parents=True)
    (exported / "submissions" / "a.zip").write_bytes(b"zip")
    tables = {"AlignFlow/1": {"results": pl.DataFrame({"x": [1]}), "extra": pl.DataFrame({"y": [2], "top_k_items": [[3, 17]]})},
              "AlignFlow/2": {"results": pl.DataFrame({"x": [3]})}}
    monkeypatch.setattr(cli, "_run", lambda spec: _FakeRun(spec, str(exported)))
    monkeypatch.setattr(cli, "_frames", lambda run: tables[run.pathspec])
    out = tmp_path / "out"
    assert main(["export", "AlignFlow/1", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["export", "extra.csv", "results.csv", "run.json"]
    assert pl.read_csv(out / "extra.csv").row(0) == (2, "[3, 17]")  # list columns written as text
    # a second run into the same folder: run 1's files (extra.csv) do not survive next to run 2's
    (exported / "submissions" / "a.zip").unlink()
    (exported / "b.png").write_bytes(b"png")
    assert main(["export", "AlignFlow/2", "--out", str(out)]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "export/b.png", "results.csv", "run.json"]
    assert pl.read_csv(out / "results.csv")["x"].to_list() == [3]
    assert json.loads((out / "run.json").read_text())["run"] == "AlignFlow/2"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left
    # a non-empty folder that is not an export is never replaced
    other = tmp_path / "home"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(SystemExit, match=r"--out .*home is not empty and holds no earlier export \(no run.json\)"):
        main(["export", "AlignFlow/2", "--out", str(other)])
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="is a file, not a folder"):
        main(["export", "AlignFlow/2", "--out", str(tmp_path / "file")])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", "AlignFlow/2", "--out", str(empty)]) == 0 and (empty / "run.json").exists()


def test_metric_deltas_hand_checked():
    a = pl.DataFrame({"distribution": ["E", "E"], "lambda": [0.0, 0.5], "kl_at_n": [0.5, 0.2], "n_repeats": [1, 1]})
    b = pl.DataFrame({"distribution": ["E", "E"], "lambda": [0.0, 0.5], "kl_at_n": [0.4, 0.3], "n_repeats": [1, 1]})
    d = metric_deltas(a, b).sort("lambda")
    assert d["kl_at_n_delta"].to_list() == pytest.approx([-0.1, 0.1])
    assert d.columns == ["distribution", "lambda", "kl_at_n_a", "kl_at_n_b", "kl_at_n_delta"]


def test_compare_out_must_be_a_file_name(tmp_path, monkeypatch):
    """--out an existing folder, a file's child or a symlink loop: a clear message before any run is
    read (these ended in raw tracebacks); a missing parent folder is created, the CSV written whole."""
    import recalign.cli as cli

    with pytest.raises(SystemExit, match=r"recalign compare: --out .*tmp.* is a folder; give a file name, e.g. .*deltas.csv"):
        main(["compare", "AlignFlow/1", "AlignFlow/2", "--out", str(tmp_path)])
    (tmp_path / "plain").write_text("x")
    with pytest.raises(SystemExit, match=r"--out .*plain/x.csv: .*plain is not a folder"):
        main(["compare", "AlignFlow/1", "AlignFlow/2", "--out", str(tmp_path / "plain" / "x.csv")])
    loop = tmp_path / "loop.csv"
    loop.symlink_to(tmp_path / "loop2.csv")
    (tmp_path / "loop2.csv").symlink_to(loop)
    with pytest.raises(SystemExit, match="--out .*loop.csv is a symbolic link loop"):
        main(["compare", "AlignFlow/1", "AlignFlow/2", "--out", str(loop)])
    with pytest.raises(SystemExit, match="--out .*loop.csv is a symbolic link loop"):
        main(["export", "AlignFlow/1", "--out", str(loop)])

    class Data(dict):
        __getattr__ = dict.__getitem__

    class Run:
        def __init__(self, x):
            self.data = Data(results=pl.DataFrame({"method": ["nails"], "lambda": [0.5], "auc": [x]}))

    monkeypatch.setattr(cli, "_run", lambda spec: Run(0.5 if spec.endswith("1") else 0.75))
    out = tmp_path / "new" / "deeper" / "d.csv"
    assert main(["compare", "AlignFlow/1", "AlignFlow/2", "--out", str(out)]) == 0
    assert pl.read_csv(out)["auc_delta"].to_list() == [0.25]
    assert [p.name for p in out.parent.iterdir()] == ["d.csv"]  # no temporary file left


def test_compare_results_hand_checked():
    from scipy.stats import norm

    from steps.uncertainty import compare_results

    a = pl.DataFrame({"method": ["nails", "nails", "steck"], "lambda": [0.0, 0.5, 0.5], "auc": [0.60, 0.62, 0.70],
                      "auc_lo": [0.58, 0.60, None], "auc_hi": [0.62, 0.64, None], "kl_at_n": [0.3, 0.2, 0.1],
                      "delta_auc": [0.0, 0.02, None], "p_auc": [None, 0.1, None]})
    b = pl.DataFrame({"method": ["nails", "nails", "other"], "lambda": [0.0, 0.5, 0.5], "auc": [0.60, 0.66, 0.5],
                      "auc_lo": [0.59, 0.63, 0.4], "auc_hi": [0.61, 0.69, 0.6], "kl_at_n": [0.3, 0.1, 0.0]})
    d = compare_results(a, b, ["method", "lambda"])
    assert d.columns == ["method", "lambda", "auc_a", "auc_b", "auc_delta", "auc_delta_lo", "auc_delta_hi", "auc_delta_p",
                         "auc_delta_paired", "kl_at_n_a", "kl_at_n_b", "kl_at_n_delta", "auc_delta_p_holm"]
    assert not d["auc_delta_paired"].any()  # no replicates: the unpaired normal approximation
    assert d.select("method", "lambda").rows() == [("nails", 0.0), ("nails", 0.5)]  # cells of one run only: left out
    z = norm.ppf(0.975)
    se = np.hypot(0.04 / (2 * z), 0.06 / (2 * z))
    r = d.row(1, named=True)
    assert r["auc_delta"] == pytest.approx(0.04) and r["kl_at_n_delta"] == pytest.approx(-0.1)
    assert (r["auc_delta_lo"], r["auc_delta_hi"]) == pytest.approx((0.04 - z * se, 0.04 + z * se))
    assert r["auc_delta_p"] == pytest.approx(2 * norm.sf(0.04 / se))
    p0 = d.row(0, named=True)["auc_delta_p"]
    assert p0 == pytest.approx(1.0)  # no difference
    assert r["auc_delta_p_holm"] == pytest.approx(min(1.0, 2 * r["auc_delta_p"]))
    # at 90 % the same intervals mean smaller standard errors
    d90 = compare_results(a, b, ["method", "lambda"], level=0.9).row(1, named=True)
    assert d90["auc_delta_hi"] - d90["auc_delta_lo"] == pytest.approx(2 * z * se)
    # a missing interval gives a delta without one
    iv = compare_results(a.with_columns(auc_lo=pl.lit(None, pl.Float64)), b, ["method", "lambda"])
    assert iv["auc_delta"].null_count() == 0 and iv["auc_delta_lo"].null_count() == 2
    with pytest.raises(ValueError, match=r"the keys \['lambda'\] do not identify one row of run A's results"):
        compare_results(a, b, ["lambda"])
    with pytest.raises(ValueError, match="run B's results have no key column 'selection'"):
        compare_results(a.with_columns(selection=pl.lit("det")), b, ["method", "selection"])


class _Data(dict):
    __getattr__ = dict.__getitem__


class _ResultsRun:
    def __init__(self, results, data_summary=None):
        self.data = _Data(results=results, **({"data_summary": data_summary} if data_summary is not None else {}))


def test_compare_two_runs_with_intervals_and_refuse_other_units(tmp_path, monkeypatch, capsys):
    import recalign.cli as cli

    def results(auc):
        return pl.DataFrame({"distribution": ["E", "E"], "method": ["nails"] * 2, "selection": ["det"] * 2,
                             "lambda": [0.0, 0.5], "auc": auc, "auc_lo": [x - 0.02 for x in auc],
                             "auc_hi": [x + 0.02 for x in auc], "n_repeats": [1, 1]})

    summary = {"predictions": "/run1/predictions.parquet", "rows": 100, "impressions": 40, "notes": []}
    runs = {"AlignFlow/1": _ResultsRun(results([0.6, 0.62]), summary),
            "AlignFlow/2": _ResultsRun(results([0.6, 0.66]), {**summary, "predictions": "/run2/predictions.parquet"}),
            "AlignFlow/3": _ResultsRun(results([0.6, 0.66]), {**summary, "rows": 120, "impressions": 50}),
            "TailFlow/4": _ResultsRun(results([0.6, 0.66]), summary)}
    monkeypatch.setattr(cli, "_run", lambda spec: runs[spec])
    out = tmp_path / "d.csv"
    assert main(["compare", "AlignFlow/1", "AlignFlow/2", "--out", str(out)]) == 0  # other paths, same units
    printed = capsys.readouterr().out
    assert "for the 2 cell(s) both runs hold" in printed and "unpaired normal approximation" in printed
    d = pl.read_csv(out)
    assert d["auc_delta"].to_list() == pytest.approx([0.0, 0.04])
    assert d["auc_delta_hi"][1] - d["auc_delta_lo"][1] == pytest.approx(2 * 0.02 * np.sqrt(2))  # √2 × one run's width
    assert "n_repeats_delta" not in d.columns and "auc_lo_delta" not in d.columns
    with pytest.raises(SystemExit, match=r"evaluated on different units \(their data differ: impressions: 40 vs 50; rows: 100 vs 120\)"):
        main(["compare", "AlignFlow/1", "AlignFlow/3"])
    with pytest.raises(SystemExit, match="runs of different flows"):
        main(["compare", "AlignFlow/1", "TailFlow/4"])
    with pytest.raises(SystemExit, match=r"--level 95 is not a level in \(0, 1\)"):
        main(["compare", "AlignFlow/1", "AlignFlow/2", "--level", "95"])
    # runs trained with other seeds share no cell while seed is a key; --keys names the cells
    runs["AlignFlow/6"] = _ResultsRun(results([0.6, 0.7]).with_columns(seed=pl.lit(8)), summary)
    runs["AlignFlow/7"] = _ResultsRun(results([0.6, 0.6]).with_columns(seed=pl.lit(9)), summary)
    with pytest.raises(SystemExit, match="no cell .*seed.* is in both runs' results; choose .* with --keys"):
        main(["compare", "AlignFlow/6", "AlignFlow/7"])
    assert main(["compare", "AlignFlow/6", "AlignFlow/7", "--keys", "method,lambda", "--out", str(out)]) == 0
    assert pl.read_csv(out)["auc_delta"].to_list() == pytest.approx([0.0, -0.1])
    assert "metric" in capsys.readouterr().out  # printed one row per (cell, metric)
    with pytest.raises(SystemExit, match="--keys 'colour' is not a column of both runs' results"):
        main(["compare", "AlignFlow/6", "AlignFlow/7", "--keys", "method,colour"])
    with pytest.raises(SystemExit, match=r"the keys \['method'\] do not identify one row of run A's results.*--keys"):
        main(["compare", "AlignFlow/6", "AlignFlow/7", "--keys", "method"])
    # runs that keep their bootstrap replicates, on units with the same digest, are compared pairwise
    from steps.uncertainty import Replicates, UncertaintySpec

    spec = UncertaintySpec(resamples=4, seed=3).as_dict()

    def with_replicates(run, stars, digest="d1", spec=spec):
        run.data["replicates"] = Replicates(spec, pl.DataFrame({"auc_star": stars}, schema={"auc_star": pl.List(pl.Float32)}))
        run.data["data_summary"] = {**summary, "units_digest": digest}
        return run

    runs["AlignFlow/8"] = with_replicates(_ResultsRun(results([0.6, 0.62])), [[0.6, 0.61, 0.59, 0.6], [0.62, 0.64, 0.6, 0.62]])
    runs["AlignFlow/9"] = with_replicates(_ResultsRun(results([0.6, 0.66])), [[0.6, 0.61, 0.59, 0.6], [0.67, 0.68, 0.64, 0.65]])
    assert main(["compare", "AlignFlow/8", "AlignFlow/9", "--out", str(out)]) == 0
    assert "paired bootstrap on the same resamples of the same units for 2 of 2" in capsys.readouterr().out
    d = pl.read_csv(out)
    assert d["auc_delta_paired"].to_list() == [True, True]
    assert (d["auc_delta_lo"][0], d["auc_delta_hi"][0]) == (0.0, 0.0)  # the same values on every resample
    # δ* = (0.05, 0.04, 0.04, 0.03) has mean δ̂ = 0.04; its 2.5 / 97.5 % percentiles (linear, sorted
    # 0.03, 0.04, 0.04, 0.05 at positions 0.075 and 2.925) are 0.03075 and 0.04925
    assert (d["auc_delta_lo"][1], d["auc_delta_hi"][1]) == pytest.approx((0.03075, 0.04925), abs=1e-6)
    runs["AlignFlow/10"] = with_replicates(_ResultsRun(results([0.6, 0.66])), [[0.6] * 4, [0.66] * 4], spec={**spec, "seed": 4})
    assert main(["compare", "AlignFlow/8", "AlignFlow/10"]) == 0
    assert "unpaired normal approximation from the two runs' bootstrap intervals (conservative on shared units), " \
           "because their uncertainty settings differ (seed 3 vs 4)" in capsys.readouterr().out
    runs["AlignFlow/11"] = with_replicates(_ResultsRun(results([0.6, 0.66])), [[0.6] * 4, [0.66] * 4], digest="d2")
    with pytest.raises(SystemExit, match="evaluated on different units .*units_digest: d1 vs d2"):
        main(["compare", "AlignFlow/8", "AlignFlow/11"])
    # without data_summary the units are not checked, and said so
    runs["AlignFlow/5"] = _ResultsRun(results([0.6, 0.7]))
    assert main(["compare", "AlignFlow/1", "AlignFlow/5"]) == 0
    assert "whether both evaluated the same units is not checked" in capsys.readouterr().err


def test_unit_differences_compare_the_counts_not_the_paths():
    from recalign.cli import unit_differences

    a = {"ml": {"source": "/a/ratings.csv", "train_users": 10, "items": 5}, "notes": ["x"]}
    assert unit_differences(a, {"ml": {"source": "/b/ratings.csv", "train_users": 10, "items": 5}, "notes": []}) == []
    assert unit_differences(a, {"ml": {"train_users": 11, "items": 5}}) == ["ml.train_users: 10 vs 11"]
    assert unit_differences(a, {"other": {"train_users": 10, "items": 5}})[0] == "ml.items: 5 vs absent"


def test_compare_reads_explainflow_model_metrics(monkeypatch, capsys):
    import recalign.cli as cli

    def metrics(hr):
        return pl.DataFrame({"model": ["GRU4Rec"], "split": ["test"], "protocol": ["full"], "seed": [11],
                             "hr_at_10": [hr], "hr_at_10_lo": [hr - 0.05], "hr_at_10_hi": [hr + 0.05]})

    class _ExplainRun:
        def __init__(self, hr):
            self.data = _Data(model_metrics=metrics(hr), data_summary={"test_rows": 100, "units_digest": "u"})

    runs = {"ExplainFlow/1": _ExplainRun(0.3), "ExplainFlow/2": _ExplainRun(0.35)}
    monkeypatch.setattr(cli, "_run", lambda spec: runs[spec])
    assert main(["compare", "ExplainFlow/1", "ExplainFlow/2"]) == 0
    out = capsys.readouterr().out
    assert "for the 1 cell(s) both runs hold" in out and "because a run keeps no bootstrap replicates" in out
    runs["ExplainFlow/3"] = _ResultsRun(metrics(0.3))
    with pytest.raises(SystemExit, match="both runs need a `model_metrics` artifact"):
        main(["compare", "ExplainFlow/1", "ExplainFlow/3"])
