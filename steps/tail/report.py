"""TailFlow's report: the change against EASE, figures (matplotlib, headless)."""

from __future__ import annotations

import numpy as np
import polars as pl

from steps.figures import error_lengths, interval_bounds, plt

BASELINE = "ease"
COMPARED = ("recall_at_20", "recall_at_50", "ndcg_at_100", "coverage_at_20", "gini", "tail_share", "item_recall_at_20")
METHOD_LABEL = {"ease": "EASE (closed form)", "ease_gd": "EASE (gradient)", "ipw": "IPW", "tail_opt": "Tail opt. (CVaR)",
                "adversarial": "Adversarial (POSIT)", "pop_rerank": "Popularity re-rank"}
COLORS = {"ease": "C0", "ease_gd": "C7", "ipw": "C1", "tail_opt": "C2", "adversarial": "C3", "pop_rerank": "C4"}


#: How the sentences name the compared metrics.
LABEL = {"recall_at_20": "Recall@20", "recall_at_50": "Recall@50", "ndcg_at_100": "nDCG@100", "coverage_at_20": "coverage@20",
         "gini": "Gini", "tail_share": "tail share", "item_recall_at_20": "item Recall@20"}


def change_vs_baseline(results: pl.DataFrame, split: str = "test", baseline: str = BASELINE) -> pl.DataFrame:
    """Per dataset, method (and training seed): each compared metric's relative change against the
    baseline of the same dataset and seed; where the results hold paired deltas (``delta_<m>``,
    uncertainty on) also ``<m>_change_lo/_hi`` (the delta's interval over the baseline's value) and
    ``p_<m>_holm``."""
    sub = results.filter(pl.col("split") == split)
    on = ["dataset", "seed"] if "seed" in sub.columns else ["dataset"]
    base = sub.filter(pl.col("method") == baseline).select(*on, *[pl.col(c).alias(f"{c}_base") for c in COMPARED])
    if base.is_empty():
        return pl.DataFrame()
    exprs = []
    for c in COMPARED:
        exprs.append(((pl.col(c) - pl.col(f"{c}_base")) / pl.col(f"{c}_base")).alias(f"{c}_change"))
        if f"delta_{c}_lo" in sub.columns:
            exprs += [(pl.col(f"delta_{c}_lo") / pl.col(f"{c}_base")).alias(f"{c}_change_lo"),
                      (pl.col(f"delta_{c}_hi") / pl.col(f"{c}_base")).alias(f"{c}_change_hi")]
        if f"p_{c}_holm" in sub.columns:
            exprs.append(pl.col(f"p_{c}_holm"))
    out = sub.join(base, on=on, how="inner", maintain_order="left").select("dataset", "method", *on[1:], *exprs)
    return out.filter(pl.col("method") != baseline)


def _pct(r: dict, c: str) -> str:
    """``+27.0% [+22.1, +31.3]``: the relative change and, where known, its interval (in %)."""
    text = f"{r[c + '_change']:+.1%}"
    lo, hi = r.get(f"{c}_change_lo"), r.get(f"{c}_change_hi")
    if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
        text += f" [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return text


def change_sentences(change: pl.DataFrame, alpha: float = 0.05) -> list[str]:
    """Plain statements of the accuracy and coverage change of each method against EASE, with the
    intervals of the paired differences where the run has them, and which differences survive
    Holm's correction (adjusted p < ``alpha``) over the whole run."""
    lines = []
    seeds = change["seed"].n_unique() if "seed" in change.columns else 1
    for r in change.iter_rows(named=True):
        acc = r["recall_at_20_change"]
        verdict = "keeps Recall@20 (within 0.05%)" if abs(acc) < 5e-4 else f"{'raises' if acc > 0 else 'lowers'} Recall@20 by {abs(acc):.1%}"
        if r.get("recall_at_20_change_lo") is not None:  # the signed change's interval, in %
            verdict += _pct(r, "recall_at_20")[len(f"{acc:+.1%}"):]
        who = METHOD_LABEL.get(r["method"], r["method"]) + (f" (seed {r['seed']})" if seeds > 1 else "")
        line = (f"{r['dataset']}: {who} {verdict} "
                f"(nDCG@100 {_pct(r, 'ndcg_at_100')}) and changes coverage@20 by {_pct(r, 'coverage_at_20')}, "
                f"Gini by {_pct(r, 'gini')}, tail share by {r['tail_share_change']:+.1%}, "
                f"item Recall@20 by {r['item_recall_at_20_change']:+.1%} against EASE.")
        tested = [c for c in COMPARED if r.get(f"p_{c}_holm") is not None]
        if tested:
            kept = [LABEL[c] for c in tested if r[f"p_{c}_holm"] < alpha]
            line += (f" Surviving Holm's correction over the run (adjusted p < {alpha:g}): {', '.join(kept)}." if kept
                     else f" None of its differences survives Holm's correction over the run (adjusted p < {alpha:g}).")
        lines.append(line)
    return lines


#: The differences the card shows with their intervals.
CARD_DELTAS = ("recall_at_20", "ndcg_at_100", "coverage_at_20", "gini")


