"""The report cards' blocks and the alignment figures, built in-process from small results tables:
Holm marks in the best-λ table, the card's order (best λ and figures before the full grid), and
figures with and without interval columns."""

from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
from metaflow.cards import Image, Markdown, Table

from recalign.cards import align_card_blocks, images, newsrec_card_blocks
from steps.align import plots
from steps.align.config import AlignConfig
from steps.align.pipeline import build_reports, run_results, with_dataset
from steps.align.report import HOLM_MARK, best_lambda_differences, best_lambdas, uncertainty_legend
from steps.uncertainty import UncertaintySpec, holm_adjust

#: The spec the tables below pretend their replicates were drawn under (they carry none).
SPEC = UncertaintySpec()

CFG = AlignConfig.from_dict({"lambdas": [0, 0.5, 1.0]})
CFG_OFF = AlignConfig.from_dict({"lambdas": [0, 0.5, 1.0], "uncertainty": {"resamples": 0}})
CELLS = [("nails", "det"), ("nails", "stoch"), ("steck", "det"), ("nails_steck", "det")]
LAMBDAS = [0.0, 0.5, 1.0]
METRICS = ("kl_at_n", "user_kl_mean", "coverage_at_n", "auc", "ndcg_at_10")


def results_table(intervals: bool = True, p_small: float = 1e-4, p_border: float = 0.02) -> pl.DataFrame:
    """One target, four methods × three λ: KL falls with λ, accuracy a little. At λ = 1 every
    p-value is ``p_small`` except nails/det's nDCG@10 (``p_border``: below 0.05 raw, not after Holm)."""
    rows = []
    for k, (method, sel) in enumerate(CELLS):
        for lam in LAMBDAS:
            base = {"kl_at_n": 0.5 + 0.01 * k, "user_kl_mean": 1.0, "coverage_at_n": 0.4, "auc": 0.6, "ndcg_at_10": 0.30}
            val = {"kl_at_n": base["kl_at_n"] * (1 - 0.9 * lam), "user_kl_mean": 1.0 - 0.5 * lam,
                   "coverage_at_n": 0.4 + 0.1 * lam, "auc": 0.6 - 0.01 * lam, "ndcg_at_10": 0.30 - 0.012 * lam}
            r = {"distribution": "Uniform", "method": method, "selection": sel, "lambda": lam, "kl_all": None,
                 "user_kl_std": 0.1, "mrr": 0.3, "ndcg_at_5": 0.25, "n_repeats": 1, **val}
            if intervals:
                for m in METRICS:
                    d = val[m] - base[m]
                    r.update({f"{m}_lo": val[m] - 0.003, f"{m}_hi": val[m] + 0.003, f"delta_{m}": d,
                              f"delta_{m}_lo": d - 0.003, f"delta_{m}_hi": d + 0.003,
                              f"p_{m}": None if lam == 0 else (p_small if lam == 1 else 0.3)})
                if lam == 1 and (method, sel) == ("nails", "det"):
                    r["p_ndcg_at_10"] = p_border
            rows.append(r)
    return pl.DataFrame(rows)


def hist_table() -> pl.DataFrame:
    rows = []
    rng = np.random.default_rng(0)
    for method, sel in CELLS:
        for lam in LAMBDAS:
            for b in range(20):
                rows.append({"distribution": "Uniform", "method": method, "selection": sel, "lambda": lam,
                             "bin_left": 0.1 * b, "bin_right": 0.1 * (b + 1), "count": int(rng.integers(0, 9))})
    return pl.DataFrame(rows)


def mix_table() -> pl.DataFrame:
    rows = [{"distribution": "Uniform", "method": None, "selection": None, "lambda": 0.0, "basis": "target",
             "category": c, "share": 0.5} for c in ("A", "B")]
    for method, sel in CELLS:
        for lam in LAMBDAS:
            rows += [{"distribution": "Uniform", "method": method, "selection": sel, "lambda": lam, "basis": basis,
                      "category": c, "share": s} for basis in ("top_n", "all") for c, s in (("A", 0.7 - 0.2 * lam), ("B", 0.3 + 0.2 * lam))]
    return pl.DataFrame(rows)


