"""The alignment flow's building blocks above the methods: inputs, joins, what it exports, summaries."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import polars as pl

from steps.align import plots
from steps.align.config import AlignConfig
from steps.align.data import PreparedDump
from steps.align.report import best_lambdas, comparison_table, comparison_wide
from steps.align.synthetic import SyntheticDumpSpec, write_synthetic_dump
from steps.errors import InputError
from steps.tables import concat
from steps.storage import FileRef, localize, localize_input, map_refs
from steps.validate import require_file

if TYPE_CHECKING:
    from steps.uncertainty import Replicates, UncertaintySpec


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
        local = []
        for p in (predictions, articles):
            try:
                lp = localize_input(p)
            except OSError as exc:
                raise InputError(f"{p}: cannot be read ({exc})") from exc
            try:
                require_file(lp)  # not found, a symlink loop, a folder: said as such
            except InputError as exc:
                raise InputError(f"{p}: {str(exc).split(': ', 1)[1]}") from None
            local.append(str(Path(lp).absolute()))
        return Inputs(local[0], local[1], False)
    paths = write_synthetic_dump(Path(data_dir) / "synthetic", spec)
    return Inputs(paths["predictions"], paths["articles"], True)


@dataclass
class PreparedDataset:
    """One dataset of an AlignFlow run, loaded, validated and with its targets resolved."""

    prepared: object  # a PreparedDump (files published) or a prepared candidate-list dataset
    inputs: Inputs | None  # the files an EB-NeRD dump was read from (None: candidate lists)
    input_files: dict
    data_summary: dict
    targets: list | None  # the dump's resolved targets (None: candidate lists, resolved per task)
    target: dict  # target name -> {category: share}
    model_distribution: dict


def prepare_dataset(spec: Mapping, cfg: AlignConfig, data_dir: Path, publish, candidates_of_run, dump_source) -> PreparedDataset:
    """Load (or synthesise / build) the dataset ``spec`` names into ``data_dir``; ``publish`` makes
    a FileRef visible to every task, ``candidates_of_run`` and ``dump_source`` read finished runs."""
    from steps.align.data import input_refs, prepare_dump
    from steps.align.datasets import LIST_KINDS, list_data_summary, prepare_list_dataset
    from steps.align.lists import resolve_list_target
    from steps.align.targets import resolve_target

    name = spec["name"]
    if spec["kind"] in LIST_KINDS:
        prepared = prepare_list_dataset(spec, data_dir, candidates_of_run)
        cs = prepared.load()
        targets = [resolve_list_target(t, cs, cfg.missing_history) for t in cfg.targets_for(name)]
        return PreparedDataset(prepared, None, {}, list_data_summary(prepared, cs), None,
                               {t.name: dict(zip(t.genres, t.mean.tolist())) for t in targets}, {})
    predictions, articles = dump_source(spec.get("from_run", ""), spec.get("predictions", ""), spec.get("articles", ""))
    inputs = resolve_inputs(predictions, articles, cfg.synthetic, data_dir)
    local = prepare_dump(inputs.predictions, inputs.articles, data_dir / "prepared", cfg.exclude_categories, cfg.missing_category)
    prepared = map_refs(local, publish)
    targets = [resolve_target(t, prepared.candidate_categories) for t in cfg.targets_for(name)]
    return PreparedDataset(prepared, inputs, input_refs(local), {"kind": "ebnerd", **data_summary(local)}, targets,
                           {t.name: t.as_dict() for t in targets}, model_distribution_dict(prepared))


#: The model whose dump ``--predictions-from`` takes when the spec names none (the NAILS paper's model).
DEFAULT_DUMP_MODEL = "nrms_docvec"


def parse_predictions_from(spec: str) -> tuple[str, str | None]:
    """``"NewsRecFlow/<run_id>[/<model>]"`` → (``"NewsRecFlow/<run_id>"``, model or None)."""
    parts = [p for p in spec.strip().split("/")]
    if len(parts) not in (2, 3) or not all(parts):
        raise InputError(f"--predictions-from {spec!r}: expected <Flow>/<run_id> or <Flow>/<run_id>/<model>, e.g. NewsRecFlow/1712345678")
    return "/".join(parts[:2]), (parts[2] if len(parts) == 3 else None)


def dump_label(predictions: Mapping[str, FileRef], model: str | None) -> str | None:
    """The dump ``model`` names among a run's dumps (labelled ``<model>`` or, with several training
    seeds, ``<model>@<seed>``): the label itself, else that model's first seed; without ``model``
    the NAILS paper's model (:data:`DEFAULT_DUMP_MODEL`, first seed) or else the first dump. None: no such dump."""
    wanted = DEFAULT_DUMP_MODEL if model is None else model
    if wanted in predictions:
        return wanted
    seeded = [k for k in predictions if k.split("@", 1)[0] == wanted]
    if seeded:
        return seeded[0]
    return next(iter(predictions)) if model is None else None


