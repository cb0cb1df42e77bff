"""TailFlow's building blocks above the methods: run one method on one dataset, collect results."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from steps.storage import FileRef, save_array
from steps.tail.candidates import write_tail_candidates
from steps.tail.config import MethodSpec, TailConfig
from steps.tail.data import PreparedData
from steps.tail.evaluate import (
    bucket_table,
    evaluate_lists,
    popularity_buckets,
    popularity_penalty,
    reference_metrics,
    tail_items,
    topk_lists,
)
from steps.tail.models import ease_closed_form, resolve_device
from steps.tail.train import fit_item_item

#: The results table's columns: the headline metrics first, then the other metrics.
RESULT_COLUMNS = [
    "dataset", "method", "split", "recall_at_20", "recall_at_50", "ndcg_at_100", "coverage_at_20", "gini", "tail_share",
    "epochs", "seconds",
    "recall_at_100", "ndcg_at_20", "ndcg_at_50", "coverage_at_50", "coverage_at_100", "entropy", "epc",
    "item_recall_at_20", "item_recall_at_50", "item_recall_at_100", "item_recall_spread_at_20", "best_epoch", "users",
    # the epoch evaluated (best_epoch, or the last with select_epoch: last), the reference
    # code's own metric definitions (evaluate.reference_metrics) and the item-weight diagnostics
    "selected_epoch", "hit_rate_at_20", "hit_rate_at_50", "hit_rate_at_100",
    "coverage_per_100_users_at_20", "coverage_per_100_users_at_50", "coverage_per_100_users_at_100",
    "item_recall_unmasked_at_20", "item_recall_unmasked_at_50", "item_recall_unmasked_at_100",
    "item_dcg_unmasked_at_100", "item_recall_dist_unmasked_at_100", "item_ndcg_over_users",
    "weight_first_step", "weight_drift_after_first_step", "weight_popularity_spearman",
]
WEIGHT_DIAGNOSTICS = ("weight_first_step", "weight_drift_after_first_step", "weight_popularity_spearman")
SPLITS = ("validation", "test")


@dataclass(frozen=True)
class ItemGroups:
    """Per-item popularity groups of one dataset (from the training users' counts)."""

    is_tail: np.ndarray
    bucket: np.ndarray
    n_buckets: int

    def summary(self, counts: np.ndarray) -> dict:
        return {"tail_items": int(self.is_tail.sum()),
                "tail_interaction_share": float(counts[self.is_tail].sum() / max(counts.sum(), 1)),
                "items_per_bucket": np.bincount(self.bucket, minlength=self.n_buckets).tolist()}


def item_groups(prepared: PreparedData, cfg: TailConfig) -> ItemGroups:
    ev = cfg.evaluation
    return ItemGroups(tail_items(prepared.item_counts, ev.tail), popularity_buckets(prepared.item_counts, ev.buckets), ev.buckets)


@dataclass
class MethodOutcome:
    results: pl.DataFrame  # one row per split, RESULT_COLUMNS
    buckets: pl.DataFrame  # per split × popularity bucket
    history: pl.DataFrame  # per epoch (trained methods), else empty
    lists: FileRef  # test users' top-k lists (users × k_max, int32, −1 = empty slot)
    model: FileRef | None  # B as float32 .npy when save_models
    item_weights: np.ndarray | None
    candidates: Path | None = None  # manifest.json of the test users' candidate bundle (steps.tail.candidates)


def run_method(prepared: PreparedData, groups: ItemGroups, method: MethodSpec, cfg: TailConfig, out_dir: str | Path,
               log=print) -> MethodOutcome:
    """Fit ``method`` on the training users (early stopping on validation), then list and score the
    validation and test users."""
    device = resolve_device(cfg.device)
    ev = cfg.evaluation
    t0 = time.perf_counter()
    train = prepared.load("train")
    valid_tr, valid_te = prepared.load("valid_tr"), prepared.load("valid_te")
    penalty, gamma, epochs, best_epoch, selected, history, weights = None, 0.0, 0, 0, 0, pl.DataFrame(), None
    diagnostics = dict.fromkeys(WEIGHT_DIAGNOSTICS)
    if method.name in ("ease", "pop_rerank"):
        B = ease_closed_form(train, method.l2, device).astype(np.float32)
        if method.name == "pop_rerank":
            penalty, gamma = popularity_penalty(prepared.item_counts), method.gamma
    else:
        fit = fit_item_item(method, train, valid_tr, valid_te, prepared.item_counts, cfg.seed, device, ev.batch_users, log=log)
        B, epochs, best_epoch, history, weights = fit.B, fit.epochs, fit.best_epoch, fit.history, fit.item_weights
        selected = fit.selected_epoch
        diagnostics.update(fit.diagnostics or {})
    seconds = time.perf_counter() - t0
    del train
    rows, bucket_frames, test_lists = [], [], None
    for split, (fold_in, heldout) in zip(SPLITS, ((valid_tr, valid_te), (prepared.load("test_tr"), prepared.load("test_te")))):
        lists = topk_lists(B, fold_in, ev.k_max, ev.batch_users, device, penalty, gamma)
        m = evaluate_lists(lists, heldout, prepared.item_counts, prepared.n_train_users, groups.is_tail, groups.bucket, ev)
        ref = reference_metrics(B, fold_in, heldout, ev, ev.batch_users, device, penalty, gamma)
        rows.append({"dataset": prepared.name, "method": method.name, "split": split, "epochs": epochs,
                     "best_epoch": best_epoch, "selected_epoch": selected, "seconds": seconds, **m.summary, **ref,
                     **diagnostics})
        bucket_frames.append(bucket_table(prepared.name, method.name, split, m.exposure, m.item_recall, groups.bucket,
                                          prepared.item_counts, groups.n_buckets))
        test_lists = lists
    out_dir = Path(out_dir)
    lists_ref = save_array(out_dir / f"{prepared.name}_{method.name}_test_top{ev.k_max}.npy", test_lists)
    model_ref = save_array(out_dir / f"{prepared.name}_{method.name}_B.npy", B) if cfg.save_models else None
    candidates = write_tail_candidates(prepared, method.name, B, cfg.candidates_top_m,
                                       out_dir / "candidates" / f"{prepared.name}_{method.name}", ev.batch_users, device,
                                       penalty, gamma)
    results = pl.DataFrame(rows).select(RESULT_COLUMNS).with_columns(
        pl.col("epochs", "best_epoch", "selected_epoch", "users").cast(pl.Int64), pl.col(*WEIGHT_DIAGNOSTICS).cast(pl.Float64))
    if not history.is_empty():
        history = history.select(pl.lit(prepared.name).alias("dataset"), pl.lit(method.name).alias("method"), pl.all())
    return MethodOutcome(results, pl.concat(bucket_frames), history, lists_ref, model_ref, weights, candidates)


def sort_results(results: pl.DataFrame, datasets: list[str], methods: list[str]) -> pl.DataFrame:
    """Rows in config order: dataset, method, then validation before test."""
    d_order = {d: i for i, d in enumerate(datasets)}
    m_order = {m: i for i, m in enumerate(methods)}
    s_order = {s: i for i, s in enumerate(SPLITS)}
    keys = [pl.col("dataset").replace_strict(d_order, default=99, return_dtype=pl.Int64),
            pl.col("method").replace_strict(m_order, default=99, return_dtype=pl.Int64)]
    if "split" in results.columns:
        keys.append(pl.col("split").replace_strict(s_order, default=9, return_dtype=pl.Int64))
    return results.sort(keys, maintain_order=True)


