"""TailFlow's building blocks above the methods: run one method on one dataset, collect results."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from steps.storage import FileRef, save_array
from steps.tables import concat
from steps.uncertainty import REPLICATES_SUFFIX, Replicates, add_holm_columns, aggregate_over_seeds, split_replicates
from steps.tail.candidates import write_tail_candidates
from steps.tail.config import MethodSpec, TailConfig
from steps.tail.data import PreparedData
from steps.tail.evaluate import (
    UserValues,
    baseline_deltas,
    bucket_table,
    evaluate_lists,
    popularity_buckets,
    popularity_penalty,
    reference_metrics,
    tail_items,
    topk_lists,
)

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
    "seed",  # the training seed (config ``seeds``)
]
# then, with ``uncertainty`` on: ``<m>_lo/_hi`` (test/validation users resampled) of the metrics of
# INTERVAL_METRICS; on test rows ``delta_<m>``, ``delta_<m>_lo/_hi``, ``p_<m>`` against EASE of the
# same dataset and seed (:func:`add_baseline_deltas`) and ``p_<m>_holm`` over the whole run.
BASELINE = "ease"
#: The metrics aggregated over training seeds (``results_by_seed``).
SEED_METRICS = ("recall_at_20", "recall_at_50", "ndcg_at_100", "coverage_at_20", "gini", "tail_share", "item_recall_at_20")
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
    per_user: UserValues | None = None  # the test users' metric values and lists (uncertainty on), for the deltas
    seed: int = 0  # the training seed


def cell_label(method: str, seed: int, cfg: TailConfig) -> str:
    """A (method, seed) cell's name in file names and artifact keys: the method alone with one seed."""
    return method if len(cfg.seeds) == 1 else f"{method}@{seed}"


def run_method(prepared: PreparedData, groups: ItemGroups, method: MethodSpec, cfg: TailConfig, out_dir: str | Path,
               log=print, seed: int | None = None) -> MethodOutcome:
    """Fit ``method`` on the training users with training seed ``seed`` (default: the first of
    ``cfg.seeds``; early stopping on validation), then list and score the validation and test users
    (with ``cfg.uncertainty`` on: intervals too, and the test users' values on ``per_user``)."""
    from steps.tail.models import ease_closed_form, resolve_device  # torch: only the tasks that train import it
    from steps.tail.train import fit_item_item

    seed = cfg.seeds[0] if seed is None else int(seed)
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
        fit = fit_item_item(method, train, valid_tr, valid_te, prepared.item_counts, seed, device, ev.batch_users, log=log)
        B, epochs, best_epoch, history, weights = fit.B, fit.epochs, fit.best_epoch, fit.history, fit.item_weights
        selected = fit.selected_epoch
        diagnostics.update(fit.diagnostics or {})
    seconds = time.perf_counter() - t0
    del train
    rows, bucket_frames, test_lists, per_user = [], [], None, None
    for split, (fold_in, heldout) in zip(SPLITS, ((valid_tr, valid_te), (prepared.load("test_tr"), prepared.load("test_te")))):
        lists = topk_lists(B, fold_in, ev.k_max, ev.batch_users, device, penalty, gamma)
        m = evaluate_lists(lists, heldout, prepared.item_counts, prepared.n_train_users, groups.is_tail, groups.bucket, ev,
                           cfg.uncertainty)
        ref = reference_metrics(B, fold_in, heldout, ev, ev.batch_users, device, penalty, gamma)
        rows.append({"dataset": prepared.name, "method": method.name, "split": split, "epochs": epochs,
                     "best_epoch": best_epoch, "selected_epoch": selected, "seconds": seconds, **m.summary, **ref,
                     **diagnostics, "seed": seed})
        bucket_frames.append(bucket_table(prepared.name, method.name, split, m.exposure, m.item_recall, groups.bucket,
                                          prepared.item_counts, groups.n_buckets).with_columns(pl.lit(seed).alias("seed")))
        test_lists, per_user = lists, m.per_user
    out_dir = Path(out_dir)
    stem = f"{prepared.name}_{method.name}" + ("" if len(cfg.seeds) == 1 else f"_seed{seed}")
    lists_ref = save_array(out_dir / f"{stem}_test_top{ev.k_max}.npy", test_lists)
    model_ref = save_array(out_dir / f"{stem}_B.npy", B) if cfg.save_models else None
    candidates = write_tail_candidates(prepared, method.name, B, cfg.candidates_top_m, out_dir / "candidates" / stem,
                                       ev.batch_users, device, penalty, gamma)
    intervals = [c for c in rows[-1] if c.endswith(("_lo", "_hi")) and c not in RESULT_COLUMNS]
    replicates = [c for c in rows[-1] if c.endswith(REPLICATES_SUFFIX)]  # for recalign compare (split off by run_results)
    results = pl.DataFrame(rows).select(*RESULT_COLUMNS, *intervals, *replicates).with_columns(
        pl.col("epochs", "best_epoch", "selected_epoch", "users", "seed").cast(pl.Int64),
        pl.col(*WEIGHT_DIAGNOSTICS, *intervals).cast(pl.Float64))
    if not history.is_empty():
        history = history.select(pl.lit(prepared.name).alias("dataset"), pl.lit(method.name).alias("method"),
                                 pl.lit(seed, dtype=pl.Int64).alias("seed"), pl.all())
    return MethodOutcome(results, pl.concat(bucket_frames), history, lists_ref, model_ref, weights, candidates,
                         per_user, seed)


