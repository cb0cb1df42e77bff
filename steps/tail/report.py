"""TailFlow's report: the change against EASE, figures (matplotlib, headless)."""

from __future__ import annotations

import numpy as np
import polars as pl

from steps.figures import plt

BASELINE = "ease"
COMPARED = ("recall_at_20", "recall_at_50", "ndcg_at_100", "coverage_at_20", "gini", "tail_share", "item_recall_at_20")
METHOD_LABEL = {"ease": "EASE (closed form)", "ease_gd": "EASE (gradient)", "ipw": "IPW", "tail_opt": "Tail opt. (CVaR)",
                "adversarial": "Adversarial (POSIT)", "pop_rerank": "Popularity re-rank"}
COLORS = {"ease": "C0", "ease_gd": "C7", "ipw": "C1", "tail_opt": "C2", "adversarial": "C3", "pop_rerank": "C4"}


def change_vs_baseline(results: pl.DataFrame, split: str = "test", baseline: str = BASELINE) -> pl.DataFrame:
    """Per dataset and method: each compared metric, the baseline's value and the relative change."""
    sub = results.filter(pl.col("split") == split)
    base = sub.filter(pl.col("method") == baseline).select("dataset", *[pl.col(c).alias(f"{c}_base") for c in COMPARED])
    if base.is_empty():
        return pl.DataFrame()
    out = sub.join(base, on="dataset", how="inner").select(
        "dataset", "method",
        *[((pl.col(c) - pl.col(f"{c}_base")) / pl.col(f"{c}_base")).alias(f"{c}_change") for c in COMPARED],
    )
    return out.filter(pl.col("method") != baseline)


def change_sentences(change: pl.DataFrame) -> list[str]:
    """Plain statements of the accuracy and coverage change of each method against EASE."""
    lines = []
    for r in change.iter_rows(named=True):
        acc = r["recall_at_20_change"]
        verdict = "keeps Recall@20 (within 0.05%)" if abs(acc) < 5e-4 else f"{'raises' if acc > 0 else 'lowers'} Recall@20 by {abs(acc):.1%}"
        lines.append(
            f"{r['dataset']}: {METHOD_LABEL.get(r['method'], r['method'])} {verdict} "
            f"(nDCG@100 {r['ndcg_at_100_change']:+.1%}) and changes coverage@20 by {r['coverage_at_20_change']:+.1%}, "
            f"tail share by {r['tail_share_change']:+.1%}, item Recall@20 by {r['item_recall_at_20_change']:+.1%} against EASE."
        )
    return lines


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
            h = history.filter((pl.col("dataset") == r["dataset"]) & (pl.col("method") == r["method"])).sort("epoch")
            per_epoch = "; per epoch drift " + ", ".join(f"{v:.2g}" for v in h["weight_drift"].to_list()) + \
                        ", ρ " + ", ".join(f"{v:+.2f}" for v in h["weight_popularity_spearman"].to_list())
        lines.append(f"* {r['dataset']} / {METHOD_LABEL.get(r['method'], r['method'])}: first step {r['weight_first_step']:.3g}, "
                     f"after it {r['weight_drift_after_first_step']:.3g}, ρ = {r['weight_popularity_spearman']:+.3f} "
                     f"(epoch {r['selected_epoch']}){per_epoch}.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures
def accuracy_vs_coverage(results: pl.DataFrame, split: str = "test") -> plt.Figure:
    """One panel per dataset: coverage@20 (x) against Recall@20 and nDCG@100 (y), a point per method."""
    sub = results.filter(pl.col("split") == split)
    datasets = sub["dataset"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(2, len(datasets), figsize=(5.2 * len(datasets), 7.5), squeeze=False)
    for j, ds in enumerate(datasets):
        d = sub.filter(pl.col("dataset") == ds)
        for i, metric in enumerate(("recall_at_20", "ndcg_at_100")):
            ax = axes[i, j]
            for r in d.iter_rows(named=True):
                ax.scatter(r["coverage_at_20"], r[metric], color=COLORS.get(r["method"], "k"), s=50,
                           label=METHOD_LABEL.get(r["method"], r["method"]))
                ax.annotate(r["method"], (r["coverage_at_20"], r[metric]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel("coverage@20 (share of the catalogue)")
            ax.set_ylabel(metric.replace("_at_", "@"))
            ax.set_title(f"{ds} ({split})")
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


def build_figures(results: pl.DataFrame, buckets: pl.DataFrame) -> dict[str, plt.Figure]:
    return {
        "accuracy_vs_coverage.png": accuracy_vs_coverage(results),
        "exposure_by_popularity.png": exposure_bars(buckets),
        "item_recall_by_popularity.png": exposure_bars(buckets, column="item_recall_at_20", ylabel="mean item Recall@20"),
    }
