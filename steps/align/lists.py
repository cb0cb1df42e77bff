"""Aligning any recommender's candidate lists (:mod:`steps.candidates`) toward global or per-user
targets with NAILS, Steck and both, over the λ grid (the maths: :mod:`steps.align.calibration`).

For every (selection, λ) cell of a method, each user's M candidates are re-ranked and the top-N
kept; the table reports, next to AlignFlow's news metrics of the same names,

* ``c_kl_mean`` / ``c_kl_std`` — Steck's miscalibration C_KL(p_u, q_u) of each user's top-N
  (smoothing ``calibration_alpha``, Steck's 0.01), mean and standard deviation over users;
* ``user_kl_mean`` / ``user_kl_std`` — the same KL with AlignFlow's metric smoothing ``alpha``;
* ``kl_at_n`` — KL between the mean target and the aggregate top-N genre mix; ``kl_all`` (NAILS)
  the same for the summed re-weighted probabilities; ``coverage_at_n`` — distinct items in the
  top-N lists / distinct candidate items;
* ``precision_at_n``, ``recall_at_n`` (Liang et al.'s normalisation: hits / min(N, #held-out)) and
  ``ndcg_at_n`` against the held-out items, for users that have any.

Users are processed in chunks, so memory stays bounded at any number of users. With
``uncertainty`` enabled, intervals and paired differences to λ = 0 (users resampled) as in
:mod:`steps.align.evaluate`; KL@N's resamples average the target over the same resampled users.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import polars as pl

from steps import metrics
from steps.align.calibration import (
    ItemGenres,
    candidate_mass,
    dense_genres,
    history_targets,
    list_mix,
    mixed_targets,
    nails_reweight_lists,
    nails_user_ratio,
    MultiGenreSteck,
)
from steps.align.evaluate import HIST_BINS, HIST_SCHEMA, MIX_SCHEMA, RESULT_COLUMNS, RESULT_SCHEMA, ListStats, RunningStats, _mean_sd
from steps.align.selection import top_n_indices
from steps.align.steck import queue_relevance, queues_padded, steck_greedy
from steps.candidates import CandidateSet
from steps.errors import ConfigError, InputError
from steps.seeding import rng_for
from steps.uncertainty import (REPLICATES_SUFFIX, CellAggregates, CellMeans, CoverageBootstrap, WeightStream, interval_columns,
                               lambda_zero_baseline, uncertainty_columns)

LIST_METRICS = ("c_kl_mean", "c_kl_std", "precision_at_n", "recall_at_n", "ndcg_at_n")
LIST_RESULT_COLUMNS = (*RESULT_COLUMNS, *LIST_METRICS, *(f"{m}_sd" for m in LIST_METRICS if m != "c_kl_std"))
#: Intervals and deltas to λ = 0 of the list metrics (AlignFlow's own: steps.align.evaluate.INTERVAL_COLUMNS).
LIST_INTERVAL_METRICS = ("c_kl_mean", "precision_at_n", "recall_at_n", "ndcg_at_n")
LIST_INTERVAL_COLUMNS = uncertainty_columns(LIST_INTERVAL_METRICS)
LIST_RESULT_SCHEMA = {**RESULT_SCHEMA, **{c: pl.Float64 for c in (*LIST_RESULT_COLUMNS, *LIST_INTERVAL_COLUMNS) if c not in RESULT_SCHEMA},
                      **{f"{m}{REPLICATES_SUFFIX}": pl.List(pl.Float32) for m in LIST_INTERVAL_METRICS}}
PER_USER_KINDS = ("history", "history_mix")


# --------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class ListTarget:
    """A resolved target: ``probs`` (G,) for a global one, (U, G) for a per-user one."""

    name: str
    kind: str  # "global" | "history" | "history_mix"
    genres: tuple[str, ...]
    probs: np.ndarray
    users: np.ndarray  # (U',) rows of the candidate set that are evaluated (all but skipped ones)
    notes: tuple[str, ...] = ()

    @property
    def per_user(self) -> bool:
        return self.probs.ndim == 2

    @property
    def mean(self) -> np.ndarray:
        return self.probs.mean(axis=0) if self.per_user else self.probs

    def rows_for(self, local: np.ndarray) -> np.ndarray:
        """The target of the evaluated users ``local`` (indices into ``users``)."""
        return self.probs[local] if self.per_user else self.probs


def candidate_frequencies(cs: CandidateSet) -> np.ndarray:
    """Σ p(g|i) over the distinct candidate items, normalised (the candidate set's genre mix)."""
    items = np.unique(cs.candidate_rows)
    mix = np.asarray(cs.item_genre[items].sum(axis=0)).ravel()
    return mix / mix.sum()


def _global_target(spec, cs: CandidateSet, where: str) -> np.ndarray:
    present = candidate_frequencies(cs) > 0
    if spec == "Editorial":
        return candidate_frequencies(cs)
    if spec == "Uniform":
        return present / present.sum()
    if isinstance(spec, Mapping) and "distribution" in spec:
        dist = dict(spec["distribution"])
        unknown = [g for g in dist if str(g) not in cs.genres]
        if unknown:
            raise InputError(
                f"{where}: genre {unknown[0]!r} is not in the item table of {cs.path} (its genres: {', '.join(cs.genres)}); "
                "the target and the items must use the same genre names"
            )
        vec = np.array([float(dist.get(g, 0.0)) for g in cs.genres])
        if abs(vec.sum() - 1.0) > 1e-6:
            raise ConfigError(f"{where}: probabilities sum to {vec.sum():.8g}, expected 1")
        return vec / vec.sum()
    raise ConfigError(f"{where}: expected Editorial, Uniform or a distribution, got {spec!r}")


def resolve_list_target(spec, cs: CandidateSet, missing_history: str = "error") -> ListTarget:
    """``"Editorial"``, ``"Uniform"``, ``"history"``, ``{name, distribution}``,
    ``{name, kind: history, half_life_days}`` or ``{name, kind: history_mix, weight, mix_with}``."""
    if isinstance(spec, str) and spec != "history":
        return ListTarget(spec, "global", cs.genres, _global_target(spec, cs, f"target {spec!r}"), np.arange(cs.n_users))
    if isinstance(spec, Mapping) and "distribution" in spec:
        name = str(spec["name"])
        return ListTarget(name, "global", cs.genres, _global_target(spec, cs, f"target {name!r}"), np.arange(cs.n_users))
    spec = {"name": "history", "kind": "history"} if spec == "history" else dict(spec)
    name, kind = str(spec["name"]), spec.get("kind", "history")
    if cs.history_offsets is None:
        raise InputError(f"target {name!r} ({kind}) needs users' histories, but {cs.path} has no history.parquet")
    p_user, has = history_targets(cs.history_offsets, cs.history_rows, cs.item_genre, cs.history_times, spec.get("half_life_days"))
    notes: list[str] = []
    users = np.arange(cs.n_users)
    if not has.all():
        r = int(np.flatnonzero(~has)[0])
        if missing_history == "error":
            raise InputError(
                f"{cs.path}/history.parquet: user_id {cs.user_ids[r]} (candidates row {r}) has no history, so target "
                f"{name!r} is undefined for it ({int((~has).sum())} user(s) without history); add their history or set "
                "missing_history: skip"
            )
        users = np.flatnonzero(has)
        notes.append(f"target {name!r}: {int((~has).sum())} user(s) without history were skipped (missing_history: skip)")
        p_user = p_user[has]
    if kind == "history_mix":
        other = _global_target(spec.get("mix_with", "Uniform"), cs, f"target {name!r}.mix_with")
        p_user = mixed_targets(p_user, other, float(spec["weight"]))
    return ListTarget(name, kind, cs.genres, p_user, users, tuple(notes))


# --------------------------------------------------------------------------- statistics
class _CellStats(ListStats):
    """One (cell, repeat) of candidate lists: :class:`ListStats` (the histogram is of C_KL) and the
    mix, C_KL and accuracy sums."""

    def __init__(self, n_genres: int, n_items: int, edges: np.ndarray) -> None:
        super().__init__(n_items, edges)
        self.mix_sum = np.zeros(n_genres)
        self.c_kl = RunningStats()
        self.acc_sum = {"precision_at_n": 0.0, "recall_at_n": 0.0, "ndcg_at_n": 0.0}
        self.acc_n = 0
        self.n_users = 0

    def add(self, top_rows, p_t, genres, alpha, calib_alpha, heldout, n) -> dict:
        """Add one chunk of users' top-N rows; returns their per-user values (for the intervals)."""
        q = list_mix(top_rows, genres)
        p = np.broadcast_to(p_t, q.shape)
        ckl = metrics.smoothed_kl(p, q, calib_alpha)
        ukl = metrics.smoothed_kl(p, q, alpha)
        self.c_kl.update(ckl)
        self.record(top_rows, ukl, hist_of=ckl)
        self.mix_sum += q.sum(axis=0)
        self.n_users += len(q)
        out = {"q": q, "c_kl_mean": ckl, "user_kl_mean": ukl, "has": None}
        if heldout is not None:
            off, rows_local, items = heldout
            if len(items):
                known = items >= 0  # held-out ids outside the item table can never be hit
                pos = np.full(len(items), n, dtype=np.int64)
                pos[known] = metrics.heldout_positions(top_rows, rows_local[known], items[known])
                has = np.diff(off) > 0
                hits = np.bincount(rows_local, weights=(pos < n).astype(float), minlength=len(q))
                acc = {"precision_at_n": (hits / n)[has], "recall_at_n": metrics.recall_at_k(off, pos, n)[has],
                       "ndcg_at_n": metrics.ndcg_at_k(off, pos, n)[has]}
                for m, v in acc.items():
                    self.acc_sum[m] += float(np.nansum(v))
                self.acc_n += int(has.sum())
                out.update(acc, has=has)
        return out


def _heldout_chunk(cs: CandidateSet, users: np.ndarray, item_row_of_id):
    """Held-out items of ``users`` as (offsets, local row, item row or -2 for unknown ids)."""
    if cs.heldout_offsets is None:
        return None
    off = cs.heldout_offsets
    lens = off[users + 1] - off[users]
    new_off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    flat = np.repeat(off[users] - new_off[:-1], lens) + np.arange(int(new_off[-1]))
    items = item_row_of_id(cs.heldout_ids[flat])
    return new_off, np.repeat(np.arange(len(users)), lens), items


@dataclass
class ListOutcome:
    results: pl.DataFrame
    category_mix: pl.DataFrame
    user_kl_hist: pl.DataFrame
    submissions: list = field(default_factory=list)
    notes: tuple[str, ...] = ()


#: Users per seeded block of random draws: stochastic results do not depend on the chunk size.
RANDOM_BLOCK = 1024


def block_exponentials(key: tuple, start: int, stop: int, width: int) -> np.ndarray:
    """Exp(1) draws for users ``start:stop``, from one seeded stream per block of
    :data:`RANDOM_BLOCK` users (the same numbers whatever the chunking)."""
    out = []
    for block in range(start // RANDOM_BLOCK, (stop - 1) // RANDOM_BLOCK + 1):
        draws = rng_for(key[0], *key[1:], "block", block).standard_exponential((RANDOM_BLOCK, width))
        lo, hi = max(start, block * RANDOM_BLOCK), min(stop, (block + 1) * RANDOM_BLOCK)
        out.append(draws[lo - block * RANDOM_BLOCK : hi - block * RANDOM_BLOCK])
    return np.concatenate(out)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def global_ratio(cs: CandidateSet, genres: ItemGenres, p_target: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """NAILS' global ratio and p(E): p(E) = mean over users of p_u(g); r solves Ḡ·r = p* with Ḡ the
    mean of the users' AᵀΠA (for one-genre items Ḡ = diag p(E), so r = p*/p(E), NAILS' formula)."""
    g = genres.n_genres
    p_model, gram = np.zeros(g), np.zeros((g, g))
    for s in range(0, cs.n_users, chunk):
        rows = cs.candidate_rows[s : s + chunk]
        probs = _softmax(cs.scores[s : s + chunk])
        p_model += candidate_mass(probs, rows, genres).sum(axis=0)
        if not genres.single:
            a = dense_genres(rows, genres)
            gram += np.einsum("bmg,bm,bmh->gh", a, probs, a)
    p_model /= cs.n_users
    if np.any((p_model <= 0) & (p_target > 0)):
        bad = [cs.genres[i] for i in np.flatnonzero((p_model <= 0) & (p_target > 0))]
        raise InputError(f"{cs.path}: the model gives no probability to target genre(s) {', '.join(bad)}; NAILS cannot re-weight them")
    with np.errstate(divide="ignore", invalid="ignore"):
        simple = np.where(p_model > 0, p_target / np.where(p_model > 0, p_model, 1.0), 0.0)
    if genres.single:
        return simple, p_model, None
    r = np.linalg.pinv(gram / cs.n_users, hermitian=True) @ p_target
    scale = float(p_model @ r)
    factors = cs.item_genre[np.unique(cs.candidate_rows)] @ r
    if scale > 0 and factors.min() >= 0:
        return r / scale, p_model, None
    # a candidate would get a negative weight: the non-negative fixed point on the aggregate mix
    r, err, prev = simple, np.inf, None
    for _ in range(200):
        mix = _global_mix(cs, genres, r, chunk)
        moved = np.inf if prev is None else float(np.abs(mix - prev).max())
        err = float(np.abs(mix - p_target).max())
        if err < 1e-9 or moved < 1e-9:
            break
        prev = mix
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(mix > 0, r * p_target / np.where(mix > 0, mix, 1.0), 0.0)
        r = r / float(p_model @ r)
    note = (f"the global target's exact NAILS factors would give some candidates a negative weight; the closest "
            f"non-negative re-weighting was used (largest |mix − target| at λ = 1: {err:.3g})")
    return r, p_model, note


def _global_mix(cs: CandidateSet, genres: ItemGenres, ratio: np.ndarray, chunk: int) -> np.ndarray:
    """Mean over users of the genre mix of the NAILS-re-weighted lists at λ = 1."""
    total = np.zeros(genres.n_genres)
    for s in range(0, cs.n_users, chunk):
        rows = cs.candidate_rows[s : s + chunk]
        adj = nails_reweight_lists(_softmax(cs.scores[s : s + chunk]), rows, genres, ratio, 1.0)
        total += candidate_mass(adj, rows, genres).sum(axis=0)
    return total / cs.n_users


class _SteckChunk:
    """Steck's selection for one chunk of users, with the set-up shared by every λ: per-category
    queues (one genre per item) or the multi-genre pairs (:class:`MultiGenreSteck`)."""

    def __init__(self, rel, rows, genres: ItemGenres, p_t, smoothing: float) -> None:
        self.rel, self.rows, self.genres, self.p_t, self.smoothing = rel, rows, genres, p_t, smoothing
        self._queues: dict[tuple, tuple] = {}
        self._multi = None if genres.single else MultiGenreSteck(rows, genres, p_t, smoothing)

    def select(self, lam: float, n: int) -> np.ndarray:
        if lam == 0.0:
            return top_n_indices(self.rel, n)
        if self._multi is not None:
            return self._multi.select(self.rel, lam, n)
        key = (lam >= 1.0, n)
        if key not in self._queues:
            cat = self.genres.index[self.rows][:, :, 0]
            self._queues[key] = queues_padded(queue_relevance(self.rel, lam), cat, np.ones(self.rel.shape, dtype=bool),
                                              self.genres.n_genres, max_depth=n)
        return steck_greedy(*self._queues[key], self.p_t, lam, n, self.smoothing)


def _steck_select(rel, rows, genres, p_t, lam, n, smoothing):
    return _SteckChunk(rel, rows, genres, p_t, smoothing).select(lam, n)


@dataclass
class _ListRun:
    """What every chunk of one ``evaluate_lists`` call shares."""

    cs: CandidateSet
    target: ListTarget
    method: str
    cfg: object
    dataset: str
    genres: ItemGenres
    n_rep: dict
    chunk: int
    global_r: np.ndarray | None

    def item_row_of_id(self, ids):
        n_items = len(self.cs.item_ids_sorted)
        pos = np.minimum(np.searchsorted(self.cs.item_ids_sorted, ids), n_items - 1)
        return np.where(self.cs.item_ids_sorted[pos] == ids, pos, -2)


def _list_run(cs, target, method, cfg, dataset) -> tuple[_ListRun, list[str]]:
    if method not in ("nails", "steck", "nails_steck"):
        raise ValueError(f"unknown method {method!r}")
    if cfg.top_n > cs.n_candidates:
        raise InputError(f"top_n = {cfg.top_n} is larger than the {cs.n_candidates} candidates per user of {cs.path}")
    genres = ItemGenres.from_csr(cs.item_genre)
    n_rep = {c: (cfg.repeats if c[0] == "stoch" else 1) for c in cfg.cells(method)}
    # the widest per-user arrays: (M, K) genre slots for Steck, (M, G) dense genres for NAILS
    width = cs.n_candidates * (genres.index.shape[1] if method == "steck" or genres.single else genres.n_genres)
    chunk = max(1, int(cfg.list_chunk_cells // width))
    notes, global_r = list(target.notes), None
    if method in ("nails", "nails_steck") and not target.per_user:
        global_r, _, note = global_ratio(cs, genres, target.probs, chunk)
        notes += [f"target {target.name!r}: {note}"] if note else []
    return _ListRun(cs, target, method, cfg, dataset, genres, n_rep, chunk, global_r), notes


def _chunk_work(run: _ListRun, s: int):
    """Selections of one chunk of users for every cell, and NAILS' per-user candidate mass per λ."""
    cs, target, method, cfg, genres, n = run.cs, run.target, run.method, run.cfg, run.genres, run.cfg.top_n
    local = np.arange(s, min(s + run.chunk, len(target.users)))
    users = target.users[local]
    rows = cs.candidate_rows[users]
    probs = _softmax(cs.scores[users])
    p_t = target.rows_for(local)
    ratio, n_restricted, err = run.global_r, 0, 0.0
    if method in ("nails", "nails_steck") and target.per_user:
        nr = nails_user_ratio(probs, rows, genres, p_t)
        ratio, n_restricted, err = nr.ratio, int(nr.restricted.sum()), nr.max_error
    picks, masses = {}, {}
    if method in ("steck", "nails_steck"):
        if method == "steck":
            rel = probs if cfg.steck_relevance == "probability" else cs.scores[users]
        else:
            rel = nails_reweight_lists(probs, rows, genres, ratio, cfg.nails_lambda_for(target.name))
        steck = _SteckChunk(rel, rows, genres, p_t, cfg.steck_smoothing_select)
        for lam in cfg.lambdas:
            picks[("det", lam, 0)] = steck.select(lam, n)
    else:
        for lam in cfg.lambdas:
            adj = nails_reweight_lists(probs, rows, genres, ratio, lam)
            masses[lam] = candidate_mass(adj, rows, genres)
            for sel in cfg.selections:
                for r in range(run.n_rep[(sel, lam)]):
                    if sel == "det":
                        picks[(sel, lam, r)] = top_n_indices(adj, n)
                    else:  # sampling without replacement ∝ adj (exponential race), seeded per block of users
                        noise = block_exponentials((cfg.seed, run.dataset, target.name, method, sel, lam, r), s,
                                                   s + len(local), adj.shape[1])
                        picks[(sel, lam, r)] = top_n_indices(adj / noise, n)
    return local, users, rows, p_t, picks, masses, n_restricted, err


LIST_MEAN_METRICS = ("c_kl_mean", "user_kl_mean")
LIST_ACCURACY = ("precision_at_n", "recall_at_n", "ndcg_at_n")


class _ListIntervals:
    """Bootstrap collectors over the evaluated users (``steps.uncertainty``); deltas against λ = 0."""

    def __init__(self, run: _ListRun, cells, n_items: int, n_cand_items: int) -> None:
        spec, base, g = run.cfg.uncertainty, lambda_zero_baseline(cells), run.genres.n_genres
        n_users, alpha = len(run.target.users), run.cfg.alpha
        self.keys = [(c, r) for c in cells for r in range(run.n_rep[c])]
        self.n_cand_items, self.baseline, self.sel0 = n_cand_items, base, run.cfg.selections[0]

        def kl_of_means(t, w):  # target and list mix both averaged over the resampled users
            with np.errstate(invalid="ignore", divide="ignore"):
                return metrics.smoothed_kl(t[:, :g] / w[:, None], t[:, g:] / w[:, None], alpha)

        w = WeightStream(spec, n_users)  # one set of weights for every collector of these users
        self.kl_at_n = CellAggregates(self.keys, 2 * g, n_users, spec, kl_of_means, "kl_at_n", base, w)
        lam_cells = [(self.sel0, lam) for lam in run.cfg.lambdas]
        self.kl_all = (CellAggregates([(c, 0) for c in lam_cells], 2 * g, n_users, spec, kl_of_means, "kl_all",
                                      {c: base.get(c) for c in lam_cells}, w) if run.method == "nails" else None)
        self.means = CellMeans(cells, LIST_MEAN_METRICS, n_users, spec, base, w)
        self.accuracy = CellMeans(cells, LIST_ACCURACY, n_users, spec, base, w)
        self.coverage = CoverageBootstrap(n_users, len(self.keys), n_items, spec, w)
        self.any_accuracy = False

    def add(self, local, p_t, per_user: dict, masses: dict, rows, picks) -> None:
        p = np.broadcast_to(p_t, (len(local), p_t.shape[-1]))
        self.kl_at_n.add(local, {k: np.hstack([p, per_user[k]["q"]]) for k in self.keys})
        if self.kl_all is not None:
            self.kl_all.add(local, {((self.sel0, lam), 0): np.hstack([p, m]) for lam, m in masses.items()})
        cells = {k[0] for k in self.keys}
        reps = {c: [v for k, v in per_user.items() if k[0] == c] for c in cells}
        self.means.add(local, {c: np.column_stack([np.mean([v[m] for v in reps[c]], axis=0) for m in LIST_MEAN_METRICS])
                               for c in cells})
        has = per_user[self.keys[0]]["has"]
        if has is not None and has.any():
            self.any_accuracy = True
            self.accuracy.add(local[has], {c: np.column_stack([np.mean([v[m] for v in reps[c]], axis=0) for m in LIST_ACCURACY])
                                           for c in cells})
        for i, (c, r) in enumerate(self.keys):
            self.coverage.add(i, local, np.take_along_axis(rows, picks[(*c, r)], axis=1))

    def columns(self, cell) -> dict:
        out = {**self.kl_at_n.columns(cell), **self.means.columns(cell)}
        if self.kl_all is not None:
            out.update(self.kl_all.columns((self.sel0, cell[1])))
        if self.any_accuracy:
            out.update(self.accuracy.columns(cell))
        mine = [i for i, k in enumerate(self.keys) if k[0] == cell]
        base = self.baseline.get(cell)
        iv = self.coverage.interval(mine, self.n_cand_items)
        if base == cell or base is None:
            out.update(interval_columns("coverage_at_n", iv, 0, is_baseline=base == cell))
        else:
            d = self.coverage.paired(mine, [i for i, k in enumerate(self.keys) if k[0] == base], self.n_cand_items)
            out.update(interval_columns("coverage_at_n", iv, 0, d, 0))
        return out


def evaluate_lists(cs: CandidateSet, target: ListTarget, method: str, cfg, dataset: str = "") -> ListOutcome:
    """``method`` toward ``target`` over ``cfg``'s λ grid on candidate set ``cs`` (module docstring)."""
    run, notes = _list_run(cs, target, method, cfg, dataset)
    cells, genres, n = cfg.cells(method), run.genres, cfg.top_n
    edges = np.linspace(0.0, np.log(1.0 / cfg.calibration_alpha) * (1 + 1e-9), HIST_BINS + 1)
    n_items = len(cs.item_ids_sorted)
    stats = {c: [_CellStats(genres.n_genres, n_items, edges) for _ in range(run.n_rep[c])] for c in cells}
    mass = {lam: np.zeros(genres.n_genres) for lam in cfg.lambdas}
    n_cand_items = len(np.unique(cs.candidate_rows[target.users]))
    iv = _ListIntervals(run, cells, n_items, n_cand_items) if cfg.uncertainty.enabled else None
    restricted, nails_err = 0, 0.0
    for local, users, rows, p_t, picks, masses, n_restricted, err in (_chunk_work(run, s) for s in range(0, len(target.users), run.chunk)):
        heldout = _heldout_chunk(cs, users, run.item_row_of_id)
        restricted, nails_err = restricted + n_restricted, max(nails_err, err)
        for lam, m in masses.items():
            mass[lam] += m.sum(axis=0)
        per_user = {((sel, lam), r): stats[(sel, lam)][r].add(np.take_along_axis(rows, pick, axis=1), p_t, genres, cfg.alpha,
                                                              cfg.calibration_alpha, heldout, n)
                    for (sel, lam, r), pick in picks.items()}
        if iv is not None:
            iv.add(local, p_t, per_user, masses, rows, picks)
    if restricted:
        notes.append(f"target {target.name!r}: {restricted} user(s) asked for genres none of their candidates carry; "
                     "NAILS re-weighted toward the target restricted to the candidates' genres")
    if nails_err > 1e-6:
        notes.append(f"target {target.name!r}: with multi-genre items NAILS at λ = 1 reaches the users' targets up to "
                     f"{nails_err:.3g} (largest |mix − target|: the rest is outside what the candidates can reach)")
    rows_out, mixes, hists = [], [], []
    for sel, lam in cells:
        row = _list_row(stats[(sel, lam)], target, method, sel, lam, run.n_rep[(sel, lam)], cfg, mass, n_cand_items, mixes, hists, edges)
        if iv is not None:
            row.update(iv.columns((sel, lam)))
        rows_out.append(row)
    results = pl.DataFrame([{c: r.get(c) for c in LIST_RESULT_SCHEMA} for r in rows_out], schema=LIST_RESULT_SCHEMA)
    return ListOutcome(results=results, category_mix=pl.DataFrame(mixes, schema=MIX_SCHEMA),
                       user_kl_hist=pl.DataFrame(hists, schema=HIST_SCHEMA), notes=tuple(notes))


def _list_row(reps, target, method, sel, lam, n_rep, cfg, mass, n_cand_items, mixes, hists, edges) -> dict:
    """One cell's results row (means over repeats, ``*_sd`` across them); its mix and histogram rows appended."""
    row = {"distribution": target.name, "method": method, "selection": sel, "lambda": lam, "n_repeats": n_rep}
    p_mean = target.mean
    mix_each = [s.mix_sum / s.n_users for s in reps]
    vals = {
        "kl_at_n": [metrics.smoothed_kl(p_mean, m, cfg.alpha) for m in mix_each],
        "coverage_at_n": [float(s.covered.sum()) / n_cand_items for s in reps],
        "user_kl_mean": [s.user_kl.mean for s in reps],
        "c_kl_mean": [s.c_kl.mean for s in reps],
    }
    if reps[0].acc_n:
        for m in LIST_ACCURACY:
            vals[m] = [s.acc_sum[m] / s.acc_n for s in reps]
    for name, v in vals.items():
        row[name], row[f"{name}_sd"] = _mean_sd(v)
    row["user_kl_std"] = _mean_sd([s.user_kl.std for s in reps])[0]
    row["c_kl_std"] = _mean_sd([s.c_kl.std for s in reps])[0]
    if method == "nails":
        all_mix = mass[lam] / len(target.users)
        row["kl_all"] = metrics.smoothed_kl(p_mean, all_mix, cfg.alpha)
        if sel == cfg.selections[0]:
            mixes += _mix_rows(target, method, "all", lam, "all", all_mix)
    mixes += _mix_rows(target, method, sel, lam, "top_n", np.mean(mix_each, axis=0))
    hist = np.sum([s.hist for s in reps], axis=0)
    hists += [{"distribution": target.name, "method": method, "selection": sel, "lambda": lam,
               "bin_left": float(edges[i]), "bin_right": float(edges[i + 1]), "count": int(hist[i])}
              for i in np.flatnonzero(hist)]
    return row


def _mix_rows(target: ListTarget, method, sel, lam, basis, mix) -> list[dict]:
    return [{"distribution": target.name, "method": method, "selection": sel, "lambda": lam, "basis": basis,
             "category": g, "share": float(s)} for g, s in zip(target.genres, mix)]


def list_target_mix(target: ListTarget, cs: CandidateSet) -> pl.DataFrame:
    """The (mean) target and the model's own mix p(E), as category-mix rows."""
    genres = ItemGenres.from_csr(cs.item_genre)
    p_model = np.zeros(genres.n_genres)
    for s in range(0, len(target.users), 20_000):
        users = target.users[s : s + 20_000]
        p_model += candidate_mass(_softmax(cs.scores[users]), cs.candidate_rows[users], genres).sum(axis=0)
    rows = _mix_rows(target, "target", "-", float("nan"), "target", target.mean)
    rows += _mix_rows(target, "model", "-", float("nan"), "all", p_model / len(target.users))
    return pl.DataFrame(rows, schema=MIX_SCHEMA)


def user_list_mix(cs: CandidateSet, target: ListTarget, user_row: int, picks: Mapping[str, np.ndarray]) -> pl.DataFrame:
    """One user's genre mix: the target and each named list (candidate columns), for the card."""
    genres = ItemGenres.from_csr(cs.item_genre)
    local = int(np.flatnonzero(target.users == user_row)[0]) if target.per_user else user_row
    out = [{"list": "target", "category": g, "share": float(v)}
           for g, v in zip(cs.genres, target.rows_for(np.array([local]))[0] if target.per_user else target.probs)]
    for name, cols in picks.items():
        q = list_mix(cs.candidate_rows[user_row][cols][None, :], genres)[0]
        out += [{"list": name, "category": g, "share": float(v)} for g, v in zip(cs.genres, q)]
    return pl.DataFrame(out, schema={"list": pl.String, "category": pl.String, "share": pl.Float64})


def example_user_mix(cs: CandidateSet, target: ListTarget, cfg, lam: float, method: str = "steck") -> tuple[int, pl.DataFrame]:
    """The first evaluated user's genre mix before (λ = 0) and after Steck at ``lam``: ``(user_id, rows)``."""
    genres = ItemGenres.from_csr(cs.item_genre)
    user = int(target.users[0])
    rows = cs.candidate_rows[user : user + 1]
    probs = _softmax(cs.scores[user : user + 1])
    rel = probs if cfg.steck_relevance == "probability" else cs.scores[user : user + 1]
    p_t = target.rows_for(np.array([0]))
    picks = {"top-N (λ = 0)": top_n_indices(rel, cfg.top_n)[0],
             f"{method} λ = {lam:g}": _steck_select(rel, rows, genres, p_t, lam, cfg.top_n, cfg.steck_smoothing_select)[0]}
    return int(cs.user_ids[user]), user_list_mix(cs, target, user, picks)
