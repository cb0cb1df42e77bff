"""Evaluate one alignment method toward one target over the λ grid.

For every (selection, λ) cell of a method:

* on the beyond-accuracy (BA) block — every row ranks the shared candidate list — the top-N of
  each row is selected, and ``kl_at_n`` (KL between the target and the aggregate top-N category
  mix), ``kl_all`` (KL of the summed adjusted probabilities; NAILS only), ``user_kl_mean`` /
  ``user_kl_std`` (per-row KL of each top-N list) and ``coverage_at_n`` are computed;
* on the ordinary impressions every in-view list is re-ranked with the same method and the
  per-impression ``auc``, ``mrr``, ``ndcg_at_5`` and ``ndcg_at_10`` of the clicked articles are
  averaged; an EB-NeRD submission file is written.

Both parts stream: BA rows in chunks, impressions in batches, so memory does not grow with the
size of the dump. Stochastic selection is repeated ``repeats`` times (independent seeded
streams); the table reports the mean over repeats and, in ``*_sd`` columns, the standard
deviation across repeats.

With ``uncertainty`` enabled (``steps.uncertainty``) every metric of :data:`INTERVAL_METRICS` also
gets ``<m>_lo`` / ``<m>_hi`` (BA rows, resp. labelled impressions, resampled; stochastic cells:
per-unit means over repeats, aggregates averaged over repeats) and ``delta_<m>``,
``delta_<m>_lo`` / ``_hi``, ``p_<m>`` against λ = 0 of the same selection on the same units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from steps import ragged
from steps.align.config import AlignConfig
from steps.align.data import PreparedDump, iter_ba_chunks, iter_impressions
from steps.align.nails import nails_factors, nails_ratio, nails_reweight
from steps.align.selection import sampling_keys, stochastic_top_n, top_n_indices
from steps.align.steck import queue_relevance, queues_padded, queues_shared, steck_greedy
from steps.align.submission import SubmissionWriter
from steps.align.targets import Target, check_model_mass
from steps.errors import InputError
from steps.metrics import (
    coverage_at_n,
    ragged_ranks,
    ragged_tie_ranks,
    ranking_metrics_from_positions,
    ranking_metrics_from_ranks,
    smoothed_kl,
)
from steps.seeding import rng_for
from steps.uncertainty import (
    CellAggregates,
    CellMeans,
    CoverageBootstrap,
    WeightStream,
    interval_columns,
    lambda_zero_baseline,
    REPLICATES_SUFFIX,
    uncertainty_columns,
)

BA_METRICS = ("kl_at_n", "kl_all", "user_kl_mean", "user_kl_std", "coverage_at_n")
ACCURACY_METRICS = ("auc", "mrr", "ndcg_at_5", "ndcg_at_10")
#: Metrics with bootstrap intervals and paired differences to λ = 0 (steps.uncertainty): columns
#: ``<m>_lo``, ``<m>_hi``, ``delta_<m>``, ``delta_<m>_lo``, ``delta_<m>_hi``, ``p_<m>`` after RESULT_COLUMNS.
INTERVAL_METRICS = ("kl_at_n", "kl_all", "user_kl_mean", "coverage_at_n", *ACCURACY_METRICS)
INTERVAL_COLUMNS = uncertainty_columns(INTERVAL_METRICS)
RESULT_COLUMNS = (
    "distribution",
    "method",
    "selection",
    "lambda",
    *BA_METRICS,
    *ACCURACY_METRICS,
    "n_repeats",
    *(f"{m}_sd" for m in BA_METRICS if m != "user_kl_std"),
    *(f"{m}_sd" for m in ACCURACY_METRICS),
)
RESULT_SCHEMA = {
    "distribution": pl.String,
    "method": pl.String,
    "selection": pl.String,
    "lambda": pl.Float64,
    **{c: pl.Float64 for c in RESULT_COLUMNS[4:] if c != "n_repeats"},
    "n_repeats": pl.Int64,
    **{c: pl.Float64 for c in INTERVAL_COLUMNS},
    # the bootstrap replicates, moved out of the run's results by steps.uncertainty.split_replicates
    **{f"{m}{REPLICATES_SUFFIX}": pl.List(pl.Float32) for m in INTERVAL_METRICS},
}
MIX_SCHEMA = {
    "distribution": pl.String,
    "method": pl.String,
    "selection": pl.String,
    "lambda": pl.Float64,
    "basis": pl.String,  # "top_n": aggregate top-N mix; "all": summed adjusted probabilities
    "category": pl.String,
    "share": pl.Float64,
}
HIST_SCHEMA = {"distribution": pl.String, "method": pl.String, "selection": pl.String, "lambda": pl.Float64,
               "bin_left": pl.Float64, "bin_right": pl.Float64, "count": pl.Int64}
HIST_BINS = 200
#: Steck's greedy pass over padded buckets keeps (rows × categories × depth) arrays; cap the cells.
STECK_MAX_CELLS = 8_000_000


# --------------------------------------------------------------------------- small helpers
class RunningStats:
    """Mean and population variance over streamed chunks (Chan et al.'s parallel update)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: np.ndarray) -> None:
        if len(x) == 0:
            return
        n_b, mean_b = len(x), float(np.mean(x))
        m2_b = float(np.sum((x - mean_b) ** 2))
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.n)) if self.n else float("nan")


