"""NewsRecFlow's step bodies as plain functions: train one model, dump its test scores, hand the dump
to AlignFlow's loader and targets. TensorFlow (steps.newsrec.train / inference) is imported inside
the functions that need it, so importing this module stays cheap."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from steps.align.data import prepare_dump
from steps.align.pipeline import model_distribution_dict
from steps.align.targets import resolve_target
from steps.bundles import publish_bundle
from steps.newsrec.report import train_metrics_rows
from steps.storage import localize, localize_input, map_refs


def train_model(data, model_name: str, cfg, seed: int, storage) -> tuple:
    """Fit one model with one training seed (Wu et al. samples, early stopping on validation AUC)
    and save the best weights where every task sees them (``storage``: a RunStorage):
    ``(curves with a seed column, best validation metrics, published model artifact)``."""
    from steps.newsrec.train import build_for, configure_determinism, fit, save_best

    hp = cfg.models[model_name]
    configure_determinism(seed)
    rec = build_for(data, model_name, hp, cfg.training, seed)
    outcome = fit(rec, data, cfg.training, seed, cfg.data.train_fraction, ties=cfg.ties)
    curves = outcome.curves.with_columns(pl.lit(seed, dtype=pl.Int64).alias("seed"))
    models_dir = storage.dir("models", f"seed{seed}") if cfg.several_seeds else storage.dir("models")
    artifact = save_best(rec, models_dir, outcome.best_epoch, hp, cfg.training, seed)
    return curves, outcome.best_validation, map_refs(artifact, storage.publish)


def dump_model(data, artifact, model_name: str, label: str, seed: int, validation, cfg, storage) -> tuple:
    """Score the test split with the best weights (logits), evaluate where labels exist, write the
    dump, the submission and the candidate bundle, published (``storage``: a RunStorage):
    ``(dump, submission, candidate bundle or None, model metrics per split)``."""
    from steps.newsrec.candidates import news_candidates
    from steps.newsrec.ebnerd import load_split
    from steps.newsrec.inference import evaluate_scores, score_split, write_dump
    from steps.newsrec.train import feature_table, load_best

    out = storage.dir("predictions")
    rec = load_best(data, artifact, cfg.training)
    test = load_split(data.splits["test"])
    scores = score_split(rec, feature_table(data, model_name), data.histories("test").matrix, test,
                         cfg.training.eval_batch_users, cfg.training.score_chunk)
    dump, submission = write_dump(test, scores, out / f"{label}_test_scores.parquet", out / f"{label}_predictions.zip",
                                  cfg.data.batch_rows, cfg.ties)
    dump, submission = storage.publish(dump), storage.publish(submission)
    bundle = news_candidates(data, test, scores, label, out / f"{label}_candidates", cfg.align.missing_category)
    bundle = publish_bundle(bundle, storage.publish) if bundle else None
    per_split = {"validation": validation, "test": evaluate_scores(test, scores, cfg.ties)}
    return dump, submission, bundle, train_metrics_rows(model_name, artifact.best_epoch, per_split, seed)


def prepare_model_dump(prediction_file, articles_path, folder: Path, acfg, storage):
    """A model's dump through AlignFlow's loader (the same code, not a copy): a PreparedDump, published."""
    prepared = prepare_dump(localize(prediction_file).path, localize_input(articles_path), folder, acfg.exclude_categories,
                            acfg.missing_category)
    return map_refs(prepared, storage.publish)


def dump_targets(prepared, acfg) -> tuple:
    """The alignment targets of a prepared dump: ``(targets, {name: target dict}, model distribution, names)``."""
    targets = [resolve_target(spec, prepared.candidate_categories) for spec in acfg.targets]
    return targets, {t.name: t.as_dict() for t in targets}, model_distribution_dict(prepared), [t.name for t in targets]


def export_metadata(model_artifacts: dict, predictions: dict) -> dict:
    """The run summary's ``models`` (version per model) and ``predictions`` (path, checksum, rows per dump)."""
    return {"models": {m: a.version for m, a in model_artifacts.items()},
            "predictions": {m: {"path": r.path, "sha256": r.sha256, "rows": r.shape[0]} for m, r in predictions.items()}}
