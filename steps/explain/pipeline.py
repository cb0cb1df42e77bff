"""ExplainFlow's building blocks above the methods: inputs, stored data and model, the user
sample, joins, the report and the export."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import polars as pl

from steps.tables import concat
from steps.errors import ConfigError, InputError
from steps.explain import plots
from steps.explain.candidates import resolve_ml100k
from steps.explain.config import ExplainConfig
from steps.explain.data import (
    NEG, SPLIT, USER, SeqData, convert_ml1m, read_rechorus, user_histories, where_item_is_named, write_rechorus,
)
from steps.explain.explanation import ATTRIBUTION_SCHEMA, FEATURE_SCHEMA, USER_SCHEMA, Explanation
from steps.explain.synthetic import synthetic_dataset
from steps.seeding import rng_for
from steps.storage import FileRef, file_ref, localize, rebase_refs, staged_dir

if TYPE_CHECKING:
    from steps.explain.model import GRU4Rec
    from steps.uncertainty import Replicates, UncertaintySpec

# torch (steps.explain.model / train / attribute) is imported inside the functions that use a model,
# so the tasks that only join and report (and the card subprocess) do not pay for its import.


# --------------------------------------------------------------------------- inputs
def resolve_dataset(cfg: ExplainConfig, data_dir: str, ml1m_ratings: str, ml1m_movies: str, work_dir: str | os.PathLike,
                    checkpoint: str = "") -> SeqData:
    """A ReChorus folder, MovieLens-1M converted into ``work_dir``, or synthetic data written to
    ``work_dir`` in ReChorus' format; every path reads the files back through the same checks.
    With a ``checkpoint`` the catalogue is also the checkpoint's (:func:`with_checkpoint_catalogue`)."""
    ml100k = resolve_ml100k(cfg.data, data_dir, ml1m_ratings, work_dir, cfg.n_neg, cfg.seed)
    if ml100k is not None:  # data: {source: ml100k} in the config
        return with_checkpoint_catalogue(replace(read_rechorus(ml100k, cfg.item_feature), source="MovieLens-100K"), checkpoint)
    if data_dir and ml1m_ratings:
        raise InputError("--data-dir and --ml1m-ratings are alternatives: give one of them")
    if ml1m_movies and not ml1m_ratings:
        raise InputError("--ml1m-movies needs --ml1m-ratings")
    if data_dir:
        return with_checkpoint_catalogue(read_rechorus(data_dir, cfg.item_feature), checkpoint)
    folder = Path(work_dir) / ("ml1m" if ml1m_ratings else "synthetic")
    if ml1m_ratings:
        convert_ml1m(ml1m_ratings, folder, cfg.n_neg, cfg.seed, ml1m_movies or None)
    else:
        cfg.check_synthetic_room()
        write_rechorus(folder, synthetic_dataset(cfg.synthetic, cfg.n_neg))
    data = read_rechorus(folder, cfg.item_feature)
    data = replace(data, source="synthetic" if not ml1m_ratings else f"MovieLens-1M ({ml1m_ratings})")
    return with_checkpoint_catalogue(data, checkpoint)


def with_checkpoint_catalogue(data: SeqData, checkpoint: str | os.PathLike = "") -> SeqData:
    """The catalogue of ``data`` and of a ReChorus checkpoint: the checkpoint's item count (its
    embedding rows, ids 0..n−1) when it is at least the data's; a checkpoint that cannot score
    an item the data names is an :class:`InputError` naming the item and where it appears."""
    if not checkpoint:
        return data
    from steps.explain.model import load_rechorus_checkpoint

    n = load_rechorus_checkpoint(checkpoint).spec.n_items
    if n < data.n_items:
        item = data.n_items - 1
        raise InputError(
            f"{checkpoint}: the checkpoint has {n} item embeddings (ids 0..{n - 1}), but {data.source} names item id "
            f"{item} in {where_item_is_named(data, item)}: the data and the checkpoint disagree on the catalogue"
        )
    return replace(data, n_items=n)


@dataclass(frozen=True)
class StoredData:
    """Where a run keeps its validated data (parquet) and what it holds."""

    interactions: FileRef
    item_features: FileRef | None
    n_items: int
    feature_name: str | None
    source: str
    feature_columns: tuple[str, ...] = ()
    multi_hot: bool = False

    def load(self) -> SeqData:
        self.interactions.verify()
        feats = None
        if self.item_features is not None:
            self.item_features.verify()
            feats = pl.read_parquet(localize(self.item_features).path)
        return SeqData(pl.read_parquet(localize(self.interactions).path), self.n_items, feats, self.feature_name, self.source,
                       self.feature_columns, self.multi_hot)