def test_run_results_corrects_across_every_dataset_and_metric():
    a = with_dataset(results_table(), "a")
    b = with_dataset(results_table(p_small=0.01), "b")
    out = run_results([a, b], SPEC)[0]
    assert out.height == a.height + b.height
    p = np.concatenate([out[f"p_{m}"].fill_null(np.nan).to_numpy() for m in METRICS])
    holm = np.concatenate([out[f"p_{m}_holm"].fill_null(np.nan).to_numpy() for m in METRICS])
    np.testing.assert_allclose(holm, holm_adjust(p), equal_nan=True)
    assert (out["p_kl_at_n_holm"].drop_nulls() >= out["p_kl_at_n"].drop_nulls()).all()
    assert run_results([results_table(intervals=False)], SPEC)[0].columns == results_table(intervals=False).columns


def test_best_lambda_table_shows_intervals_and_marks_only_holm_survivors():
    res = run_results([results_table()], SPEC)[0]
    best = best_lambdas(res, CFG)
    table = best_lambda_differences(res, best)
    assert table.height == 4 and set(table["λ"]) == {"1"}  # lowest KL / user KL at λ = 1
    det = table.filter(pl.col("compared") == "nails_det").row(0, named=True)
    assert det["Δ nDCG@10 vs λ = 0"] == "−0.012 [−0.015, −0.009]"  # raw p 0.02, not below 0.05 after Holm
    assert det["Δ KL@N vs λ = 0"].endswith(HOLM_MARK) and det["Δ KL@N vs λ = 0"].startswith("−0.45 [")
    stoch = table.filter(pl.col("compared") == "nails_stoch").row(0, named=True)
    assert stoch["Δ nDCG@10 vs λ = 0"] == f"−0.012 [−0.015, −0.009] {HOLM_MARK}"
    legend = uncertainty_legend(res, CFG.uncertainty, lists=False)
    n = sum(res[f"p_{m}"].count() for m in METRICS)
    assert f"{n:,} p-values" in legend and "Holm" in legend and "λ = 0" in legend and "95%" in legend
    assert "no marks are possible" not in legend
    few = AlignConfig.from_dict({"lambdas": [0, 0.5, 1.0], "uncertainty": {"resamples": 199}}).uncertainty
    assert f"no marks are possible — set `uncertainty.resamples` to at least {n * 20:,}" in uncertainty_legend(res, few, lists=False)
    # the same cells at the configured λ = 0: no difference to show
    zero = best.with_columns(pl.lit(0.0).alias("lambda"))
    assert set(best_lambda_differences(res, zero)["Δ KL@N vs λ = 0"]) == {"0 (λ = 0)"}


def test_best_lambda_table_without_intervals_gives_point_differences_and_no_marks():
    res = run_results([results_table(intervals=False)], SPEC)[0]
    table = best_lambda_differences(res, best_lambdas(res, CFG_OFF))
    det = table.filter(pl.col("compared") == "nails_det").row(0, named=True)
    assert det["Δ nDCG@10 vs λ = 0"] == "−0.012"
    assert not any(HOLM_MARK in v or "[" in v for col in table.columns for v in table[col])
    assert "no intervals" in uncertainty_legend(res, CFG_OFF.uncertainty, lists=False)


def _fake_align_flow(intervals: bool, cfg=CFG):
    res = with_dataset(run_results([results_table(intervals)], SPEC)[0], "news")
    rep = build_reports(res, with_dataset(mix_table(), "news"), with_dataset(hist_table(), "news"), cfg, [])
    flow = SimpleNamespace(cfg=cfg, export_dir="/tmp/x", failed_cells=[], several_datasets=False, results=res,
                           best_lambda=rep.best_lambda,
                           data_summary={"kind": "ebnerd", "beyond_accuracy_rows": 100, "candidates": 20, "impressions": 50,
                                         "labelled_impressions": 40, "notes": []},
                           failed_cells_block=lambda card, title="": None)
    return flow, images(rep.figures)