def delta_table(results: pl.DataFrame, split: str = "test", baseline: str = BASELINE) -> pl.DataFrame:
    """The card's table of paired differences against EASE: per dataset, method and seed, for each
    of :data:`CARD_DELTAS` ``Δ [lo, hi]`` and the Holm-adjusted p (text); empty without deltas."""
    if f"delta_{CARD_DELTAS[0]}" not in results.columns:
        return pl.DataFrame()
    sub = results.filter((pl.col("split") == split) & (pl.col("method") != baseline) & pl.col(f"delta_{CARD_DELTAS[0]}").is_not_null())

    def cell(v, lo, hi):
        return "–" if v is None else f"{v:+.4f} [{lo:+.4f}, {hi:+.4f}]" if lo is not None and hi is not None else f"{v:+.4f}"

    rows = []
    for r in sub.iter_rows(named=True):
        row = {"dataset": r["dataset"], "method": r["method"], "seed": str(r.get("seed", ""))}
        for m in CARD_DELTAS:
            row[f"Δ {LABEL[m]}"] = cell(r.get(f"delta_{m}"), r.get(f"delta_{m}_lo"), r.get(f"delta_{m}_hi"))
            p = r.get(f"p_{m}_holm")
            row[f"p Holm {LABEL[m]}"] = "–" if p is None else f"{p:.3g}"
        rows.append(row)
    return pl.DataFrame(rows) if rows else pl.DataFrame()


def first_seed(table: pl.DataFrame) -> pl.DataFrame:
    """The rows of the first training seed (the figures of a run with one seed)."""
    if "seed" not in table.columns or table.is_empty():
        return table
    return table.filter(pl.col("seed") == table["seed"][0])


#: The metrics the accuracy-against-coverage figure plots.
FIGURE_METRICS = ("coverage_at_20", "recall_at_20", "ndcg_at_100")


def seed_means(results_by_seed: pl.DataFrame) -> pl.DataFrame:
    """``results_by_seed`` in the shape the figures read: ``<m>`` the mean over training seeds and
    ``<m>_lo/_hi`` its Student-t interval over seeds (:func:`steps.uncertainty.aggregate_over_seeds`)."""
    return results_by_seed.select(
        "dataset", "method", "split", "n_seeds",
        *(e for m in FIGURE_METRICS for e in (pl.col(f"{m}_mean").alias(m), pl.col(f"{m}_seed_lo").alias(f"{m}_lo"),
                                              pl.col(f"{m}_seed_hi").alias(f"{m}_hi"))))


def bucket_means(buckets: pl.DataFrame) -> pl.DataFrame:
    """Per dataset, method, split and popularity bucket the mean over training seeds of each share."""
    keys = ["dataset", "method", "split", "bucket"]
    values = [c for c, t in buckets.schema.items() if c not in (*keys, "seed") and t.is_numeric()]
    return buckets.group_by(keys, maintain_order=True).agg(pl.col(values).mean())