def store_dataset(data: SeqData, folder: str | os.PathLike) -> StoredData:
    """The validated data as parquet files in ``folder``, which appear only once all are written."""
    final = Path(folder)
    with staged_dir(final) as folder:
        data.interactions.write_parquet(folder / "interactions.parquet")
        feats = None
        if data.item_features is not None:
            data.item_features.write_parquet(folder / "item_features.parquet")
            feats = file_ref(folder / "item_features.parquet", (data.item_features.height,))
        stored = StoredData(file_ref(folder / "interactions.parquet", (data.interactions.height,)), feats,
                            data.n_items, data.feature_name, data.source, data.feature_columns, data.multi_hot)
    return rebase_refs(stored, folder, final)


def fit_or_load(data: SeqData, cfg: ExplainConfig, checkpoint: str = "") -> tuple[GRU4Rec, pl.DataFrame]:
    """Train GRU4Rec, or load a ReChorus checkpoint (then the training log is empty)."""
    from steps.explain.model import load_rechorus_checkpoint
    from steps.explain.train import train_gru4rec

    if checkpoint:
        model = load_rechorus_checkpoint(checkpoint, data.n_items)
        print(f"loaded {checkpoint}: {model.spec}")
        return model, pl.DataFrame()
    return train_gru4rec(data, cfg)


def with_seed(df: pl.DataFrame, seed: int) -> pl.DataFrame:
    """``df`` with a trailing ``seed`` column (the training seed); an empty table (no training log
    of a loaded checkpoint) stays as it is."""
    return df.with_columns(pl.lit(seed, dtype=pl.Int64).alias("seed")) if df.width else df


def check_seeds_against_checkpoint(cfg: ExplainConfig, checkpoint: str) -> None:
    """A checkpoint is one trained model: several training seeds need training."""
    if checkpoint and cfg.several_seeds:
        raise ConfigError(f"seeds: {list(cfg.seeds)} asks for one GRU4Rec per training seed, but --checkpoint {checkpoint} "
                          "loads one trained model; give one seed (or none) with --checkpoint")


def metrics_by_seed(model_metrics: pl.DataFrame, level: float = 0.95) -> pl.DataFrame:
    """Per (model, split, protocol): every point metric's mean, sd and Student-t interval over the
    training seeds (:func:`steps.uncertainty.aggregate_over_seeds`); POP does not depend on the seed
    (sd 0). The bootstrap intervals, differences and p-values are not aggregated."""
    from steps.uncertainty import aggregate_over_seeds, is_interval_column

    keys = ["model", "split", "protocol"]
    metrics = [c for c, t in model_metrics.schema.items()
               if c not in (*keys, "rows", "seed") and t.is_float() and not is_interval_column(c)]
    return aggregate_over_seeds(model_metrics, keys, metrics, level)


def run_model_metrics(per_seed: pl.DataFrame, spec: "UncertaintySpec", several_seeds: bool
                      ) -> "tuple[pl.DataFrame, pl.DataFrame | None, Replicates | None]":
    """join_seeds: ``(model_metrics with p_<m>_holm, model_metrics_by_seed or None, replicates)``:
    Holm's correction across every p-value of the run's table (splits × protocols × seeds ×
    metrics), and the table's bootstrap replicates drawn under ``spec`` (:func:`steps.uncertainty.split_replicates`)."""
    from steps.uncertainty import add_holm_columns, split_replicates

    table, replicates = split_replicates(add_holm_columns(per_seed), spec)
    return table, (metrics_by_seed(table) if several_seeds else None), replicates


def load_model(ref: FileRef, dtype: str = "float32") -> GRU4Rec:
    """The GRU4Rec saved at ``ref`` (checksum verified) in ``dtype`` (float32 | float64)."""
    import torch

    from steps.explain.model import as_dtype, load_rechorus_checkpoint

    ref.verify()
    return as_dtype(load_rechorus_checkpoint(localize(ref).path), {"float64": torch.float64, "float32": torch.float32}[dtype])


def seed_model_metrics(model_file: FileRef, data: SeqData, cfg: ExplainConfig, seed: int) -> pl.DataFrame:
    """HR@K / nDCG@K / MRR (with intervals) of the saved model of one training seed, as the later
    steps load it, and of the popularity ranker (:func:`steps.explain.train.model_metrics`)."""
    from steps.explain.train import model_metrics

    return with_seed(model_metrics(load_model(model_file), data, cfg), seed)