class ListStats:
    """What one (cell, repeat) accumulates over its chunks of top-N lists: the candidates listed
    (coverage), the running mean and sd of the user-level KL, and a histogram over ``edges``."""

    def __init__(self, n_candidates: int, edges: np.ndarray) -> None:
        self.edges = edges
        self.covered = np.zeros(n_candidates, dtype=bool)
        self.user_kl = RunningStats()
        self.hist = np.zeros(len(edges) - 1, dtype=np.int64)

    def record(self, top: np.ndarray, user_kl: np.ndarray, hist_of: np.ndarray | None = None) -> None:
        """One chunk's lists (rows × N candidate indices), their users' KL and the values to
        histogram (default: the user KL)."""
        self.covered[top.ravel()] = True
        self.user_kl.update(user_kl)
        self.hist += np.histogram(user_kl if hist_of is None else hist_of, self.edges)[0]


class _SelectionStats(ListStats):
    """Accumulated top-N statistics of one (cell, repeat) over BA chunks: :class:`ListStats` and
    the slot counts of every list (KL@N of the aggregate mix)."""

    def __init__(self, n_slots: int, n_candidates: int, edges: np.ndarray) -> None:
        super().__init__(n_candidates, edges)
        self.n_slots = n_slots
        self.counts = np.zeros(n_slots)

    def add(self, top: np.ndarray, slot: np.ndarray, p_star: np.ndarray, alpha: float) -> None:
        u, n = top.shape
        slots = slot[top]
        per_row = np.bincount((np.arange(u)[:, None] * self.n_slots + slots).ravel(), minlength=u * self.n_slots)
        per_row = per_row.reshape(u, self.n_slots).astype(np.float64)
        kl = smoothed_kl(p_star, per_row / n, alpha)
        self.counts += per_row.sum(axis=0)
        self.record(top, kl)
        return per_row, kl


@dataclass
class _AccuracyStats:
    sums: dict[str, float] = field(default_factory=lambda: {m: 0.0 for m in ACCURACY_METRICS})
    n: int = 0

    def add(self, per_row: dict[str, np.ndarray], rows: np.ndarray) -> None:
        for m in ACCURACY_METRICS:
            self.sums[m] += float(np.sum(per_row[m][rows]))
        self.n += len(rows)

    def means(self) -> dict[str, float | None]:
        return {m: (self.sums[m] / self.n if self.n else None) for m in ACCURACY_METRICS}