def dump_of_run(spec: str, predictions: Mapping[str, FileRef], articles: str, model: str | None) -> tuple[str, str]:
    """The (verified) dump and articles paths of a finished run's ``predictions`` artifact
    (:func:`dump_label` picks the dump)."""
    if not predictions:
        raise InputError(f"--predictions-from {spec!r}: the run has no prediction dumps")
    label = dump_label(predictions, model)
    if label is None:
        raise InputError(f"--predictions-from {spec!r}: no dump for model {model!r}; the run has {', '.join(predictions)}")
    ref = localize(predictions[label])
    ref.verify()
    return ref.path, articles


@dataclass
class MethodOutputs:
    """The evaluate tasks of one target, gathered (tasks that failed under ``@catch`` are listed);
    :func:`recalign.fanout.gather_method_outputs` builds it from a join's inputs."""

    results: pl.DataFrame
    category_mix: pl.DataFrame
    user_kl_hist: pl.DataFrame
    submissions: list
    failed: list[str]


def combine_targets(parts: Sequence[MethodOutputs], target_order: Sequence[str]) -> MethodOutputs:
    """Every target's gathered outputs in one, results in config order."""
    return MethodOutputs(
        results=sort_results(concat([p.results for p in parts]), target_order),
        category_mix=concat([p.category_mix for p in parts]),
        user_kl_hist=concat([p.user_kl_hist for p in parts]),
        submissions=[s for p in parts for s in p.submissions],
        failed=[f for p in parts for f in p.failed],
    )


def publish_outcome(outcome, storage) -> object:
    """A method's outcome with its submission files made visible to every task (see RunStorage)."""
    from dataclasses import replace

    return replace(outcome, submissions=[{**s, "file": storage.publish(s["file"])} for s in outcome.submissions])


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
    """The dump's counts and its ``units_digest`` (impression ids, candidate offsets and labels in
    order, and the number of BA rows: which units a bootstrap resample weights)."""
    from steps.storage import load_array
    from steps.uncertainty import UNITS_DIGEST, units_digest

    digest = units_digest(*(load_array(r) for r in (prepared.impression_ids, prepared.offsets, prepared.clicked)),
                          np.array([prepared.n_ba_rows]))
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
        UNITS_DIGEST: digest,
    }


def model_distribution_dict(prepared: PreparedDump) -> dict[str, float]:
    """p(E) over the categories that carry probability mass."""
    return {c: float(p) for c, p in zip(prepared.categories, prepared.model_distribution) if p > 0}


@dataclass
class Report:
    best_lambda: pl.DataFrame
    comparison: pl.DataFrame
    figures: dict  # file name -> matplotlib Figure


def build_report(results: pl.DataFrame, category_mix: pl.DataFrame, user_kl_hist: pl.DataFrame, cfg: AlignConfig,
                 lists: bool = False) -> Report:
    """Best λ, comparison and figures of one dataset (``lists``: a candidate-list dataset, which
    adds Steck's calibration figure and plots accuracy as precision@N)."""
    best = best_lambdas(results, cfg)
    comparison = comparison_table(results, category_mix, best)
    figures = {
        "kl_vs_lambda.png": plots.kl_vs_lambda(results),
        "category_mix.png": plots.category_mix_bars(comparison),
        "user_kl_density.png": plots.user_kl_density(user_kl_hist, best),
        "accuracy_vs_kl.png": plots.accuracy_vs_kl(results, "precision_at_n" if lists else "ndcg_at_10"),
    }
    if lists:
        figures["calibration_vs_lambda.png"] = plots.calibration_curve(results)
    return Report(best, comparison, figures)


def run_results(parts: Sequence[pl.DataFrame], spec: "UncertaintySpec") -> "tuple[pl.DataFrame, Replicates | None]":
    """``(results, replicates)``: a run's final results table — every dataset's (or model's) rows in
    one, and Holm's correction across all of them (``p_<m>_holm`` next to each ``p_<m>``, every
    p-value of the run one test: :func:`steps.uncertainty.add_holm_columns`) — and its bootstrap
    replicates drawn under ``spec`` (:func:`steps.uncertainty.split_replicates`; None with intervals
    off). AlignFlow and NewsRecFlow build them in their last join, before best λ, comparison, card and export."""
    from steps.uncertainty import add_holm_columns, split_replicates

    return split_replicates(add_holm_columns(concat(parts)), spec)


def with_dataset(df: pl.DataFrame, dataset: str) -> pl.DataFrame:
    """``df`` with a leading ``dataset`` column."""
    return df.with_columns(pl.lit(dataset, dtype=pl.String).alias("dataset")).select(["dataset", *df.columns])


