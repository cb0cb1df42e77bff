"""The alignment flow's building blocks above the methods: inputs, joins, exports, summaries."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import polars as pl

from steps.align import plots
from steps.align.config import AlignConfig
from steps.align.data import PreparedDump
from steps.align.report import best_lambdas, comparison_table, comparison_wide
from steps.align.synthetic import SyntheticDumpSpec, write_synthetic_dump
from steps.errors import InputError
from steps.storage import FileRef, atomic_export_dir, link_or_copy


@dataclass(frozen=True)
class Inputs:
    predictions: str
    articles: str
    synthetic: bool


def resolve_inputs(predictions: str, articles: str, spec: SyntheticDumpSpec, data_dir: str | os.PathLike) -> Inputs:
    """The user's files, or a synthetic dump written to ``data_dir`` when neither is given."""
    if bool(predictions) != bool(articles):
        missing = "--articles" if predictions else "--predictions"
        raise InputError(f"{missing} is required when {'--predictions' if predictions else '--articles'} is given")
    if predictions:
        for p in (predictions, articles):
            if not Path(p).exists():
                raise InputError(f"{p}: file not found")
        return Inputs(str(Path(predictions).absolute()), str(Path(articles).absolute()), False)
    paths = write_synthetic_dump(Path(data_dir) / "synthetic", spec)
    return Inputs(paths["predictions"], paths["articles"], True)


#: The model whose dump ``--predictions-from`` takes when the spec names none (the NAILS paper's model).
DEFAULT_DUMP_MODEL = "nrms_docvec"


def parse_predictions_from(spec: str) -> tuple[str, str | None]:
    """``"NewsRecFlow/<run_id>[/<model>]"`` → (``"NewsRecFlow/<run_id>"``, model or None)."""
    parts = [p for p in spec.strip().split("/")]
    if len(parts) not in (2, 3) or not all(parts):
        raise InputError(f"--predictions-from {spec!r}: expected <Flow>/<run_id> or <Flow>/<run_id>/<model>, e.g. NewsRecFlow/1712345678")
    return "/".join(parts[:2]), (parts[2] if len(parts) == 3 else None)


def dump_of_run(spec: str, predictions: Mapping[str, FileRef], articles: str, model: str | None) -> tuple[str, str]:
    """The (verified) dump and articles paths of a finished run's ``predictions`` artifact."""
    if not predictions:
        raise InputError(f"--predictions-from {spec!r}: the run has no prediction dumps")
    if model is None:
        model = DEFAULT_DUMP_MODEL if DEFAULT_DUMP_MODEL in predictions else next(iter(predictions))
    if model not in predictions:
        raise InputError(f"--predictions-from {spec!r}: no dump for model {model!r}; the run has {', '.join(predictions)}")
    predictions[model].verify()
    return predictions[model].path, articles


def concat(frames: Sequence[pl.DataFrame]) -> pl.DataFrame:
    frames = [f for f in frames if f is not None]
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame()


def sort_results(results: pl.DataFrame, target_order: Sequence[str]) -> pl.DataFrame:
    """Rows in config order: target, then method (nails, steck, nails_steck), selection, λ."""
    method_order = {"nails": 0, "steck": 1, "nails_steck": 2}
    t_order = {t: i for i, t in enumerate(target_order)}
    return (
        results.with_columns(
            pl.col("distribution").replace_strict(t_order, default=len(t_order), return_dtype=pl.Int64).alias("_t"),
            pl.col("method").replace_strict(method_order, default=9, return_dtype=pl.Int64).alias("_m"),
        )
        .sort(["_t", "_m", "selection", "lambda"])
        .drop(["_t", "_m"])
    )


def data_summary(prepared: PreparedDump) -> dict:
    return {
        "predictions": prepared.predictions_path,
        "articles": prepared.articles_path,
        "rows": prepared.n_rows,
        "beyond_accuracy_rows": prepared.n_ba_rows,
        "candidates": int(len(prepared.ba_candidate_ids)),
        "candidates_excluded": prepared.n_ba_candidates_excluded,
        "impressions": prepared.n_impressions,
        "labelled_impressions": prepared.n_labelled,
        "distribution_source": prepared.distribution_source,
        "articles_without_category": prepared.n_missing_category_articles,
        "notes": list(prepared.notes),
    }


def model_distribution_dict(prepared: PreparedDump) -> dict[str, float]:
    """p(E) over the categories that carry probability mass."""
    return {c: float(p) for c, p in zip(prepared.categories, prepared.model_distribution) if p > 0}


@dataclass
class Report:
    best_lambda: pl.DataFrame
    comparison: pl.DataFrame
    figures: dict  # file name -> matplotlib Figure


def build_report(results: pl.DataFrame, category_mix: pl.DataFrame, user_kl_hist: pl.DataFrame, cfg: AlignConfig) -> Report:
    best = best_lambdas(results, cfg)
    comparison = comparison_table(results, category_mix, best)
    figures = {
        "kl_vs_lambda.png": plots.kl_vs_lambda(results),
        "category_mix.png": plots.category_mix_bars(comparison),
        "user_kl_density.png": plots.user_kl_density(user_kl_hist),
        "accuracy_vs_kl.png": plots.accuracy_vs_kl(results),
    }
    return Report(best, comparison, figures)


def export_run(
    export_dir: str | os.PathLike,
    tables: dict[str, pl.DataFrame],
    report: Report,
    submissions: Sequence[dict],
    summary: dict,
) -> Path:
    """Write tables (CSV), figures (PNG), submission zips and ``summary.json`` atomically."""
    with atomic_export_dir(export_dir) as tmp:
        for name, df in tables.items():
            df.write_csv(tmp / f"{name}.csv")
        for dist in report.comparison["distribution"].unique(maintain_order=True).to_list():
            comparison_wide(report.comparison, dist).write_csv(tmp / f"comparison_{dist}.csv")
        for name, fig in report.figures.items():
            plots.save(fig, tmp / name)
        for sub in submissions:
            link_or_copy(sub["file"].path, tmp / "submissions" / Path(sub["file"].path).name)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    return Path(export_dir).absolute()


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def results_markdown(results: pl.DataFrame, columns: Sequence[str] | None = None, digits: int = 4) -> list[list[str]]:
    """Rows of strings for a card table."""
    cols = list(columns or results.columns)
    out = []
    for row in results.select(cols).iter_rows():
        out.append([f"{v:.{digits}f}" if isinstance(v, float) else ("–" if v is None else str(v)) for v in row])
    return out
