"""Figures of the alignment experiment (matplotlib, headless): each returns a Figure.

Where the results carry bootstrap intervals (``<m>_lo`` / ``<m>_hi``, :mod:`steps.uncertainty`)
the curves get shaded bands and the points error bars; without them (``uncertainty: resamples: 0``,
or null cells) the figures are drawn without.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from steps.figures import error_lengths, interval_bounds, plt

METHOD_LABEL = {
    ("nails", "det"): "NAILS (det)",
    ("nails", "stoch"): "NAILS (stoch)",
    ("steck", "det"): "Steck",
    ("nails_steck", "det"): "NAILS + Steck",
}
COLORS = {("nails", "det"): "C0", ("nails", "stoch"): "C1", ("steck", "det"): "C2", ("nails_steck", "det"): "C3"}


def _label(method: str, selection: str) -> str:
    return METHOD_LABEL.get((method, selection), f"{method} ({selection})")


def _band(ax, x, grp: pl.DataFrame, col: str, color) -> None:
    """Shade ``col``'s interval around its curve (nothing when there is none)."""
    b = interval_bounds(grp, col)
    if b is not None:
        ax.fill_between(np.asarray(x, dtype=np.float64), b[0], b[1], color=color, alpha=0.18, lw=0)


def kl_vs_lambda(results: pl.DataFrame) -> plt.Figure:
    """KL@N (and KL@|C| for NAILS) against λ, one panel per target distribution."""
    dists = results["distribution"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(1, len(dists), figsize=(5.5 * len(dists), 4), squeeze=False)
    for ax, dist in zip(axes[0], dists):
        sub = results.filter(pl.col("distribution") == dist)
        for (method, sel), grp in sub.group_by(["method", "selection"], maintain_order=True):
            grp = grp.sort("lambda")
            color = COLORS.get((method, sel))
            if grp["kl_at_n"].null_count() < grp.height:
                ax.plot(grp["lambda"], grp["kl_at_n"], "o-", color=color, label=f"{_label(method, sel)} KL@N")
                _band(ax, grp["lambda"], grp, "kl_at_n", color)
            if method == "nails" and sel == "det" and grp["kl_all"].null_count() < grp.height:
                ax.plot(grp["lambda"], grp["kl_all"], "k--", label="NAILS KL@|C| (all scores)")
                _band(ax, grp["lambda"], grp, "kl_all", "k")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xlabel("λ")
        ax.set_ylabel("KL(p* ‖ category mix)")
        ax.set_title(dist + (" (bands: bootstrap interval)" if interval_bounds(sub, "kl_at_n") else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def category_mix_bars(comparison: pl.DataFrame) -> plt.Figure:
    """The paper's bar chart: category mix of the target, the baseline and each method at its best λ."""
    dists = comparison["distribution"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(len(dists), 1, figsize=(11, 3.8 * len(dists)), squeeze=False)
    for ax, dist in zip(axes[:, 0], dists):
        sub = comparison.filter((pl.col("distribution") == dist) & ~pl.col("row").is_in(["kl", "coverage"]))
        cats = sorted(sub["row"].unique().to_list())
        cols = sub["column"].unique(maintain_order=True).to_list()
        width = 0.8 / max(len(cols), 1)
        x = np.arange(len(cats))
        for i, col in enumerate(cols):
            m = dict(sub.filter(pl.col("column") == col).select("row", "value").iter_rows())
            kl = comparison.filter((pl.col("distribution") == dist) & (pl.col("column") == col) & (pl.col("row") == "kl"))["value"]
            lbl = col if col == "target" or kl.is_empty() or kl[0] is None else f"{col} (KL={kl[0]:.3f})"
            ax.bar(x + (i - (len(cols) - 1) / 2) * width, [m.get(c, 0.0) for c in cats], width, label=lbl)
        ax.set_xticks(x, cats)
        ax.set_ylabel("share of top-N")
        ax.set_title(f"Category mix — {dist}")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncols=2)
    fig.tight_layout()
    return fig


def _shown_lambdas(lams: list[float], best: float | None) -> list[float]:
    """At most three λ of a grid: 0 (or the smallest), the best λ, and the largest."""
    lams = sorted(lams)
    pick = [lams[0]]
    if best is not None and best in lams:
        pick.append(best)
    elif len(lams) > 2:
        pick.append(lams[len(lams) // 2])
    pick.append(lams[-1])
    return sorted(set(pick))


def user_kl_density(hist: pl.DataFrame, best: pl.DataFrame | None = None) -> plt.Figure:
    """How the per-row (user-level) KL of the top-N lists is spread: the ECDF from the histogram's
    bins, one panel per (distribution, method), a curve for λ = 0, the best λ (``best``: a
    :func:`steps.align.report.best_lambdas` table; without it the middle λ) and the largest λ."""
    if hist.is_empty():
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "no beyond-accuracy block: user-level KL not computed", ha="center")
        ax.axis("off")
        return fig
    best_of = {} if best is None else {(r["distribution"], r["method"], r["selection"]): r["lambda"]
                                       for r in best.iter_rows(named=True)}
    keys = hist.select("distribution", "method", "selection").unique(maintain_order=True).rows()
    n = len(keys)
    ncols = min(4, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.2 * nrows), squeeze=False)
    styles = ("-", "--", ":")
    for ax, key in zip(axes.ravel(), keys):
        dist, method, sel = key
        sub = hist.filter((pl.col("distribution") == dist) & (pl.col("method") == method) & (pl.col("selection") == sel))
        b = best_of.get(key)
        for i, lam in enumerate(_shown_lambdas(sub["lambda"].unique().to_list(), b)):
            grp = sub.filter(pl.col("lambda") == lam).sort("bin_left")
            counts = grp["count"].to_numpy().astype(np.float64)
            if counts.sum() <= 0:
                continue
            cum = np.cumsum(counts) / counts.sum()
            # bins with no rows are absent: rise within each bin, flat across the gaps between them
            x = np.column_stack([grp["bin_left"].to_numpy(), grp["bin_right"].to_numpy()]).ravel()
            y = np.column_stack([np.concatenate([[0.0], cum[:-1]]), cum]).ravel()
            label = f"λ={lam:g}" + (" (best)" if b is not None and lam == b else "")
            ax.plot(x, y, styles[i % len(styles)], color=f"C{i}", label=label, lw=1.5)
        ax.set_title(f"{dist}: {_label(method, sel)}", fontsize=9)
        ax.set_xlabel("user-level KL@N")
        ax.set_ylabel("share of users ≤ x")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def accuracy_vs_kl(results: pl.DataFrame, accuracy: str = "ndcg_at_10") -> plt.Figure:
    """Trade-off: one point per method × λ (x: KL@N on the BA block, y: accuracy on impressions),
    with 2-D error bars from the bootstrap intervals where the results have them."""
    dists = results["distribution"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(1, len(dists), figsize=(5.5 * len(dists), 4), squeeze=False)
    for ax, dist in zip(axes[0], dists):
        sub = results.filter(pl.col("distribution") == dist)
        for (method, sel), grp in sub.group_by(["method", "selection"], maintain_order=True):
            grp = grp.sort("lambda").drop_nulls([accuracy])
            if grp.is_empty():
                continue
            x = grp["kl_at_n"].cast(pl.Float64).fill_null(np.nan).to_numpy()
            xerr = error_lengths(x, interval_bounds(grp, "kl_at_n"))
            if np.isnan(x).all():
                x, xerr = grp["lambda"].to_numpy(), None
                ax.set_xlabel("λ (no beyond-accuracy block)")
            else:
                ax.set_xlabel("KL@N (beyond-accuracy block)")
            y = grp[accuracy].cast(pl.Float64).to_numpy()
            ax.errorbar(x, y, xerr=xerr, yerr=error_lengths(y, interval_bounds(grp, accuracy)), fmt="o-", color=COLORS.get((method, sel)),
                        label=_label(method, sel), ms=4, capsize=2, elinewidth=0.8)
            for xi, yi, lam in zip(x, grp[accuracy], grp["lambda"]):
                ax.annotate(f"{lam:g}", (xi, yi), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_ylabel(accuracy)
        ax.set_title(dist)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def calibration_curve(results: pl.DataFrame, accuracy: str = "precision_at_n") -> plt.Figure:
    """Steck's figure: mean miscalibration C_KL and accuracy against λ, one column per target."""
    dists = results["distribution"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(2, len(dists), figsize=(5.5 * len(dists), 6.5), squeeze=False, sharex=True)
    for j, dist in enumerate(dists):
        sub = results.filter(pl.col("distribution") == dist)
        for (method, sel), grp in sub.group_by(["method", "selection"], maintain_order=True):
            grp = grp.sort("lambda")
            style = dict(color=COLORS.get((method, sel)), label=_label(method, sel), ms=4)
            axes[0, j].plot(grp["lambda"], grp["c_kl_mean"], "o-", **style)
            _band(axes[0, j], grp["lambda"], grp, "c_kl_mean", style["color"])
            if grp[accuracy].null_count() < grp.height:
                axes[1, j].plot(grp["lambda"], grp[accuracy], "o-", **style)
                _band(axes[1, j], grp["lambda"], grp, accuracy, style["color"])
        axes[0, j].set_title(dist)
        axes[0, j].set_ylabel("mean C_KL (miscalibration)")
        axes[1, j].set_ylabel(accuracy)
        axes[1, j].set_xlabel("λ")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
        axes[0, j].legend(fontsize=8)
    fig.tight_layout()
    return fig


def user_mix_bars(mix: pl.DataFrame, title: str) -> plt.Figure:
    """One user's genre mix: the target and each list (``list``, ``category``, ``share`` rows)."""
    cats = mix.filter(pl.col("list") == "target").sort("share", descending=True)["category"].to_list()
    lists = mix["list"].unique(maintain_order=True).to_list()
    fig, ax = plt.subplots(figsize=(11, 3.8))
    width = 0.8 / max(len(lists), 1)
    x = np.arange(len(cats))
    for i, name in enumerate(lists):
        m = dict(mix.filter(pl.col("list") == name).select("category", "share").iter_rows())
        ax.bar(x + (i - (len(lists) - 1) / 2) * width, [m.get(c, 0.0) for c in cats], width, label=name)
    ax.set_xticks(x, cats, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("share of the top-N")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig

