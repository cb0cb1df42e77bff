"""NewsRecFlow's tables, figures and what it exports (the alignment parts reuse :mod:`steps.align.pipeline`)."""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import polars as pl

from steps.align.config import AlignConfig
from steps.align.pipeline import Report, build_report
from steps.align.pipeline import export_parts as align_export_parts
from steps.figures import plt
from steps.storage import FileRef

TRAIN_METRICS_SCHEMA = {"model": pl.String, "split": pl.String, "epoch": pl.Int64, "auc": pl.Float64, "mrr": pl.Float64,
                        "ndcg_at_5": pl.Float64, "ndcg_at_10": pl.Float64, "impressions": pl.Int64, "seed": pl.Int64}
#: The accuracy metrics aggregated over training seeds (``train_metrics_by_seed``).
ACCURACY_METRICS = ("auc", "mrr", "ndcg_at_5", "ndcg_at_10")


def train_metrics_rows(model: str, best_epoch: int, per_split: Mapping[str, Mapping[str, float] | None],
                       seed: int | None = None) -> pl.DataFrame:
    """One row per evaluated split (splits without labels are left out) at the best epoch, with the
    training ``seed`` of the model."""
    rows = [{"model": model, "split": split, "epoch": best_epoch, "seed": seed,
             **{k: m[k] for k in TRAIN_METRICS_SCHEMA if k in m}}
            for split, m in per_split.items() if m]
    return pl.DataFrame(rows, schema=TRAIN_METRICS_SCHEMA)


def train_metrics_by_seed(train_metrics: pl.DataFrame, level: float = 0.95) -> pl.DataFrame:
    """The accuracy per (model, split) over training seeds: ``<m>_mean``, ``<m>_sd`` and the
    Student-t interval of the mean ``<m>_seed_lo/_hi`` (:func:`steps.uncertainty.aggregate_over_seeds`)."""
    from steps.uncertainty import aggregate_over_seeds

    return aggregate_over_seeds(train_metrics, ["model", "split"], ACCURACY_METRICS, level)


def with_model(df: pl.DataFrame, model: str, seed: int | None = None) -> pl.DataFrame:
    """``df`` with a leading ``model`` column (and, with ``seed``, a ``seed`` column after it)."""
    lead = [pl.lit(model).alias("model")] + ([pl.lit(seed, dtype=pl.Int64).alias("seed")] if seed is not None else [])
    return df.select(*lead, pl.all())


def alignment_reports(
    results: pl.DataFrame, category_mix: pl.DataFrame, user_kl_hist: pl.DataFrame, submissions: Mapping[str, Sequence[dict]],
    cfg: AlignConfig,
) -> dict[str, tuple[dict[str, pl.DataFrame], Report, Sequence[dict]]]:
    """Per model: AlignFlow's tables and report (best λ, comparison, figures) of that model's rows."""
    out = {}
    for model in results["model"].unique(maintain_order=True).to_list():
        res, mix, hist = (df.filter(pl.col("model") == model).drop("model", "seed", strict=False)
                          for df in (results, category_mix, user_kl_hist))
        rep = build_report(res, mix, hist, cfg)
        tables = {"results": res, "comparison": rep.comparison, "category_mix": mix, "best_lambda": rep.best_lambda}
        out[model] = (tables, rep, submissions.get(model, []))
    return out


def training_curves_figure(curves: pl.DataFrame) -> plt.Figure:
    """Training loss and validation AUC per epoch, one line per model (the best epoch marked)."""
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(11, 3.8))
    by = ["model", "seed"] if "seed" in curves.columns and curves["seed"].n_unique() > 1 else ["model"]
    for key, grp in curves.group_by(by, maintain_order=True):
        model = "@".join(str(k) for k in key)
        grp = grp.sort("epoch")
        ax_loss.plot(grp["epoch"], grp["loss"], "o-", label=model)
        ax_auc.plot(grp["epoch"], grp["val_auc"], "o-", label=model)
        best = grp.filter(pl.col("best"))
        ax_auc.plot(best["epoch"], best["val_auc"], "k*", ms=12)
    ax_loss.set(xlabel="epoch", ylabel="training loss (softmax cross-entropy)", title="Training loss")
    ax_auc.set(xlabel="epoch", ylabel="validation AUC", title="Validation AUC (★ = best epoch, kept)")
    for ax in (ax_loss, ax_auc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def export_parts(
    train_metrics: pl.DataFrame,
    curves: pl.DataFrame,
    predictions: Mapping[str, FileRef],
    model_submissions: Mapping[str, FileRef | None],
    alignment: Mapping[str, tuple[dict[str, pl.DataFrame], Report, Sequence[dict]]],
    by_seed: pl.DataFrame | None = None,
) -> tuple[dict, dict, dict]:
    """What a run exports, as ``(tables, figures, files)`` for :func:`steps.export.export_run`:
    accuracy tables (with several training seeds also ``train_metrics_by_seed``), curves, the dumps and EB-NeRD submissions per model, and each model's
    alignment (``<model>/``, as AlignFlow exports it)."""
    tables = {"train_metrics": train_metrics, "training_curves": curves}
    if by_seed is not None:
        tables["train_metrics_by_seed"] = by_seed
    figures = {"training_curves.png": training_curves_figure(curves)}
    files = {f"predictions/{model}_test_scores.parquet": ref for model, ref in predictions.items()}
    files.update({f"submissions/{model}_predictions.zip": ref for model, ref in model_submissions.items() if ref is not None})
    for model, (model_tables, rep, subs) in alignment.items():
        t, f, fl = align_export_parts(model_tables, rep, subs, prefix=f"{model}/")
        tables.update(t)
        figures.update(f)
        files.update({**fl, f"{model}/summary.json": json.dumps({"model": model}, indent=2).encode()})
    return tables, figures, files