def build_reports(results: pl.DataFrame, category_mix: pl.DataFrame, user_kl_hist: pl.DataFrame, cfg: AlignConfig,
                  list_datasets: Sequence[str], extra_figures: Mapping[str, dict] | None = None) -> Report:
    """:func:`build_report` per dataset, tables joined with a ``dataset`` column; figure names get a
    ``<dataset>__`` prefix when there is more than one dataset."""
    names = results["dataset"].unique(maintain_order=True).to_list() if results.height else []
    parts, figures = [], {}
    for ds in names:
        sel = pl.col("dataset") == ds
        rep = build_report(results.filter(sel).drop("dataset"), category_mix.filter(sel).drop("dataset"),
                           user_kl_hist.filter(sel).drop("dataset"), cfg, lists=ds in list_datasets)
        parts.append(rep)
        prefix = f"{ds}__" if len(names) > 1 else ""
        figures.update({prefix + k: v for k, v in {**rep.figures, **dict((extra_figures or {}).get(ds, {}))}.items()})
    best = concat([with_dataset(r.best_lambda, ds) for r, ds in zip(parts, names)])
    comparison = concat([with_dataset(r.comparison, ds) for r, ds in zip(parts, names)])
    return Report(best, comparison, figures)


def export_parts(tables: Mapping[str, pl.DataFrame], report: Report, submissions: Sequence[dict],
                 prefix: str = "") -> tuple[dict, dict, dict]:
    """What an alignment exports, as ``(tables, figures, files)`` for :func:`steps.export.export_run`:
    the tables, one wide comparison per (dataset and) target, the figures and the submission zips,
    every name under ``prefix`` (e.g. ``"<model>/"``)."""
    out = {prefix + name: df for name, df in tables.items()}
    comp = report.comparison if "dataset" in report.comparison.columns else with_dataset(report.comparison, "")
    several = comp["dataset"].n_unique() > 1
    for (ds, dist), part in comp.group_by(["dataset", "distribution"], maintain_order=True):
        out[prefix + (f"comparison_{ds}__{dist}" if several else f"comparison_{dist}")] = comparison_wide(part.drop("dataset"), dist)
    figures = {prefix + name: fig for name, fig in report.figures.items()}
    files = {f"{prefix}submissions/{Path(s['file'].path).name}": s["file"] for s in submissions}
    return out, figures, files


SUMMARY_COLUMNS = ["dataset", "distribution", "method", "selection", "lambda", "kl_at_n", "kl_all", "user_kl_mean",
                   "c_kl_mean", "coverage_at_n", "auc", "ndcg_at_10", "precision_at_n", "recall_at_n"]


def summary_text(results: pl.DataFrame, comparison: pl.DataFrame) -> str:
    """The results table and, per target, the comparison at the best λ, as printable text."""
    parts = []
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, float_precision=4, tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True):
        shown = [c for c in SUMMARY_COLUMNS if c in results.columns and results[c].null_count() < results.height]
        parts.append(str(results.select(shown)))
        comp = comparison if "dataset" in comparison.columns else with_dataset(comparison, "")
        for (ds, dist), part in comp.group_by(["dataset", "distribution"], maintain_order=True):
            parts.append(f"Category mix at the best λ — {ds + ' / ' if ds else ''}{dist}:")
            parts.append(str(comparison_wide(part.drop("dataset"), dist)))
    return "\n".join(parts)


def dataset_line(summary: dict) -> str:
    if summary.get("kind") == "candidates":
        return (f"{summary['users']:,} users × {summary['candidates_per_user']} candidates, {len(summary['genres'])} genres "
                f"({'one' if summary['single_genre'] else 'several'} per item) — {summary['source']}.")
    return (f"{summary['beyond_accuracy_rows']:,} beyond-accuracy rows × {summary['candidates']} candidates, "
            f"{summary['impressions']:,} impressions ({summary['labelled_impressions']:,} labelled).")


def example_user_figure(prepared, cfg: AlignConfig, results: pl.DataFrame, dataset: str):
    """The first user's genre mix before/after Steck at its best (lowest C_KL) λ toward the first
    target: ``(user_id, mix rows, figure)``."""
    from steps.align.lists import example_user_mix, resolve_list_target

    cs = prepared.load()
    target = resolve_list_target(cfg.targets_for(dataset)[0], cs, cfg.missing_history)
    steck = results.filter((results["dataset"] == dataset) & (results["method"] == "steck")
                           & (results["distribution"] == target.name)).sort("c_kl_mean")
    lam = float(steck["lambda"][0]) if steck.height else 0.9
    user, mix = example_user_mix(cs, target, cfg, lam)
    return user, mix, plots.user_mix_bars(mix, f"{dataset}: user {user}, target {target.name}")


def example_users(prepared_lists: Mapping[str, object], cfg: AlignConfig, results: pl.DataFrame) -> tuple[dict, pl.DataFrame]:
    """:func:`example_user_figure` of each candidate-list dataset: ``({dataset: {file name: figure}},
    the users' mix rows with ``dataset`` and ``user_id`` columns)``."""
    examples, mixes = {}, []
    for ds, prepared in prepared_lists.items():
        user, mix, fig = example_user_figure(prepared, cfg, results, ds)
        examples[ds] = {"user_genre_mix.png": fig}
        mixes.append(with_dataset(mix.with_columns(user_id=user), ds))
    return examples, concat(mixes)