def _mean_sd(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return None, None
    return float(np.mean(vals)), (float(np.std(vals)) if len(vals) > 1 else None)


@dataclass(frozen=True)
class TargetLayout:
    """How a target lays over the dump's categories.

    Slots ``0..C-1`` are the target's categories; slot ``C`` ("other") holds every category
    outside the target (excluded or unknown ones in ordinary impressions).
    """

    target: Target
    slot_of_category: np.ndarray  # (G,) global category -> slot
    p_star: np.ndarray  # (C,)
    p_model: np.ndarray  # (C,) model distribution on the target's categories
    ratio: np.ndarray  # (C + 1,) p*/p, and the unknown-category weight for "other"

    @property
    def n_slots(self) -> int:
        return len(self.p_star)

    def p_star_with_other(self, other_weight: float) -> np.ndarray:
        p = np.append(self.p_star, other_weight)
        return p / p.sum()


def target_layout(prepared: PreparedDump, target: Target, unknown_category_weight: float) -> TargetLayout:
    index = {c: i for i, c in enumerate(target.categories)}
    slot = np.array([index.get(c, len(target.categories)) for c in prepared.categories], dtype=np.int64)
    p_model = np.bincount(slot, weights=prepared.model_distribution, minlength=len(target.categories) + 1)[:-1]
    check_model_mass(p_model, target.probs, target.categories)
    ratio = np.append(nails_ratio(target.probs, p_model), unknown_category_weight)
    return TargetLayout(target, slot, np.asarray(target.probs, dtype=np.float64), p_model, ratio)


# --------------------------------------------------------------------------- rankings of ragged lists
def steck_positions(
    offsets: np.ndarray,
    relevance: np.ndarray,
    slot: np.ndarray,
    p_star: np.ndarray,
    lams: tuple[float, ...],
    smoothing: float,
) -> dict[float, np.ndarray]:
    """0-based rank of every element when Steck's greedy re-ranks each whole in-view list, for
    every λ in ``lams`` (the per-category queues are built once per bucket and shared)."""
    out = {lam: np.empty(len(relevance), dtype=np.int64) for lam in lams}
    n_slots = len(p_star)
    for rows, width in ragged.iter_buckets(offsets, max_cells=STECK_MAX_CELLS // max(n_slots, 1)):
        idx, valid = ragged.padded_index(offsets, rows, width)
        rel = ragged.gather_padded(relevance, idx, valid, 0.0)
        cat = ragged.gather_padded(slot, idx, valid, 0)
        queues: dict[bool, tuple] = {}
        b = np.broadcast_to(np.arange(len(rows))[:, None], (len(rows), width))
        step = np.broadcast_to(np.arange(width)[None, :], (len(rows), width))
        for lam in lams:
            full = lam >= 1.0
            if full not in queues:
                queues[full] = queues_padded(queue_relevance(rel, lam), cat, valid, n_slots)
            chosen = steck_greedy(*queues[full], p_star, lam, width, smoothing)
            ok = chosen >= 0
            col_rank = np.zeros_like(chosen)
            col_rank[b[ok], chosen[ok]] = step[ok]
            out[lam][idx[valid]] = col_rank[valid]
    return out


# --------------------------------------------------------------------------- the evaluation
@dataclass
class MethodOutcome:
    results: pl.DataFrame
    category_mix: pl.DataFrame
    user_kl_hist: pl.DataFrame
    submissions: list[dict]


@dataclass
class _Intervals:
    """Bootstrap collectors of one method's cells (``steps.uncertainty``); all None when off.
    BA units are BA rows, accuracy units are labelled impressions; deltas are against λ = 0."""

    kl_at_n: CellAggregates | None = None
    kl_all: CellAggregates | None = None
    user_kl: CellMeans | None = None
    coverage: CoverageBootstrap | None = None
    coverage_keys: list = field(default_factory=list)
    accuracy: CellMeans | None = None
    baseline: dict = field(default_factory=dict)

    def coverage_columns(self, cell) -> dict:
        mine = [i for i, k in enumerate(self.coverage_keys) if k[0] == cell]
        iv = self.coverage.interval(mine)
        base = self.baseline.get(cell)
        d = None
        if base == cell:
            return interval_columns("coverage_at_n", iv, 0, is_baseline=True)
        if base is not None:
            d = self.coverage.paired(mine, [i for i, k in enumerate(self.coverage_keys) if k[0] == base])
        return interval_columns("coverage_at_n", iv, 0, d, 0)

    def columns(self, cell) -> dict:
        out: dict = {}
        for part in (self.kl_at_n, self.kl_all, self.user_kl, self.accuracy):
            if part is not None:
                out.update(part.columns(cell))
        if self.coverage is not None:
            out.update(self.coverage_columns(cell))
        return out


def _ba_intervals(layout: TargetLayout, method: str, cfg: AlignConfig, cells, n_rep, n_ba: int, k: int) -> _Intervals:
    spec, base = cfg.uncertainty, lambda_zero_baseline(cells)
    keys = [(c, r) for c in cells for r in range(n_rep[c])]

    def kl_mix(t, w):
        with np.errstate(invalid="ignore", divide="ignore"):
            return smoothed_kl(layout.p_star, t / t.sum(axis=1, keepdims=True), cfg.alpha)

    def kl_mass(t, w):
        with np.errstate(invalid="ignore", divide="ignore"):
            return smoothed_kl(layout.p_star, t / w[:, None], cfg.alpha)

    iv = _Intervals(baseline=base, coverage_keys=keys)
    w = WeightStream(spec, n_ba)  # one set of weights for every collector of the BA rows
    iv.kl_at_n = CellAggregates(keys, layout.n_slots, n_ba, spec, kl_mix, "kl_at_n", base, w)
    iv.user_kl = CellMeans(cells, ("user_kl_mean",), n_ba, spec, base, w)
    iv.coverage = CoverageBootstrap(n_ba, len(keys), k, spec, w)
    if method == "nails":
        lam_cells = [(cfg.selections[0], lam) for lam in cfg.lambdas]
        iv.kl_all = _KlAll(lam_cells, layout.n_slots, n_ba, spec, kl_mass, base, w)
    return iv


class _KlAll(CellAggregates):
    """kl_all depends on λ only (the summed re-weighted probabilities): every selection's row
    reads the λ's one value."""

    def __init__(self, lam_cells, width, n_units, spec, fn, baseline, stream=None):
        super().__init__([(c, 0) for c in lam_cells], width, n_units, spec, fn, "kl_all",
                         {c: baseline.get(c) for c in lam_cells}, stream)
        self.sel = lam_cells[0][0]

    def columns(self, cell) -> dict:
        return super().columns((self.sel, cell[1]))


def _check_ba(prepared: PreparedDump, layout: TargetLayout, cfg: AlignConfig) -> np.ndarray:
    """The BA candidates' target slots, after checking the list is long enough and covered."""
    k = len(prepared.ba_category_index)
    if cfg.top_n > k:
        raise InputError(
            f"top_n = {cfg.top_n} is larger than the beyond-accuracy candidate list ({k} articles after "
            f"excluding {', '.join(prepared.excluded_categories)})"
        )
    cand_slot = layout.slot_of_category[prepared.ba_category_index]
    if (cand_slot >= layout.n_slots).any():
        raise InputError(f"target {layout.target.name!r} does not cover every candidate category")
    return cand_slot


def _ba_top_lists(method, probs, cand_slot, layout, cfg, cells, n_rep, chunk, mass):
    """{(sel, λ, repeat): top-N candidate indices} of one BA chunk, and NAILS' per-row slot mass per λ."""
    target, ratio = layout.target, layout.ratio[: layout.n_slots]
    tops, row_mass = {}, {}
    if method == "nails":
        onehot = np.eye(layout.n_slots)[cand_slot]
        for lam in cfg.lambdas:
            adj = nails_reweight(probs, cand_slot, nails_factors(ratio, lam))
            row_mass[lam] = adj @ onehot
            mass[lam] += row_mass[lam].sum(axis=0)
            for sel in cfg.selections:
                for r in range(n_rep[(sel, lam)]):
                    if sel == "det":
                        tops[(sel, lam, r)] = top_n_indices(adj, cfg.top_n)
                    else:
                        rng = rng_for(cfg.seed, target.name, method, sel, lam, r, "ba", chunk)
                        tops[(sel, lam, r)] = stochastic_top_n(adj, cfg.top_n, rng)
        return tops, row_mass
    base = probs
    if method == "nails_steck":
        base = nails_reweight(probs, cand_slot, nails_factors(ratio, cfg.nails_lambda_for(target.name)))
    queues: dict[bool, tuple] = {}
    for lam in cfg.lambdas:
        full = lam >= 1.0
        if full not in queues:
            queues[full] = queues_shared(queue_relevance(base, lam), cand_slot, layout.n_slots, cfg.top_n)
        tops[("det", lam, 0)] = steck_greedy(*queues[full], layout.p_star, lam, cfg.top_n, cfg.steck_smoothing_select)
    return tops, row_mass


def _evaluate_ba(prepared, layout, method, cfg, cells, n_rep, edges):
    """BA block: per-(cell, repeat) top-N statistics, NAILS' summed mass per λ, the intervals' collectors."""
    cand_slot = _check_ba(prepared, layout, cfg)
    k = len(prepared.ba_category_index)
    ba_stats = {c: [_SelectionStats(layout.n_slots, k, edges) for _ in range(n_rep[c])] for c in cells}
    mass = {lam: np.zeros(layout.n_slots) for lam in cfg.lambdas}
    iv = _ba_intervals(layout, method, cfg, cells, n_rep, prepared.n_ba_rows, k) if cfg.uncertainty.enabled else None
    for chunk, probs in iter_ba_chunks(prepared, cfg.ba_chunk_rows):
        tops, row_mass = _ba_top_lists(method, probs, cand_slot, layout, cfg, cells, n_rep, chunk, mass)
        counts, user_kl = {}, {}
        for (sel, lam, r), top in tops.items():
            counts[((sel, lam), r)], kl = ba_stats[(sel, lam)][r].add(top, cand_slot, layout.p_star, cfg.alpha)
            user_kl[(sel, lam)] = user_kl.get((sel, lam), 0.0) + kl / n_rep[(sel, lam)]
        if iv is not None:
            idx = chunk * cfg.ba_chunk_rows + np.arange(len(probs))
            iv.kl_at_n.add(idx, counts)
            iv.user_kl.add(idx, user_kl)
            dtype = np.int16 if k < 32_000 else np.int32
            for i, key in enumerate(iv.coverage_keys):
                iv.coverage.add(i, idx, tops[(*key[0], key[1])].astype(dtype))
            if iv.kl_all is not None:
                iv.kl_all.add(idx, {((cfg.selections[0], lam), 0): m for lam, m in row_mass.items()})
    return ba_stats, mass, iv


def _evaluate_impressions(prepared, layout, method, cfg, cells, n_rep, out_dir):
    """Ordinary impressions: accuracy statistics per (cell, repeat), submissions, accuracy intervals."""
    target = layout.target
    acc_stats = {c: [_AccuracyStats() for _ in range(n_rep[c])] for c in cells}
    iv = (CellMeans(cells, ACCURACY_METRICS, prepared.n_impressions, cfg.uncertainty, lambda_zero_baseline(cells))
          if cfg.uncertainty.enabled and prepared.n_impressions else None)
    writers: dict[tuple, SubmissionWriter] = {}
    if prepared.n_impressions and cfg.submissions:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for sel, lam in cells:
            writers[(sel, lam)] = SubmissionWriter(Path(out_dir) / submission_name(target.name, method, sel, lam))
    p_star_other = layout.p_star_with_other(cfg.unknown_category_weight)
    start = 0
    try:
        for batch_i, batch in enumerate(iter_impressions(prepared, cfg.batch_impressions)):
            per_cell = _impression_batch(batch, batch_i, layout, method, cfg, cells, n_rep, p_star_other, acc_stats, writers)
            if iv is not None and len(batch.labelled_rows):
                iv.add(start + batch.labelled_rows, per_cell)
            start += len(batch.offsets) - 1
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    submissions = [
        {"distribution": target.name, "method": method, "selection": sel, "lambda": lam, "file": w.close()}
        for (sel, lam), w in writers.items()
    ]
    return acc_stats, submissions, iv


def _impression_batch(batch, batch_i, layout, method, cfg, cells, n_rep, p_star_other, acc_stats, writers) -> dict:
    """Re-rank one batch for every cell; returns {cell: (labelled rows, metrics) mean over repeats}."""
    target, off = layout.target, batch.offsets
    probs = ragged.segment_softmax(off, batch.logits)
    slot = layout.slot_of_category[batch.category_index]
    labelled = batch.labelled_rows
    base = probs
    if method == "nails_steck":
        base = probs * nails_factors(layout.ratio, cfg.nails_lambda_for(target.name))[slot]
    steck = None
    if method != "nails":
        steck = steck_positions(off, base, slot, p_star_other, cfg.lambdas, cfg.steck_smoothing_rerank)
    per_cell = {}
    for sel, lam in cells:
        per_cell[(sel, lam)] = np.zeros((len(labelled), len(ACCURACY_METRICS)))
        for r, stats in enumerate(acc_stats[(sel, lam)]):
            ranks = None  # stochastic and Steck rankings have no ties
            if method == "nails":
                adj = probs * nails_factors(layout.ratio, lam)[slot]
                if sel == "det":
                    ranks = ragged_tie_ranks(off, adj)
                    positions = ranks.ordered(cfg.ties)
                else:
                    rng = rng_for(cfg.seed, target.name, method, sel, lam, r, "impressions", batch_i)
                    positions, _ = ragged_ranks(off, sampling_keys(adj, rng))
            else:
                positions = steck[lam]
            if len(labelled):
                per_row = (ranking_metrics_from_positions(off, positions, batch.clicked) if ranks is None
                           else ranking_metrics_from_ranks(off, ranks, batch.clicked, ties=cfg.ties))
                stats.add(per_row, labelled)
                per_cell[(sel, lam)] += np.column_stack([per_row[m][labelled] for m in ACCURACY_METRICS]) / n_rep[(sel, lam)]
            if r == 0 and (sel, lam) in writers:
                writers[(sel, lam)].write(batch.impression_ids, off, positions + 1)
    return per_cell


def _ba_row(row, reps, layout, cfg, sel, lam, method, mass, n_ba, mixes, hists, edges) -> None:
    """The BA metrics of one cell into ``row``; its mixes and KL histogram rows appended."""
    target = layout.target
    kl_n = [smoothed_kl(layout.p_star, s.counts / s.counts.sum(), cfg.alpha) for s in reps]
    cov = [coverage_at_n(np.flatnonzero(s.covered), len(s.covered)) for s in reps]
    ukl = [s.user_kl.mean for s in reps]
    for name, vals in (("kl_at_n", kl_n), ("coverage_at_n", cov), ("user_kl_mean", ukl)):
        row[name], row[f"{name}_sd"] = _mean_sd(vals)
    row["user_kl_std"] = _mean_sd([s.user_kl.std for s in reps])[0]
    mixes += _mix_rows(target, method, sel, lam, "top_n", np.mean([s.counts / s.counts.sum() for s in reps], axis=0))
    hist = np.sum([s.hist for s in reps], axis=0)
    hists += [{"distribution": target.name, "method": method, "selection": sel, "lambda": lam,
               "bin_left": float(edges[i]), "bin_right": float(edges[i + 1]), "count": int(hist[i])}
              for i in np.flatnonzero(hist)]
    if method == "nails":
        all_mix = mass[lam] / n_ba
        row["kl_all"] = smoothed_kl(layout.p_star, all_mix, cfg.alpha)
        if sel == cfg.selections[0]:
            mixes += _mix_rows(target, method, "all", lam, "all", all_mix)


def evaluate_method(
    prepared: PreparedDump,
    layout: TargetLayout,
    method: str,
    cfg: AlignConfig,
    out_dir: str | Path,
) -> MethodOutcome:
    """Run ``method`` toward ``layout.target`` over ``cfg``'s λ grid; see the module docstring."""
    if method not in ("nails", "steck", "nails_steck"):
        raise ValueError(f"unknown method {method!r}")
    target = layout.target
    cells = cfg.cells(method)
    n_rep = {cell: (cfg.repeats if cell[0] == "stoch" else 1) for cell in cells}
    edges = np.linspace(0.0, np.log(1.0 / cfg.alpha) * (1 + 1e-9), HIST_BINS + 1)
    ba_stats, mass, ba_iv = _evaluate_ba(prepared, layout, method, cfg, cells, n_rep, edges) if prepared.has_ba else ({}, {}, None)
    acc_stats, submissions, acc_iv = _evaluate_impressions(prepared, layout, method, cfg, cells, n_rep, Path(out_dir))
    rows, mixes, hists = [], [], []
    for sel, lam in cells:
        row: dict = {"distribution": target.name, "method": method, "selection": sel, "lambda": lam, "n_repeats": n_rep[(sel, lam)]}
        if prepared.has_ba:
            _ba_row(row, ba_stats[(sel, lam)], layout, cfg, sel, lam, method, mass, prepared.n_ba_rows, mixes, hists, edges)
        for name in ACCURACY_METRICS:
            row[name], row[f"{name}_sd"] = _mean_sd([s.means()[name] for s in acc_stats[(sel, lam)]])
        for iv in (ba_iv, acc_iv):
            if iv is not None:
                row.update(iv.columns((sel, lam)))
        rows.append(row)
    return MethodOutcome(
        results=pl.DataFrame([{c: row.get(c) for c in RESULT_SCHEMA} for row in rows], schema=RESULT_SCHEMA),
        category_mix=pl.DataFrame(mixes, schema=MIX_SCHEMA),
        user_kl_hist=pl.DataFrame(hists, schema=HIST_SCHEMA),
        submissions=submissions,
    )


def _mix_rows(target: Target, method: str, sel: str, lam: float, basis: str, mix: np.ndarray) -> list[dict]:
    return [
        {"distribution": target.name, "method": method, "selection": sel, "lambda": lam, "basis": basis,
         "category": c, "share": float(s)}
        for c, s in zip(target.categories, mix)
    ]


def submission_name(distribution: str, method: str, selection: str, lam: float) -> str:
    return f"{distribution}_{method}_{selection}_lambda{lam:g}.zip"


def target_mix(layout: TargetLayout) -> pl.DataFrame:
    """The target and the model's own distribution p(E), as category-mix rows."""
    t = layout.target
    rows = _mix_rows(t, "target", "-", float("nan"), "target", layout.p_star) + _mix_rows(
        t, "model", "-", float("nan"), "all", layout.p_model / layout.p_model.sum()
    )
    return pl.DataFrame(rows, schema=MIX_SCHEMA)