def _order(blocks):
    first_image = next(i for i, b in enumerate(blocks) if isinstance(b, Image))
    tables = [i for i, b in enumerate(blocks) if isinstance(b, Table)]
    grid = next(i for i in tables if "lambda" in blocks[i]._headers and "kl_at_n" in blocks[i]._headers)
    best = next(i for i in tables if any(h.startswith("Δ ") for h in blocks[i]._headers))
    return first_image, best, grid


@pytest.mark.parametrize("intervals", [True, False])
def test_align_card_leads_with_the_best_lambda_comparison_and_figures_and_ends_with_the_grid(intervals):
    flow, figs = _fake_align_flow(intervals, CFG if intervals else CFG_OFF)
    blocks = align_card_blocks(flow, figs, "123")
    first_image, best, grid = _order(blocks)
    assert best < first_image < grid
    assert all(not isinstance(b, Image) for b in blocks[grid:])
    assert grid == max(i for i, b in enumerate(blocks) if isinstance(b, Table))
    best_rows = blocks[best]._data
    marked = any(HOLM_MARK in cell for row in best_rows for cell in row)
    assert marked == intervals
    legend = blocks[best - 1]._text
    assert ("Holm" in legend) == intervals and "λ = 0" in legend
    assert sum(isinstance(b, Image) for b in blocks) == 4  # kl, category mix, user KL, accuracy vs KL


def test_newsrec_card_puts_every_models_grid_last():
    res = run_results([results_table().select(pl.lit(m).alias("model"), pl.all()) for m in ("nrms", "docvec")], SPEC)[0]
    figs = {}
    for m in ("nrms", "docvec"):
        sub = res.filter(pl.col("model") == m).drop("model")
        rep = build_reports(with_dataset(sub, "d"), with_dataset(mix_table(), "d"), with_dataset(hist_table(), "d"), CFG, [])
        figs[m] = images(rep.figures)
    news_cfg = SimpleNamespace(name="quick", align=CFG)
    curves = pl.DataFrame({"model": ["nrms", "nrms", "docvec", "docvec"], "epoch": [1, 2, 1, 2], "loss": [1.0, 0.8, 1.1, 0.9],
                           "val_auc": [0.55, 0.6, 0.52, 0.58], "best": [False, True, False, True]})
    flow = SimpleNamespace(cfg=news_cfg, export_dir="/tmp/x", failed_cells=[], results=res, training_curves=curves,
                           train_metrics=pl.DataFrame({"model": ["nrms"], "auc": [0.6]}),
                           model_artifacts={m: SimpleNamespace(version="v1") for m in figs},
                           data_summary={"bundle": "demo", "synthetic": True, "articles": 10, "train_impressions": 5,
                                         "validation_impressions": 5, "test_impressions": 5, "test_beyond_accuracy_rows": 5},
                           failed_cells_block=lambda card, title="": None)
    blocks = newsrec_card_blocks(flow, figs, "7")
    tables = [i for i, b in enumerate(blocks) if isinstance(b, Table)]
    grids = [i for i in tables if "lambda" in blocks[i]._headers]
    bests = [i for i in tables if any(h.startswith("Δ ") for h in blocks[i]._headers)]
    last_image = max(i for i, b in enumerate(blocks) if isinstance(b, Image))
    assert len(grids) == 2 and len(bests) == 2 and max(bests) < last_image < min(grids)
    assert any(HOLM_MARK in cell for i in bests for row in blocks[i]._data for cell in row)
    assert isinstance(blocks[min(grids) - 2], Markdown) and "full grid" in blocks[min(grids) - 2]._text


def _errorbar_lengths(ax):
    """Number of drawn error-bar segments of each errorbar container of ``ax``."""
    return [sum(len(c.get_segments()) for c in cont.lines[2]) for cont in ax.containers]