def check_settings_against_data(data: SeqData, cfg: ExplainConfig) -> None:
    """The settings that depend on the data, checked when the data is read (before training):
    K against the candidates per dev/test row and the catalogue, the users to explain, the
    baseline item."""
    held_out = data.interactions.filter(pl.col(SPLIT) != "train")
    if held_out.height:
        n_neg = int(held_out[NEG].list.len()[0])
        if max(cfg.ks) > 1 + n_neg:
            raise ConfigError(f"ks: K = {max(cfg.ks)} is larger than the {1 + n_neg} candidates per dev/test row "
                              f"(1 positive + {n_neg} negatives in {data.source})")
    catalogue = data.n_items - 1
    if cfg.full_ranking and max(cfg.ks) > catalogue:
        raise ConfigError(f"ks: K = {max(cfg.ks)} is larger than the catalogue of {catalogue} items ({data.source})")
    if cfg.top_k > catalogue:
        raise ConfigError(f"top_k: K = {cfg.top_k} is larger than the catalogue of {catalogue} items ({data.source})")
    if isinstance(cfg.baseline, int) and not 1 <= cfg.baseline <= catalogue:
        raise ConfigError(f"baseline: item {cfg.baseline} is not in the catalogue of {data.source} (item ids 1..{catalogue})")
    if cfg.explain_user_ids:
        user_histories(data, cfg.explain_user_ids, cfg.history_max)  # unknown users, empty histories


def choose_users(data: SeqData, cfg: ExplainConfig) -> list[int]:
    """``explain_user_ids`` when given (each must exist with a history), else a seeded sample of
    ``explain_users`` users among those with a test row, in id order."""
    if cfg.explain_user_ids:
        user_histories(data, cfg.explain_user_ids, cfg.history_max)  # unknown users, empty histories
        return list(cfg.explain_user_ids)
    tested = data.interactions.filter(pl.col(SPLIT) == "test")[USER].unique().sort().to_numpy()
    if len(tested) == 0:
        raise InputError(f"{data.source}: no user has a test row to explain")
    n = min(cfg.explain_users, len(tested))
    picked = rng_for(cfg.seed, "explain_users").choice(tested, size=n, replace=False)
    return sorted(int(u) for u in picked)


def describe_settings(cfg: ExplainConfig, data_summary: dict) -> str:
    """One paragraph for the card: the value scale, the top-K rule and the item feature's columns."""
    scale = ("the mean of the top-K scores" if cfg.value_scale == "mean" else
             "the reference notebook's scale: the mean of the top-K scores divided by 10 again (`value_scale: notebook`)")
    rule = ("items the user consumed (train and dev) are excluded" if cfg.exclude_history_from_top_k else
            "items the user consumed are kept, as in the reference notebook (`exclude_history_from_top_k: false`)")
    cols = data_summary.get("item_feature_columns") or []
    if not cfg.feature_level:
        feature = "not computed (`feature_level: false`)"
    elif not cols:
        feature = "none (no item_meta.csv)"
    elif data_summary.get("item_feature_multi_hot"):
        shown = ", ".join(f"`{c}`" for c in cols)
        feature = f"{len(cols)} 0/1 column(s) as one multi-valued feature ({shown})"
    else:
        feature = f"the categorical column `{cols[0]}`"
    return f"Value v(S): {scale}. Top-K: {rule}. Item feature (feature-level attributions): {feature}."


# --------------------------------------------------------------------------- joins and report
def join_explanations(parts: Sequence[Explanation]) -> Explanation:
    """Concatenate the users' tables in a fixed order (user, estimator order, event position)."""
    est_order = pl.col("estimator").replace_strict({"exact": 0, "kernel": 1, "pruned": 2}, default=9, return_dtype=pl.Int8)
    att = concat([p.attributions for p in parts]) if parts else pl.DataFrame(schema=ATTRIBUTION_SCHEMA)
    users = concat([p.users for p in parts]) if parts else pl.DataFrame(schema=USER_SCHEMA)
    feats = concat([p.features for p in parts]) if parts else pl.DataFrame(schema=FEATURE_SCHEMA)
    return Explanation(
        att.sort([pl.col("user_id"), est_order, pl.col("event_position")], descending=[False, False, True], nulls_last=True),
        users.sort([pl.col("user_id"), est_order]),
        feats.sort(["user_id", "estimator", "feature"]),
    )