def add_baseline_deltas(results: pl.DataFrame, per_user: dict[tuple[str, int], UserValues], n_items: int,
                        cfg: TailConfig, baseline: str = BASELINE) -> pl.DataFrame:
    """One dataset's results with ``delta_<m>``, ``delta_<m>_lo/_hi`` and ``p_<m>`` on its test rows:
    each method against ``baseline`` (EASE) of the same training seed, paired on the same test users
    and resamples (:func:`steps.tail.evaluate.baseline_deltas`). ``per_user`` maps (method, seed) to
    the test users' values. The baseline's own rows get delta 0 and no p-value (nothing is tested);
    rows without a baseline of their seed (it failed, or is not in the run) or without per-user
    values (uncertainty off) get no delta columns."""
    spec, ev = cfg.uncertainty, cfg.evaluation
    if not spec.enabled or not per_user:
        return results
    cells, columns = [], []
    for (method, seed), pu in per_user.items():
        base = per_user.get((baseline, seed))
        if pu is None or base is None:
            continue
        names = [*pu.names, *(f"coverage_at_{k}" for k in ev.ks), "gini"]
        columns = [c for m in names for c in (f"delta_{m}", f"delta_{m}_lo", f"delta_{m}_hi", f"p_{m}")]
        if method == baseline:
            d = {c: (None if c.startswith("p_") else 0.0) for c in columns}
        else:
            d = baseline_deltas(pu, base, n_items, ev, spec)
        if d:
            cells.append({"method": method, "seed": seed, "split": "test", **d})
    if not cells:
        return results
    deltas = pl.DataFrame(cells, infer_schema_length=None)
    deltas = deltas.select("method", "seed", "split", *[c for c in columns if c in deltas.columns]).with_columns(
        pl.col("seed").cast(pl.Int64), pl.exclude("method", "seed", "split").cast(pl.Float64))
    return results.join(deltas, on=["method", "seed", "split"], how="left", maintain_order="left")


def run_results(parts, cfg: TailConfig) -> tuple[pl.DataFrame, Replicates | None]:
    """``(results, replicates)``: the whole run's results (every dataset's, with its deltas) in
    config order, with ``p_<m>_holm``: Holm's correction over every p-value of the run (all
    datasets, methods, seeds and metrics together), and their bootstrap replicates
    (:func:`steps.uncertainty.split_replicates`; None with intervals off)."""
    results = sort_results(concat(list(parts)), cfg.dataset_names, cfg.method_names, cfg.seeds)
    return split_replicates(add_holm_columns(results), cfg.uncertainty)


def seed_table(results: pl.DataFrame, cfg: TailConfig) -> pl.DataFrame | None:
    """``results_by_seed``: per dataset, method and split the mean, sd and Student-t interval over the
    training seeds of :data:`SEED_METRICS` (``steps.uncertainty.aggregate_over_seeds``); None with
    one seed."""
    if len(cfg.seeds) < 2 or results.is_empty():
        return None
    level = cfg.uncertainty.level
    return aggregate_over_seeds(results, ["dataset", "method", "split"], list(SEED_METRICS), level)


def sort_results(results: pl.DataFrame, datasets: list[str], methods: list[str],
                 seeds: list[int] | tuple[int, ...] = ()) -> pl.DataFrame:
    """Rows in config order: dataset, method, (training seed,) then validation before test."""
    d_order = {d: i for i, d in enumerate(datasets)}
    m_order = {m: i for i, m in enumerate(methods)}
    s_order = {s: i for i, s in enumerate(SPLITS)}
    keys = [pl.col("dataset").replace_strict(d_order, default=99, return_dtype=pl.Int64),
            pl.col("method").replace_strict(m_order, default=99, return_dtype=pl.Int64)]
    if seeds and "seed" in results.columns:
        keys.append(pl.col("seed").replace_strict({s: i for i, s in enumerate(seeds)}, default=len(seeds),
                                                  return_dtype=pl.Int64))
    if "split" in results.columns:
        keys.append(pl.col("split").replace_strict(s_order, default=9, return_dtype=pl.Int64))
    return results.sort(keys, maintain_order=True)