@pytest.mark.parametrize("mode", ["intervals", "absent", "null"])
def test_figures_draw_intervals_where_the_results_have_them(mode):
    res = results_table(intervals=mode != "absent")
    if mode == "null":
        res = res.with_columns([pl.lit(None, dtype=pl.Float64).alias(c) for c in res.columns if c.endswith(("_lo", "_hi"))])
    fig = plots.kl_vs_lambda(res)
    bands = len(fig.axes[0].collections)
    assert (bands == 4) if mode == "intervals" else (bands == 0)
    fig = plots.accuracy_vs_kl(res)
    segs = _errorbar_lengths(fig.axes[0])
    assert len(segs) == 4 and (all(s > 0 for s in segs) if mode == "intervals" else not any(segs))
    lists = res.with_columns(c_kl_mean=pl.col("user_kl_mean"), precision_at_n=pl.col("ndcg_at_10"))
    if mode == "intervals":
        lists = lists.with_columns(c_kl_mean_lo=pl.col("c_kl_mean") - 0.01, c_kl_mean_hi=pl.col("c_kl_mean") + 0.01)
    fig = plots.calibration_curve(lists)
    assert (len(fig.axes[0].collections) == 4) == (mode == "intervals")
    plots.plt.close("all")


@pytest.mark.parametrize("with_intervals", [True, False])
def test_tail_accuracy_vs_coverage_draws_2d_error_bars_from_the_intervals(with_intervals):
    from steps.tail.report import accuracy_vs_coverage

    rows = []
    for method, (cov, rec, nd) in {"ease": (0.2, 0.30, 0.25), "adversarial": (0.3, 0.28, 0.24)}.items():
        r = {"dataset": "syn", "method": method, "split": "test", "coverage_at_20": cov, "recall_at_20": rec, "ndcg_at_100": nd}
        if with_intervals:
            r.update({f"{m}_{s}": v + (-0.01 if s == "lo" else 0.02) for m, v in
                      (("coverage_at_20", cov), ("recall_at_20", rec), ("ndcg_at_100", nd)) for s in ("lo", "hi")})
        rows.append(r)
    fig = accuracy_vs_coverage(pl.DataFrame(rows))
    for ax in fig.axes:
        segs = _errorbar_lengths(ax)  # one container per method; x and y bars each
        assert len(segs) == 2 and all(s == (2 if with_intervals else 0) for s in segs)
        if with_intervals:  # the bar spans the interval: [lo, hi] = [v − 0.01, v + 0.02]
            xs = sorted(seg[:, 0].tolist() for c in ax.containers for seg in c.lines[2][0].get_segments())
            assert xs[0] == pytest.approx([0.19, 0.22]) and xs[1] == pytest.approx([0.29, 0.32])
    plots.plt.close("all")


def test_user_kl_panels_are_ecdfs_of_at_most_three_lambdas():
    hist = hist_table()
    res = results_table()
    fig = plots.user_kl_density(hist, best_lambdas(res, CFG).with_columns(pl.lit(0.5).alias("lambda")))
    panels = [ax for ax in fig.axes if ax.lines]
    assert len(panels) == 4
    for ax in panels:
        assert 1 <= len(ax.lines) <= 3
        for line in ax.lines:
            y = line.get_ydata()
            assert y[0] >= 0 and abs(y[-1] - 1) < 1e-12 and (np.diff(y) >= -1e-12).all()
        assert any("(best)" in t.get_text() for t in ax.get_legend().get_texts())
    many = pl.concat([hist, hist.with_columns(pl.col("lambda") + 0.1), hist.with_columns(pl.col("lambda") + 0.2)])
    fig = plots.user_kl_density(many)  # no best table: the smallest, middle and largest λ
    assert max(len(ax.lines) for ax in fig.axes) == 3
    plots.plt.close("all")


