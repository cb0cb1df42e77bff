"""The combination comparison: each method at its best λ, side by side (the paper's final table)."""

from __future__ import annotations

import math

import polars as pl

from steps.align.config import AUTO, AlignConfig
from steps.uncertainty import HOLM_MARK, holm_mark, interval_cell, n_tests, number_text, row_value

#: (column in the comparison, method, selection, key in ``best_lambda``)
COMPARED = (
    ("nails_stoch", "nails", "stoch", "nails_stoch"),
    ("nails_det", "nails", "det", "nails_det"),
    ("steck", "steck", "det", "steck"),
    ("nails_steck", "nails_steck", "det", "nails_steck"),
)


def choose_best_lambda(results: pl.DataFrame, distribution: str, method: str, selection: str, configured) -> float | None:
    """The configured best λ, or with ``auto`` the grid λ with the lowest ``kl_at_n`` (NAILS) or
    ``user_kl_mean`` (Steck methods); ties go to the smaller λ. None if the cell was not run."""
    cells = results.filter(
        (pl.col("distribution") == distribution) & (pl.col("method") == method) & (pl.col("selection") == selection)
    ).sort("lambda")
    if cells.is_empty():
        return None
    if configured != AUTO:
        return float(configured)
    metric = "kl_at_n" if method == "nails" else "user_kl_mean"
    if cells[metric].null_count() == cells.height:
        metric = "ndcg_at_10"  # without a BA block, fall back to accuracy
        return float(cells.sort([metric, "lambda"], descending=[True, False])["lambda"][0])
    return float(cells.sort([metric, "lambda"], nulls_last=True)["lambda"][0])


def best_lambdas(results: pl.DataFrame, cfg: AlignConfig) -> pl.DataFrame:
    """One row per (distribution, compared method): the λ used in the comparison and why."""
    rows = []
    for dist in results["distribution"].unique(maintain_order=True).to_list():
        for column, method, selection, key in COMPARED:
            configured = cfg.best_lambda_for(dist, key)
            lam = choose_best_lambda(results, dist, method, selection, configured)
            if lam is not None:
                rows.append({"distribution": dist, "compared": column, "method": method, "selection": selection,
                             "lambda": lam, "chosen_by": "config" if configured != AUTO else "auto"})
    return pl.DataFrame(rows, schema={"distribution": pl.String, "compared": pl.String, "method": pl.String,
                                      "selection": pl.String, "lambda": pl.Float64, "chosen_by": pl.String})


def comparison_table(results: pl.DataFrame, category_mix: pl.DataFrame, best: pl.DataFrame) -> pl.DataFrame:
    """Long table ``distribution, column, category, share`` plus rows ``kl`` and ``coverage``.

    Columns: ``target``, ``baseline`` (top-N at λ = 0, deterministic), ``nails_all`` (summed NAILS
    probabilities at the largest λ of the grid), and every compared method at its best λ.
    """
    rows = []
    for dist in results["distribution"].unique(maintain_order=True).to_list():
        mix = category_mix.filter(pl.col("distribution") == dist)
        res = results.filter(pl.col("distribution") == dist)
        columns: list[tuple[str, pl.DataFrame, float | None, float | None]] = []
        target = mix.filter(pl.col("basis") == "target")
        columns.append(("target", target, 0.0, None))
        base = res.filter((pl.col("lambda") == 0.0) & (pl.col("selection") == "det")).head(1)
        if base.height:
            b = base.row(0, named=True)
            columns.append(("baseline", mix.filter((pl.col("method") == b["method"]) & (pl.col("selection") == "det")
                                                  & (pl.col("lambda") == 0.0) & (pl.col("basis") == "top_n")),
                            b["kl_at_n"], b["coverage_at_n"]))
        nails = res.filter(pl.col("method") == "nails")
        if nails.height:
            lam_max = float(nails["lambda"].max())
            kl_all = nails.filter(pl.col("lambda") == lam_max)["kl_all"][0]
            columns.append((f"nails_all_{lam_max:g}", mix.filter((pl.col("basis") == "all") & (pl.col("method") == "nails")
                                                               & (pl.col("lambda") == lam_max)), kl_all, 1.0))
        for b in best.filter(pl.col("distribution") == dist).iter_rows(named=True):
            cell = res.filter((pl.col("method") == b["method"]) & (pl.col("selection") == b["selection"])
                              & (pl.col("lambda") == b["lambda"]))
            m = mix.filter((pl.col("method") == b["method"]) & (pl.col("selection") == b["selection"])
                           & (pl.col("lambda") == b["lambda"]) & (pl.col("basis") == "top_n"))
            if cell.height:
                c = cell.row(0, named=True)
                columns.append((f"{b['compared']}_{b['lambda']:g}", m, c["kl_at_n"], c["coverage_at_n"]))
        for name, m, kl, cov in columns:
            rows += [{"distribution": dist, "column": name, "row": r["category"], "value": r["share"]} for r in m.iter_rows(named=True)]
            rows.append({"distribution": dist, "column": name, "row": "kl", "value": kl})
            rows.append({"distribution": dist, "column": name, "row": "coverage", "value": cov})
    return pl.DataFrame(rows, schema={"distribution": pl.String, "column": pl.String, "row": pl.String, "value": pl.Float64})