def recency_profile(attributions: pl.DataFrame) -> pl.DataFrame:
    """Mean |attribution| (and mean attribution) by event position and estimator over users;
    the pruned group of older events (null position) is left out."""
    return (
        attributions.filter(pl.col("event_position").is_not_null())
        .group_by(["estimator", "event_position"], maintain_order=True)
        .agg(
            pl.col("attribution").abs().mean().alias("mean_abs_attribution"),
            pl.col("attribution").mean().alias("mean_attribution"),
            pl.len().alias("users"),
        )
        .sort(["estimator", "event_position"], descending=[False, True])
    )


def efficiency_check(attributions: pl.DataFrame, users: pl.DataFrame) -> pl.DataFrame:
    """Per (user, estimator): sum of attributions, f_x − f_baseline, and their gap."""
    sums = attributions.group_by(["user_id", "estimator"]).agg(pl.col("attribution").sum().alias("sum_attribution"))
    return users.join(sums, on=["user_id", "estimator"], how="left", maintain_order="left").with_columns(
        (pl.col("f_x") - pl.col("f_baseline")).alias("f_x_minus_f_baseline"),
        (pl.col("sum_attribution") - (pl.col("f_x") - pl.col("f_baseline"))).abs().alias("efficiency_gap"),
    )


def feature_summary(features: pl.DataFrame) -> pl.DataFrame:
    """Mean feature-level attribution (and how many users' histories hold the feature)."""
    return features.group_by("feature").agg(
        pl.col("attribution").mean().alias("mean_attribution"), pl.len().alias("users")
    ).sort("mean_attribution", descending=True)


def headline_metrics(ks: Sequence[int]) -> tuple[tuple[str, str], ...]:
    """The metrics the card compares with intervals: HR@K and nDCG@K at K = 10 (else the smallest K), MRR."""
    k = 10 if 10 in ks else min(ks)
    return (f"hr_at_{k}", f"HR@{k}"), (f"ndcg_at_{k}", f"nDCG@{k}"), ("mrr", "MRR")


def model_quality_table(model_metrics: pl.DataFrame, ks: Sequence[int], alpha: float = 0.05) -> pl.DataFrame:
    """The card's comparison (strings), per (split, protocol, seed): GRU4Rec's and POP's
    :func:`headline_metrics` as ``value [lo, hi]`` and GRU4Rec − POP with its interval and a Holm
    mark (:func:`steps.uncertainty.holm_mark`); empty when the table has no intervals."""
    from steps.uncertainty import holm_mark, interval_cell

    metrics = headline_metrics(ks)
    if f"{metrics[0][0]}_lo" not in model_metrics.columns:
        return pl.DataFrame()
    keys = [c for c in ("split", "protocol", "seed") if c in model_metrics.columns]
    pop = {tuple(r[k] for k in keys): r for r in model_metrics.filter(pl.col("model") == "POP").iter_rows(named=True)}
    rows = []
    for r in model_metrics.filter(pl.col("model") == "GRU4Rec").iter_rows(named=True):
        base = pop.get(tuple(r[k] for k in keys), {})
        out = {k: str(r[k]) for k in keys}
        for m, label in metrics:
            out[f"GRU4Rec {label}"], out[f"POP {label}"] = interval_cell(r, m), interval_cell(base, m)
            out[f"Δ {label}"] = holm_mark(interval_cell(r, f"delta_{m}"), r.get(f"p_{m}_holm"), alpha)
        rows.append(out)
    return pl.DataFrame(rows)


def model_quality_legend(model_metrics: pl.DataFrame, spec, alpha: float = 0.05) -> str:
    """One line under :func:`model_quality_table`: what was resampled, against what, the correction."""
    from steps.uncertainty import HOLM_MARK, n_tests

    method = "BCa" if spec.method == "bca" else spec.method
    return (f"[lo, hi]: {spec.level:.0%} {method} bootstrap interval over {spec.resamples:,} resamples of the evaluated "
            f"instances (the split's test or dev rows; the trained model held fixed). Δ = GRU4Rec − POP on the same "
            f"instances and resamples. {HOLM_MARK} = p < {alpha:g} after Holm's correction across all "
            f"{n_tests(model_metrics):,} p-values of the run's model_metrics (splits × protocols × seeds × metrics); "
            "`model_metrics.csv` has every metric's `_lo`/`_hi`, `delta_*`, `p_*` and `p_*_holm`.")


def build_figures(attributions: pl.DataFrame, users: pl.DataFrame, profile: pl.DataFrame) -> dict:
    return {
        "attributions_by_user.png": plots.attribution_bars(attributions, users),
        "recency_profile.png": plots.recency_profile_plot(profile),
        "pruning_horizon.png": plots.pruning_horizon_hist(users),
    }


