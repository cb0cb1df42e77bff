"""Helpers for the flows' join steps: they read Metaflow join ``inputs`` (task objects) and return
plain values the step stores as artifacts."""

from __future__ import annotations

from steps.align.datasets import LIST_KINDS
from steps.align.pipeline import run_results
from steps.newsrec.report import train_metrics_by_seed, with_model
from steps.tables import concat


def align_dataset_outputs(inputs, several: bool) -> tuple:
    """AlignFlow's join_datasets: ``(inputs, data_summary, target, model_distribution)`` — per
    dataset (dicts keyed by dataset name) with several datasets, else the only dataset's values;
    a dataset's notes include the notes its fan-out added."""
    by = {i.dataset: i for i in inputs}
    summaries = {d: {**i.data_summary, "notes": i.data_summary["notes"] + i.notes} for d, i in by.items()}
    if several:  # inputs: the files each EB-NeRD dataset read (None: candidate lists)
        return ({d: by[d].inputs for d in by}, summaries, {d: by[d].target for d in by},
                {d: by[d].model_distribution for d in by})
    only = inputs[0]
    return only.inputs, summaries[only.dataset], only.target, only.model_distribution


def list_datasets(inputs) -> tuple[list, dict]:
    """The candidate-list datasets of AlignFlow's join: their names, and ``{name: prepared}``."""
    return ([i.dataset for i in inputs if i.kind in LIST_KINDS],
            {i.dataset: i.prepared for i in inputs if i.kind in LIST_KINDS})


def tail_method_parts(inputs, name: str) -> tuple:
    """TailFlow's join_methods over one dataset ``name``: the finished cells' ``(per_user by
    (method, seed), results, buckets, history, files, candidates)``, keyed ``<dataset>/<cell>``."""
    done = [i for i in inputs if hasattr(i, "part_results")]
    return ({i.part_cell: i.part_per_user for i in done}, concat([i.part_results for i in done]),
            concat([i.part_buckets for i in done]), concat([i.part_history for i in done]),
            {f"{name}/{i.input}": i.part_files for i in done},
            {f"{name}/{i.input}": i.part_candidates for i in done if getattr(i, "part_candidates", None) is not None})


def tail_dataset_parts(inputs) -> tuple:
    """TailFlow's join_datasets: ``(history, files, candidates, candidates_notes, data_summary,
    failed_cells)`` over every dataset; candidates: ``{"<dataset>/<method>": FileRef of manifest.json}``."""
    return (concat([i.part_history for i in inputs]), {k: v for i in inputs for k, v in i.part_files.items()},
            {k: v for i in inputs for k, v in i.part_candidates.items()},
            [f"{i.prepared.name} ({i.prepared.source}): no item genres, no candidate bundles"
             for i in inputs if i.prepared.items is None],
            {i.prepared.name: i.data_summary for i in inputs}, [f for i in inputs for f in i.part_failed])


def seed_outputs(inputs, seeds) -> tuple:
    """ExplainFlow's join_seeds: ``(model_metrics, training_log, first seed's task)`` in the config's seed order."""
    by_seed = {i.seed: i for i in inputs}
    ordered = [by_seed[s] for s in seeds]
    return concat([i.model_metrics for i in ordered]), concat([i.training_log for i in ordered]), ordered[0]


def model_files(inputs) -> tuple:
    """NewsRecFlow's join_datasets, per model label: ``(predictions, candidates, submission files,
    model artifacts, targets, model distributions)``."""
    return ({i.model: i.prediction_file for i in inputs},
            {i.model: i.candidates_file for i in inputs if getattr(i, "candidates_file", None) is not None},
            {i.model: i.submission_file for i in inputs}, {i.model: i.model_artifact for i in inputs},
            {i.model: i.target for i in inputs}, {i.model: i.model_distribution for i in inputs})


def model_alignment(inputs, spec) -> tuple:
    """NewsRecFlow's join_datasets: every model's alignment tables with a model column ``(results
    with Holm across the run, their bootstrap replicates under spec, category_mix, user_kl_hist,
    submissions by model, failed cells)``."""
    return (*run_results([with_model(i.dataset_outputs.results, i.model, i.seed) for i in inputs], spec),
            concat([with_model(i.dataset_outputs.category_mix, i.model) for i in inputs]),
            concat([with_model(i.dataset_outputs.user_kl_hist, i.model) for i in inputs]),
            {i.model: i.dataset_outputs.submissions for i in inputs},
            [f"{i.model}/{f}" for i in inputs for f in i.dataset_outputs.failed])


def model_training(inputs, several_seeds: bool) -> tuple:
    """NewsRecFlow's join_datasets: ``(train_metrics, train_metrics_by_seed, training_curves)``; the
    accuracy over training seeds per model and split is None with one seed."""
    train_metrics = concat([i.model_metrics for i in inputs])
    return (train_metrics, train_metrics_by_seed(train_metrics) if several_seeds else None,
            concat([i.curves for i in inputs]))