def test_candidate_list_card_has_the_calibration_figure_with_bands_and_a_users_legend(tmp_path):
    from steps.align.lists import evaluate_lists, resolve_list_target
    from steps.align.synthetic_lists import SyntheticListsSpec, write_synthetic_lists
    from steps.candidates import read_candidate_bundle
    from steps.tables import concat

    cs = read_candidate_bundle(write_synthetic_lists(tmp_path / "s", SyntheticListsSpec(users=90, items=120, candidates=20)))
    cfg = AlignConfig.from_dict({"lambdas": [0, 0.5, 1.0], "selections": ["det"], "uncertainty": {"resamples": 200}})
    target = resolve_list_target("history", cs)
    outs = [evaluate_lists(cs, target, m, cfg) for m in ("nails", "steck")]
    res = with_dataset(run_results([o.results for o in outs], SPEC)[0], "lists")
    rep = build_reports(res, with_dataset(concat([o.category_mix for o in outs]), "lists"),
                        with_dataset(concat([o.user_kl_hist for o in outs]), "lists"), cfg, ["lists"])
    assert len(rep.figures["calibration_vs_lambda.png"].axes[0].collections) == 2  # C_KL bands: NAILS det, Steck
    flow = SimpleNamespace(cfg=cfg, export_dir="/tmp/x", failed_cells=[], several_datasets=False, results=res,
                           best_lambda=rep.best_lambda, failed_cells_block=lambda card, title="": None,
                           data_summary={"kind": "candidates", "users": 90, "candidates_per_user": 20, "genres": ["a", "b"],
                                         "single_genre": False, "source": "synthetic", "notes": []})
    blocks = align_card_blocks(flow, images(rep.figures), "1")
    first_image, best, grid = _order(blocks)
    assert best < first_image < grid
    assert "C_KL" in blocks[best]._headers and "evaluated users" in blocks[best - 1]._text
    plots.plt.close("all")


def test_seeds_block_only_with_several_seeds():
    from types import SimpleNamespace

    from recalign.cards import seeds_block

    c: list = []
    seeds_block(c, SimpleNamespace(), None, "why")
    assert c == []
    table = pl.DataFrame({"model": ["nrms"], "n_seeds": [2], "auc_mean": [0.7]})
    seeds_block(c, SimpleNamespace(seeds=(7, 8)), table, "the spread over retrainings", "Explained: seed 7.")
    text = c[0].render()["source"]
    assert "Over 2 training seeds (7, 8)" in text and "the spread over retrainings" in text and "seed 7." in text
    assert len(c) == 2


def test_tail_figures_of_several_seeds_show_the_seed_means_with_their_t_intervals():
    from steps.tail.pipeline import SEED_METRICS
    from steps.tail.report import build_figures
    from steps.uncertainty import aggregate_over_seeds

    rows, buckets = [], []
    for seed, shift in ((1, 0.0), (2, 0.02), (3, 0.04)):
        for method, cov in (("ease", 0.2), ("adversarial", 0.3)):
            rows.append({"dataset": "syn", "method": method, "split": "test", "seed": seed,
                         **{m: cov + shift for m in SEED_METRICS}})
            buckets += [{"dataset": "syn", "method": method, "split": "test", "seed": seed, "bucket": b, "items": 5,
                         "train_share": 0.5, "exposure_share_at_20": 0.5 + shift, "item_recall_at_20": 0.1} for b in (0, 1)]
    by_seed = aggregate_over_seeds(pl.DataFrame(rows), ["dataset", "method", "split"], list(SEED_METRICS))
    figs = build_figures(pl.DataFrame(rows), pl.DataFrame(buckets), by_seed)
    ax = figs["accuracy_vs_coverage.png"].axes[0]
    assert "t interval over 3 seeds" in ax.get_title()
    xs = sorted(seg[:, 0].tolist() for c in ax.containers for seg in c.lines[2][0].get_segments())
    ease = by_seed.filter(pl.col("method") == "ease").row(0, named=True)  # mean 0.22 ± t₂ · 0.02 / √3
    assert xs[0] == pytest.approx([ease["coverage_at_20_seed_lo"], ease["coverage_at_20_seed_hi"]])
    assert ease["coverage_at_20_seed_hi"] - 0.22 == pytest.approx(scipy_t_half(0.02, 3))
    bars = figs["exposure_by_popularity.png"].axes[0].patches
    assert any(abs(b.get_height() - 0.52) < 1e-12 for b in bars)  # the mean share over the three seeds
    plots.plt.close("all")


def scipy_t_half(sd: float, n: int, level: float = 0.95) -> float:
    from scipy import stats

    return float(stats.t.ppf((1 + level) / 2, n - 1) * sd / np.sqrt(n))