def weight_diagnostics_text(results: pl.DataFrame, history: pl.DataFrame) -> str:
    """Markdown: per weighted method (ipw, adversarial), how far the learner's item weights moved on
    the first step and afterwards, and their Spearman ρ with popularity, per epoch and at the
    evaluated epoch (:mod:`steps.tail.diagnostics`)."""
    if "weight_popularity_spearman" not in results.columns:
        return "No method with learner item weights in this run."
    res = results.filter((pl.col("split") == "test") & pl.col("weight_popularity_spearman").is_not_null())
    if res.is_empty():
        return "No method with learner item weights in this run."
    lines = ["Mean |Δω| of the item weights (mean 1) on the first training step and from then to the evaluated "
             "epoch, and their Spearman ρ with training popularity. Little drift after the first step with ρ near −1 "
             "means the weights are a near-fixed inverse-popularity weighting rather than an adversary that tracks "
             "the learner (`adv_init: scaled` is recalign's adversary start that keeps adapting).", ""]
    has_hist = "weight_drift" in history.columns
    for r in res.iter_rows(named=True):
        per_epoch = ""
        if has_hist:
            h = history.filter((pl.col("dataset") == r["dataset"]) & (pl.col("method") == r["method"]))
            if "seed" in h.columns and r.get("seed") is not None:
                h = h.filter(pl.col("seed") == r["seed"])
            h = h.sort("epoch")
            per_epoch = "; per epoch drift " + ", ".join(f"{v:.2g}" for v in h["weight_drift"].to_list()) + \
                        ", ρ " + ", ".join(f"{v:+.2f}" for v in h["weight_popularity_spearman"].to_list())
        seed = f" seed {r['seed']}" if "seed" in res.columns and res["seed"].n_unique() > 1 else ""
        lines.append(f"* {r['dataset']} / {METHOD_LABEL.get(r['method'], r['method'])}{seed}: first step {r['weight_first_step']:.3g}, "
                     f"after it {r['weight_drift_after_first_step']:.3g}, ρ = {r['weight_popularity_spearman']:+.3f} "
                     f"(epoch {r['selected_epoch']}){per_epoch}.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures
def accuracy_vs_coverage(results: pl.DataFrame, split: str = "test", bars: str = "bootstrap interval") -> plt.Figure:
    """One panel per dataset: coverage@20 (x) against Recall@20 and nDCG@100 (y), a point per
    method, with 2-D error bars where the results carry intervals (``<m>_lo/_hi``; ``bars`` says
    which, in the panel titles)."""
    sub = results.filter(pl.col("split") == split)
    datasets = sub["dataset"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(2, len(datasets), figsize=(5.2 * len(datasets), 7.5), squeeze=False)
    for j, ds in enumerate(datasets):
        d = sub.filter(pl.col("dataset") == ds)
        x = d["coverage_at_20"].cast(pl.Float64).to_numpy()
        xerr = error_lengths(x, interval_bounds(d, "coverage_at_20"))
        for i, metric in enumerate(("recall_at_20", "ndcg_at_100")):
            ax, y = axes[i, j], d[metric].cast(pl.Float64).to_numpy()
            yerr = error_lengths(y, interval_bounds(d, metric))
            for k, method in enumerate(d["method"].to_list()):
                ax.errorbar(x[k:k + 1], y[k:k + 1], xerr=None if xerr is None else xerr[:, k:k + 1],
                            yerr=None if yerr is None else yerr[:, k:k + 1], fmt="o", color=COLORS.get(method, "k"), ms=7,
                            capsize=2, elinewidth=0.8, label=METHOD_LABEL.get(method, method))
                ax.annotate(method, (x[k], y[k]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel("coverage@20 (share of the catalogue)")
            ax.set_ylabel(metric.replace("_at_", "@"))
            ax.set_title(f"{ds} ({split})" + (f" — bars: {bars}" if xerr is not None else ""), fontsize=9)
            ax.grid(alpha=0.3)
        axes[0, j].legend(fontsize=7)
    fig.tight_layout()
    return fig


def exposure_bars(buckets: pl.DataFrame, split: str = "test", column: str = "exposure_share_at_20",
                  ylabel: str = "share of top-20 slots") -> plt.Figure:
    """Per dataset: a bar per method in each popularity bucket (head → tail), with the training
    interaction share as reference (exposure before promotion = EASE, after = the other methods)."""
    sub = buckets.filter(pl.col("split") == split)
    datasets = sub["dataset"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(len(datasets), 1, figsize=(10, 3.8 * len(datasets)), squeeze=False)
    for ax, ds in zip(axes[:, 0], datasets):
        d = sub.filter(pl.col("dataset") == ds)
        methods = d["method"].unique(maintain_order=True).to_list()
        n_b = int(d["bucket"].max()) + 1
        series = ([("training interactions", d.filter(pl.col("method") == methods[0]).sort("bucket")["train_share"].to_numpy(), "0.75")]
                  if column == "exposure_share_at_20" else [])
        series += [(METHOD_LABEL.get(m, m), d.filter(pl.col("method") == m).sort("bucket")[column].to_numpy(), COLORS.get(m, "k"))
                   for m in methods]
        width = 0.8 / len(series)
        x = np.arange(n_b)
        for i, (label, vals, color) in enumerate(series):
            ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=label, color=color)
        ax.set_xticks(x, ["head"] + [str(b) for b in range(1, n_b - 1)] + ["tail"])
        ax.set_xlabel("popularity bucket (equal training-interaction mass, most popular first)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ds} ({split})")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncols=2)
    fig.tight_layout()
    return fig


def build_figures(results: pl.DataFrame, buckets: pl.DataFrame, results_by_seed: pl.DataFrame | None = None
                  ) -> dict[str, plt.Figure]:
    """The report's figures: of the run's one training seed (bars: the bootstrap intervals over
    test users), or with several seeds (``results_by_seed``) of the mean over seeds (bars: the
    t interval over seeds, the spread of retraining; buckets: the mean shares)."""
    if results_by_seed is None:
        results, buckets, bars = first_seed(results), first_seed(buckets), "bootstrap interval"
    else:
        n = int(results_by_seed["n_seeds"].max())
        results, buckets, bars = seed_means(results_by_seed), bucket_means(buckets), f"t interval over {n} seeds (means)"
    return {
        "accuracy_vs_coverage.png": accuracy_vs_coverage(results, bars=bars),
        "exposure_by_popularity.png": exposure_bars(buckets),
        "item_recall_by_popularity.png": exposure_bars(buckets, column="item_recall_at_20", ylabel="mean item Recall@20"),
    }


def change_report(results: pl.DataFrame, level: float) -> tuple[pl.DataFrame, list[str]]:
    """The change of every method against EASE and its plain statements (Holm at ``1 - level``)."""
    change = change_vs_baseline(results)
    return change, (change_sentences(change, 1 - level) if not change.is_empty() else [])


def export_tables(results, buckets, history, change, results_by_seed) -> dict:
    """TailFlow's exported tables (``results_by_seed`` only with several training seeds)."""
    tables = {"results": results, "buckets": buckets, "history": history, "change_vs_ease": change}
    if results_by_seed is not None:
        tables["results_by_seed"] = results_by_seed
    return tables