def export_tables(tables: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """Each table twice for :func:`steps.export.export_run`: parquet (lists kept) and CSV."""
    return {**{f"{name}.parquet": df for name, df in tables.items()}, **tables}



def check_inputs(data: SeqData, cfg: ExplainConfig, checkpoint: str) -> None:
    """Every check of the start step: settings against the data, the checkpoint (a bad one fails
    here, not in train) and the training seeds against it."""
    from steps.explain.model import check_checkpoint

    check_settings_against_data(data, cfg)
    check_checkpoint(checkpoint, data.n_items)
    check_seeds_against_checkpoint(cfg, checkpoint)


def publish_data(data: SeqData, cfg: ExplainConfig, storage) -> tuple:
    """Store the data and the candidate items as files visible to every task (a
    :class:`steps.storage.RunStorage`): ``(StoredData of FileRefs, FileRef of the items or None)``."""
    from steps.explain.candidates import store_candidate_items
    from steps.storage import map_refs

    stored = map_refs(store_dataset(data, storage.dir("data")), storage.publish)
    items = store_candidate_items(data, storage.dir("data"), storage.dir("input", "ml100k") if cfg.data.source == "ml100k" else None)
    return stored, (storage.publish(items) if items is not None else None)


def report_tables(attributions, explained_users, feature_attributions, model_metrics, training_log, recency,
                  model_metrics_by_seed) -> dict:
    """ExplainFlow's exported tables (:func:`export_tables`; ``model_metrics_by_seed`` only with several seeds)."""
    tables = {"attributions": attributions, "explained_users": explained_users, "feature_attributions": feature_attributions,
              "model_metrics": model_metrics, "training_log": training_log, "recency": recency}
    if model_metrics_by_seed is not None:
        tables["model_metrics_by_seed"] = model_metrics_by_seed
    return export_tables(tables)


def explain_one(model: GRU4Rec, data: SeqData, user: int, cfg: ExplainConfig) -> Explanation:
    """One user's top-K from the unperturbed history, then every estimator's attributions."""
    from steps.explain.attribute import explain_user, feature_codes
    from steps.explain.data import user_consumed_items

    history = user_histories(data, [user], cfg.history_max)[user]
    return explain_user(model, user, history, cfg, feature_codes(data), user_consumed_items(data, user), data.n_items)


def report_parts(attributions: pl.DataFrame, users: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """The report step's ``(recency profile, efficiency check, figures)``."""
    recency = recency_profile(attributions)
    return recency, efficiency_check(attributions, users), build_figures(attributions, users, recency)


def train_seed(data: SeqData, cfg: ExplainConfig, seed: int, checkpoint: str, storage) -> tuple:
    """Fit (or load) GRU4Rec with one training seed and publish its weights (``storage``: the run's
    RunStorage; one folder per seed when there are several): ``(model spec, training log with a
    seed column, FileRef of gru4rec.pt)``."""
    from steps.explain.model import save_checkpoint

    folder = storage.dir("model", f"seed{seed}") if cfg.several_seeds else storage.dir("model")
    model, log = fit_or_load(data, replace(cfg, seed=seed), checkpoint)
    return model.spec, with_seed(log, seed), storage.publish(save_checkpoint(model, folder / "gru4rec.pt"))


def gru4rec_bundle(model: GRU4Rec, data: SeqData, cfg: ExplainConfig, items_ref, out_dir: Path) -> Path | None:
    """GRU4Rec's top-M candidate bundle for the test rows (:func:`steps.explain.candidates.write_gru4rec_candidates`)."""
    from steps.explain.candidates import write_gru4rec_candidates

    return write_gru4rec_candidates(model, data, cfg.history_max, cfg.candidates_top_m, items_ref, out_dir, cfg.eval_batch_size)


def gru4rec_candidates(model_file: FileRef, data: SeqData, cfg: ExplainConfig, items_ref, storage) -> dict:
    """The explained model's candidate bundle for AlignFlow, published: ``{"gru4rec": FileRef of
    manifest.json}`` (:mod:`steps.bundles`), or ``{}`` with ``candidates_top_m: 0``."""
    from steps.bundles import publish_bundle

    manifest = gru4rec_bundle(load_model(model_file), data, cfg, items_ref, storage.dir("candidates", "gru4rec"))
    return {"gru4rec": publish_bundle(manifest, storage.publish)} if manifest else {}