def comparison_wide(comparison: pl.DataFrame, distribution: str) -> pl.DataFrame:
    """The comparison of one distribution as the paper prints it: categories (+kl, coverage) × columns."""
    sub = comparison.filter(pl.col("distribution") == distribution)
    if sub.is_empty():
        return sub
    order = sub["column"].unique(maintain_order=True).to_list()
    wide = sub.pivot(on="column", index="row", values="value", aggregate_function="first")
    rows = sorted(r for r in wide["row"].to_list() if r not in ("kl", "coverage")) + ["kl", "coverage"]
    wide = wide.with_columns(pl.col("row").replace_strict(rows, list(range(len(rows))), return_dtype=pl.Int64).alias("_o"))
    return wide.sort("_o").select(["row", *[c for c in order if c in wide.columns]])


# --------------------------------------------------------------------------- the card's best-λ table
#: Metrics the card's best-λ table shows (value at the best λ and its difference to λ = 0), in this
#: order, where the results have them.
SHOWN_METRICS = (("kl_at_n", "KL@N"), ("user_kl_mean", "user KL"), ("c_kl_mean", "C_KL"), ("coverage_at_n", "coverage@N"),
                 ("ndcg_at_10", "nDCG@10"), ("precision_at_n", "precision@N"), ("ndcg_at_n", "nDCG@N"))
#: Marks a difference whose Holm-adjusted p-value is below the level.
def shown_metrics(results: pl.DataFrame) -> list[tuple[str, str]]:
    """The :data:`SHOWN_METRICS` the table has values of."""
    return [(m, label) for m, label in SHOWN_METRICS if m in results.columns and results[m].null_count() < results.height]


def difference_cell(row: dict, base: dict | None, metric: str, alpha: float = 0.05) -> str:
    """``"−0.012 [−0.015, −0.009] ✓"``: the cell's difference to λ = 0 (``delta_<m>``, else the
    point difference to ``base``), its interval, and :data:`HOLM_MARK` when ``p_<m>_holm < alpha``."""
    est = row_value(row, metric)
    if est is None:
        return "–"
    if float(row["lambda"]) == 0.0:
        return "0 (λ = 0)"
    d = row_value(row, f"delta_{metric}")
    if d is None:
        b = None if base is None else row_value(base, metric)
        return "–" if b is None else number_text(est - b)
    return holm_mark(interval_cell(row, f"delta_{metric}"), row_value(row, f"p_{metric}_holm"), alpha)


def best_lambda_differences(results: pl.DataFrame, best: pl.DataFrame, alpha: float = 0.05) -> pl.DataFrame:
    """The card's best-λ table (strings): per (distribution, compared method) the best λ, and per
    shown metric its value there and the difference to λ = 0 with its interval and Holm mark."""
    metrics = shown_metrics(results)
    key = ["distribution", "method", "selection"]
    rows = []
    for b in best.iter_rows(named=True):
        cell = results.filter(*(pl.col(k) == b[k] for k in key))
        at = cell.filter(pl.col("lambda") == b["lambda"])
        zero = cell.filter(pl.col("lambda") == 0.0)
        if at.is_empty():
            continue
        r, z = at.row(0, named=True), (zero.row(0, named=True) if zero.height else None)
        out = {"distribution": b["distribution"], "compared": b["compared"], "λ": f"{b['lambda']:g}",
               "chosen by": b["chosen_by"]}
        for m, label in metrics:
            out[label] = number_text(row_value(r, m))
            out[f"Δ {label} vs λ = 0"] = difference_cell(r, z, m, alpha)
        rows.append(out)
    headers = ["distribution", "compared", "λ", "chosen by",
               *(c for _, label in metrics for c in (label, f"Δ {label} vs λ = 0"))]
    return pl.DataFrame(rows, schema={h: pl.String for h in headers})


def uncertainty_legend(results: pl.DataFrame, spec, lists: bool, alpha: float = 0.05) -> str:
    """One line under the best-λ table: what was resampled, paired against what, the correction."""
    if not getattr(spec, "enabled", False) or not any(c.startswith("delta_") for c in results.columns) \
            or all(results[c].null_count() == results.height for c in results.columns if c.startswith("delta_")):
        return ("Δ = difference to λ = 0 of the same target, method and selection; no intervals or tests "
                "(`uncertainty: resamples: 0`).")
    n = n_tests(results)
    floor = ""
    if n / (spec.resamples + 1) >= alpha:  # resampling p-values are ≥ 1/(B + 1): Holm's smallest is ≥ n/(B + 1)
        floor = (f" With B = {spec.resamples:,} no p-value is below 1/{spec.resamples + 1:,}, so after Holm over {n:,} tests "
                 f"none can be below {alpha:g}: no marks are possible — set `uncertainty.resamples` to at least "
                 f"{math.ceil(n / alpha):,} (read the intervals meanwhile: one that excludes 0 is a clear difference "
                 f"on its own, not corrected for the others).")
    units = ("the evaluated users" if lists else
             "the beyond-accuracy rows (KL, coverage) and the labelled impressions (accuracy)")
    return (f"Δ = difference to λ = 0 of the same target, method and selection on the same units; [lo, hi] its "
            f"{spec.level:.0%} {'BCa' if spec.method == 'bca' else spec.method} bootstrap interval over "
            f"{spec.resamples:,} paired resamples of {units}, the model and candidates held fixed. "
            f"{HOLM_MARK} = p < {alpha:g} after Holm's correction across all {n:,} p-values of the run "
            f"(cells × metrics).{floor}")
