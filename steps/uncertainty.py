"""Bootstrap intervals, paired differences and Holm's correction for recalign's results tables.

Every compared number is a statistic of **units** — impressions, BA rows, users. A bootstrap
resample re-weights the units: resample ``b`` gives unit ``i`` the weight ``w[b, i]``, either

* ``poisson`` (default): i.i.d. Poisson(1) weights (probabilities rounded to multiples of 1/256
  with the mean and variance kept exactly 1: :data:`POISSON_BYTE_THRESHOLDS`), generated per block of
  :data:`UNIT_BLOCK` units from its own seeded stream, so the weights of unit ``i`` do not depend
  on how the caller chunks the units; or
* ``multinomial``: the classical n-out-of-n resample (weights = how often each unit is drawn),
  split exactly over the blocks (binomial per block, then uniform draws inside it).

The weights form a (B × units) matrix that is never held whole: it is generated block by block and
multiplied into the per-unit values, so one pass gives every metric's weighted sums for all B
resamples at once (``W @ X``), at memory B × :data:`UNIT_BLOCK`.

* A **mean** metric on resample ``b`` is Σᵢ w[b,i]·xᵢ / Σᵢ w[b,i].
* An **aggregate** metric (KL of the aggregate mix, coverage, Gini) is recomputed from the
  resample's weighted per-unit counts: the weighted category totals ``W @ C`` for KL@N, and for
  coverage the items whose weighted exposure ``W @ E`` is positive.
* A **paired difference** (a cell against its baseline on the same units) is the difference of the
  two statistics on the same resample; its p-value is the shifted-null paired bootstrap
  ``(1 + #{|δ*_b − δ̂| ≥ |δ̂|}) / (B + 1)`` or, with ``test: randomisation``, the sign-flip
  randomisation test of the per-unit differences (means only). Both are resampling p-values and
  cannot fall below 1/(B + 1), so after Holm over m tests nothing can reach 0.05 unless
  B + 1 > 20·m (a few hundred cells at B = 1,000 never do). The default, ``test: normal``, is
  the bootstrap-standard-error test ``p = 2 Φ(−|δ̂| / sd(δ*))`` (Efron & Tibshirani 1993, §16):
  same resamples, a continuous p-value, correct size when δ̂ is near normal (means of many units).
* Intervals are percentile or BCa (bias-corrected and accelerated, Efron 1987): the acceleration
  ``a = Σ U³ / (6 (Σ U²)^{3/2})`` comes from the jackknife values ``U``; for a mean ``Uᵢ = xᵢ − x̄``
  exactly (from the power sums Σx, Σx², Σx³), for an aggregate from a grouped jackknife
  (:data:`JACKKNIFE_GROUPS` groups of consecutive units, each left out in turn).

Hand check (percentile, B = 2): for x = (0, 1) and weights w = ((2, 0), (1, 1)) the resampled means
are (0, 0.5) and the 95 % percentile interval is (0.0125, 0.4875).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
from scipy.special import ndtr, ndtri

from steps.errors import ConfigError
from steps.seeding import rng_for

#: Units per seeded block of bootstrap weights (the weights do not depend on the caller's chunks).
UNIT_BLOCK = 8192
#: Groups of the grouped jackknife that gives an aggregate metric's BCa acceleration.
JACKKNIFE_GROUPS = 100
#: An item listed by at least this many units is covered in every resample (P(all their weights
#: are 0) ≈ e^-COMMON_ITEM ≈ 2e-22): coverage is bootstrapped over the rarer items only.
COMMON_ITEM = 50
METHODS = ("bca", "percentile")
TESTS = ("normal", "bootstrap", "randomisation")
WEIGHTS = ("poisson", "multinomial")


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class UncertaintySpec:
    """``uncertainty:`` of a flow config; ``resamples: 0`` switches the intervals off."""

    resamples: int = 1000
    level: float = 0.95
    method: str = "bca"
    seed: int = 20250613
    test: str = "normal"
    weights: str = "poisson"

    @property
    def enabled(self) -> bool:
        return self.resamples > 0

    @classmethod
    def from_dict(cls, raw: Any, where: str = "uncertainty") -> "UncertaintySpec":
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: expected a mapping with keys {sorted(cls.__dataclass_fields__)}, got {raw!r}")
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed keys: {sorted(cls.__dataclass_fields__)}")
        d = dict(raw)
        for key in ("resamples", "seed"):
            if key in d:
                v = d[key]
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                    raise ConfigError(f"{where}.{key}: expected an integer >= 0, got {v!r}")
                d[key] = int(v)
        if 0 < d.get("resamples", cls.resamples) < 20:
            raise ConfigError(f"{where}.resamples: {d['resamples']} resamples cannot give an interval; use 0 (off) or >= 20")
        if "level" in d:
            v = d["level"]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < float(v) < 1.0:
                raise ConfigError(f"{where}.level: expected a number in (0, 1), e.g. 0.95, got {v!r}")
            d["level"] = float(v)
        for key, choices in (("method", METHODS), ("test", TESTS), ("weights", WEIGHTS)):
            if key in d and d[key] not in choices:
                raise ConfigError(f"{where}.{key}: unknown value {d[key]!r}; choose from {list(choices)}")
        return cls(**d)

    def as_dict(self) -> dict:
        return asdict(self)


def uncertainty_key(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A flow config's ``uncertainty:`` -> ``{"uncertainty": UncertaintySpec}`` (nothing when absent)."""
    return {"uncertainty": UncertaintySpec.from_dict(raw["uncertainty"])} if "uncertainty" in raw else {}


# --------------------------------------------------------------------------- weights
#: Poisson(1) weights from one uniform byte u: weight = #{k : u >= t_k}, i.e. P(0..5) =
#: (94, 95, 46, 16, 4, 1) / 256 (Poisson(1): 94.2, 94.2, 47.1, 15.7, 3.9, 0.8), chosen so that the
#: weights' mean and variance are exactly 1, as Poisson(1)'s (what the bootstrap needs).
POISSON_BYTE_THRESHOLDS = np.array([94, 189, 235, 251, 255], dtype=np.uint8)

def _block_bounds(n_units: int, block: int) -> tuple[int, int]:
    return block * UNIT_BLOCK, min(n_units, (block + 1) * UNIT_BLOCK)


def _multinomial_block_counts(spec: UncertaintySpec, n_units: int) -> np.ndarray:
    """(B, blocks) draws falling in each block of an n-out-of-n resample (sequential binomials)."""
    n_blocks = -(-n_units // UNIT_BLOCK)
    rng = rng_for(spec.seed, "multinomial", "blocks", n_units)
    out = np.zeros((spec.resamples, n_blocks), dtype=np.int64)
    left = np.full(spec.resamples, n_units, dtype=np.int64)
    for j in range(n_blocks):
        lo, hi = _block_bounds(n_units, j)
        share = (hi - lo) / (n_units - lo)
        out[:, j] = left if j == n_blocks - 1 else rng.binomial(left, share)
        left -= out[:, j]
    return out


def block_weights(spec: UncertaintySpec, n_units: int, block: int, stream: str = "weights",
                  _counts: np.ndarray | None = None, compact: bool = False) -> np.ndarray:
    """(B, units of ``block``) float32 bootstrap weights of block ``block`` (module docstring);
    ``compact``: the same values in the smallest exact dtype (uint8 for Poisson)."""
    lo, hi = _block_bounds(n_units, block)
    c, b = hi - lo, spec.resamples
    rng = rng_for(spec.seed, stream, spec.weights, block)
    if spec.weights == "poisson":
        raw = rng.bit_generator.random_raw(-(-b * c // 8))  # 8 uniform bytes per 64-bit draw
        u = raw.view(np.uint8)[: b * c].reshape(b, c)
        w = np.zeros((b, c), dtype=np.uint8)
        ge = np.empty((b, c), dtype=bool)
        for t in POISSON_BYTE_THRESHOLDS:  # weight = #{k : u >= t_k}, summed in uint8
            np.greater_equal(u, t, out=ge)
            np.add(w, ge.view(np.uint8), out=w)
        return w if compact else w.astype(np.float32)
    counts = (_multinomial_block_counts(spec, n_units) if _counts is None else _counts)[:, block]
    draws = rng.integers(0, c, size=int(counts.sum()), dtype=np.int64) + np.repeat(np.arange(b) * c, counts)
    return np.bincount(draws, minlength=b * c).reshape(b, c).astype(np.float32)


def sign_weights(spec: UncertaintySpec, n_units: int, block: int) -> np.ndarray:
    """(B, units of ``block``) random signs ±1 (float32) for the sign-flip randomisation test."""
    lo, hi = _block_bounds(n_units, block)
    bits = rng_for(spec.seed, "signs", block).integers(0, 2, size=(spec.resamples, hi - lo), dtype=np.int8)
    return (2 * bits - 1).astype(np.float32)


class WeightStream:
    """The weights of any increasing unit indices, generating each block once.

    One stream may be shared by every collector whose units are the same (the BA rows of a task,
    its impressions): the weights depend only on the spec, the number of units and the block, so
    sharing changes no value, and the last :attr:`KEEP` blocks (compact: uint8 for Poisson) are
    kept for the next collector that asks for them."""

    #: Blocks kept (Poisson: 1 byte per unit × resample, 8 MB at B = 1,000).
    KEEP = 6

    def __init__(self, spec: UncertaintySpec, n_units: int) -> None:
        self.spec, self.n_units = spec, n_units
        self._cache: dict[tuple[str, int], np.ndarray] = {}
        self._counts = _multinomial_block_counts(spec, n_units) if spec.weights == "multinomial" else None

    def _cached(self, kind: str, j: int, make: Callable[[], np.ndarray]) -> np.ndarray:
        key = (kind, j)
        got = self._cache.pop(key, None)
        if got is None:
            got = make()
            while len(self._cache) >= self.KEEP:
                self._cache.pop(next(iter(self._cache)))
        self._cache[key] = got  # most recently used last
        return got

    def weights(self, j: int) -> np.ndarray:
        """(B, units of block ``j``) float32 weights."""
        w = self._cached("w", j, lambda: block_weights(self.spec, self.n_units, j, _counts=self._counts, compact=True))
        return w.astype(np.float32)

    def sign_block(self, j: int) -> np.ndarray:
        return self._cached("s", j, lambda: sign_weights(self.spec, self.n_units, j))

    def blocks(self, idx: np.ndarray, signs: bool = False):
        """Yield ``(positions in idx, their columns in the block, the block's W, its signs or None)``
        (the randomisation test's signs when ``signs``)."""
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) == 0:
            return
        if idx[0] < 0 or idx[-1] >= self.n_units or (len(idx) > 1 and np.any(np.diff(idx) < 0)):
            raise ValueError(f"unit indices must be increasing within 0..{self.n_units - 1}")
        blocks = idx // UNIT_BLOCK
        cuts = np.flatnonzero(np.diff(blocks)) + 1
        for part in np.split(np.arange(len(idx)), cuts):
            j = int(blocks[part[0]])
            yield part, idx[part] - j * UNIT_BLOCK, self.weights(j), (self.sign_block(j) if signs else None)

    def pieces(self, idx: np.ndarray, signs: bool = False):
        """Yield ``(positions in idx, W[:, idx[positions]], signs or None)`` block by block."""
        for part, local, w, s in self.blocks(idx, signs):
            full = len(local) == w.shape[1]
            yield part, (w if full else w[:, local]), (None if s is None else (s if full else s[:, local]))


def weight_stream(spec: UncertaintySpec, n_units: int, shared: "WeightStream | None" = None) -> WeightStream:
    """``shared`` when it is the stream of these units under this spec, else a new one."""
    if shared is not None:
        if shared.n_units != n_units:
            raise ValueError(f"a shared weight stream of {shared.n_units} units cannot weight {n_units} units")
        if shared.spec != spec:
            raise ValueError(f"a shared weight stream made under {shared.spec} cannot weight under {spec}")
        return shared
    return WeightStream(spec, n_units)


class _Pending:
    """Rows waiting until their block of units is complete: every block is then multiplied in one
    piece, so the float32 sums (and the intervals) do not depend on how the caller chunks units."""

    def __init__(self) -> None:
        self.idx: list[np.ndarray] = []
        self.rows: list = []

    def push(self, idx: np.ndarray, rows) -> None:
        if len(idx):
            self.idx.append(idx)
            self.rows.append(rows)

    def pop(self, final: bool = False):
        """``(idx, rows)`` of every complete block (all with ``final``), or None."""
        if not self.idx:
            return None
        idx = np.concatenate(self.idx) if len(self.idx) > 1 else self.idx[0]
        rows = (sp.vstack(self.rows, format="csr") if sp.issparse(self.rows[0]) else np.concatenate(self.rows)) \
            if len(self.rows) > 1 else self.rows[0]
        cut = len(idx) if final else int(np.searchsorted(idx, (idx[-1] // UNIT_BLOCK) * UNIT_BLOCK))
        self.idx, self.rows = ([idx[cut:]], [rows[cut:]]) if cut < len(idx) else ([], [])
        return (idx[:cut], rows[:cut]) if cut else None


class _BlockTotals:
    """Streamed weighted totals of every resample: ``tot`` (B × columns) += W @ rows and ``wsum``
    (B) += W @ 1, one float32 matmul per complete block of units (:class:`_Pending`). Subclasses
    set ``stream``, ``tot``, ``wsum`` and ``_pending`` and define ``_resample(idx, rows)``; ``signs``:
    whether the blocks come with the randomisation test's signs."""

    signs = False

    def _flush(self, final: bool = False) -> None:
        got = self._pending.pop(final)
        if got is not None:
            self._resample(*got)

    def _add_dense(self, idx: np.ndarray, rows: np.ndarray, on_block: Callable | None = None) -> None:
        """Dense ``rows`` (units ``idx`` × columns) into the totals; ``on_block(part, local, signs)``
        after each block (absent units' rows are zero, so W is never gathered)."""
        xs = np.hstack([rows, np.ones((len(idx), 1))]).astype(np.float32)
        for part, local, w, signs in self.stream.blocks(idx, self.signs):
            full = np.zeros((w.shape[1], xs.shape[1]), dtype=np.float32)
            full[local] = xs[part]
            out = w @ full
            self.tot += out[:, :-1]
            self.wsum += out[:, -1]
            if on_block is not None:
                on_block(part, local, signs)


# --------------------------------------------------------------------------- intervals
def _accel(u: np.ndarray, axis: int = 0) -> np.ndarray:
    """a = Σ U³ / (6 (Σ U²)^{3/2}) of jackknife deviations U (0 where they vanish)."""
    s2, s3 = np.sum(u**2, axis=axis), np.sum(u**3, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = s3 / (6.0 * s2**1.5)
    return np.where(s2 > 0, a, 0.0)


def interval(theta_hat: np.ndarray, theta_star: np.ndarray, accel: np.ndarray, spec: UncertaintySpec
             ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile or BCa bounds of each column of ``theta_star`` (B, m) around ``theta_hat`` (m).

    BCa: z₀ = Φ⁻¹(#{θ* < θ̂}/B), bound αⱼ' = Φ(z₀ + (z₀ + zⱼ)/(1 − a(z₀ + zⱼ))) for
    zⱼ = Φ⁻¹((1 ∓ level)/2), then the αⱼ' percentiles (as ``scipy.stats.bootstrap``)."""
    theta_star = np.asarray(theta_star, dtype=np.float64)
    theta_hat = np.atleast_1d(np.asarray(theta_hat, dtype=np.float64))
    alpha = np.array([(1 - spec.level) / 2, (1 + spec.level) / 2])
    m = theta_star.shape[1]
    finite = np.isfinite(theta_star)
    if spec.method == "percentile":
        probs = np.broadcast_to(alpha[:, None], (2, m))
    else:
        n_ok = finite.sum(axis=0)
        tol = _tol(theta_hat, theta_star)[None, :]  # float32 sums: values this close to θ̂ are ties, counted half
        below = np.sum(theta_star < theta_hat[None, :] - tol, axis=0)
        ties = np.sum(np.abs(theta_star - theta_hat[None, :]) <= tol, axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            z0 = ndtri((below + 0.5 * ties) / np.maximum(n_ok, 1))
            z = ndtri(alpha)[:, None]
            a = np.atleast_1d(accel)[None, :]
            probs = ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))
        probs = np.where(np.isfinite(probs), probs, alpha[:, None])  # degenerate: all θ* on one side
    lo, hi = np.full(m, np.nan), np.full(m, np.nan)
    for j in range(m):
        col = theta_star[finite[:, j], j]
        if len(col):
            lo[j], hi[j] = np.percentile(col, 100 * probs[:, j])
    return lo, hi


def _tol(theta_hat: np.ndarray, theta_star: np.ndarray) -> np.ndarray:
    """How close two resampled values must be to count as equal (the sums are float32)."""
    with np.errstate(invalid="ignore"):
        spread = np.nan_to_num(np.nanstd(np.where(np.isfinite(theta_star), theta_star, np.nan), axis=0))
    return 1e-5 * (np.abs(np.nan_to_num(theta_hat)) + spread) + 1e-12


def inverted_p(delta_star: np.ndarray) -> np.ndarray:
    """Two-sided p-value inverting the percentile interval: ``2 (1 + #{δ* on the smaller side of 0}) / (B + 1)``
    (capped at 1) — the smallest 1 − level whose percentile interval excludes 0."""
    ok = np.isfinite(delta_star)
    tol = _tol(np.zeros(delta_star.shape[1]), delta_star)[None, :]
    le, ge = ((delta_star <= tol) & ok).sum(axis=0), ((delta_star >= -tol) & ok).sum(axis=0)
    return np.minimum(1.0, 2 * (1 + np.minimum(le, ge)) / (1 + ok.sum(axis=0)))


def normal_p(delta_hat: np.ndarray, delta_star: np.ndarray) -> np.ndarray:
    """Two-sided p-value of δ̂ against the bootstrap standard error: ``2 Φ(−|δ̂| / sd(δ*))``
    (0 where δ̂ ≠ 0 and every resample agrees; 1 where δ̂ = 0 within float32 noise)."""
    delta_hat = np.atleast_1d(np.asarray(delta_hat, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.nanstd(np.where(np.isfinite(delta_star), delta_star, np.nan), axis=0, ddof=1)
        tol = _tol(delta_hat, delta_star)
        z = np.where(np.abs(delta_hat) <= tol, 0.0, np.abs(delta_hat) / sd)
    return np.where(np.isnan(delta_hat), np.nan, 2 * ndtr(-z))


def bootstrap_p(delta_hat: np.ndarray, delta_star: np.ndarray) -> np.ndarray:
    """Two-sided shifted-null paired-bootstrap p-value ``(1 + #{|δ* − δ̂| ≥ |δ̂|}) / (B + 1)``."""
    delta_hat = np.atleast_1d(delta_hat)
    ok = np.isfinite(delta_star)
    tol = _tol(delta_hat, delta_star)[None, :]
    extreme = (np.abs(delta_star - delta_hat[None, :]) >= np.abs(delta_hat)[None, :] - tol) & ok
    return (1 + extreme.sum(axis=0)) / (1 + ok.sum(axis=0))


@dataclass
class Interval:
    """Per metric column: the estimate, its interval and (differences) a p-value."""

    estimate: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    p: np.ndarray | None = None
    star: np.ndarray | None = None  # (B, m) the statistic on every resample


# --------------------------------------------------------------------------- mean metrics
class MeanBootstrap(_BlockTotals):
    """Streamed bootstrap of the means of ``n_cols`` per-unit metrics and of paired differences.

    ``add(idx, values)`` takes the values (rows = units ``idx``, increasing) of every column;
    ``pairs`` are ``(column, baseline column)``: their per-unit difference is tested (same units);
    ``stream``: a :class:`WeightStream` of the same units shared with other collectors.
    """

    def __init__(self, n_units: int, n_cols: int, spec: UncertaintySpec, pairs: Sequence[tuple[int, int]] = (),
                 stream: WeightStream | None = None) -> None:
        self.spec, self.n_units, self.m = spec, n_units, n_cols
        self.pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        self.signs = spec.test == "randomisation" and len(self.pairs) > 0
        self.stream = weight_stream(spec, n_units, stream)
        b = spec.resamples
        self.wsum, self.tot = np.zeros(b), np.zeros((b, n_cols))
        self.n = 0
        self.s = np.zeros((3, n_cols))  # Σx, Σx², Σx³
        self.d = np.zeros((3, len(self.pairs)))  # the same of the pairs' differences
        self.flip = np.zeros((b, len(self.pairs)))  # Σ sᵢ dᵢ (randomisation test)
        self.shift: np.ndarray | None = None
        self._pending = _Pending()

    def add(self, idx: np.ndarray, values: np.ndarray) -> None:
        x = np.asarray(values, dtype=np.float64).reshape(len(idx), self.m)
        if not np.isfinite(x).all():
            raise ValueError("per-unit metric values must be finite (leave out units without a value)")
        self.n += len(x)
        d = x[:, self.pairs[:, 0]] - x[:, self.pairs[:, 1]]
        for sums, v in ((self.s, x), (self.d, d)):
            v2 = v * v
            sums[0] += v.sum(axis=0)
            sums[1] += v2.sum(axis=0)
            sums[2] += (v2 * v).sum(axis=0)
        self._pending.push(np.asarray(idx, dtype=np.int64), np.hstack([x, d]))
        self._flush()

    def _resample(self, idx: np.ndarray, xd: np.ndarray) -> None:
        x, d = xd[:, : self.m], xd[:, self.m :]
        if self.shift is None:  # summed in float32 around the first block's mean (exact for constants)
            self.shift = x[idx < (idx[0] // UNIT_BLOCK + 1) * UNIT_BLOCK].mean(axis=0)

        def flip(part, local, signs):  # Σ sᵢ dᵢ of the randomisation test
            if signs is not None:
                dfull = np.zeros((signs.shape[1], d.shape[1]), dtype=np.float32)
                dfull[local] = d[part]
                self.flip += signs @ dfull
        self._add_dense(idx, x - self.shift, flip)

    def _shift(self) -> np.ndarray:
        return np.zeros(self.m) if self.shift is None else self.shift

    def _accel(self, s: np.ndarray) -> np.ndarray:
        n = max(self.n, 1)
        mean = s[0] / n
        m2 = s[1] - n * mean**2
        m3 = s[2] - 3 * mean * s[1] + 2 * n * mean**3
        with np.errstate(divide="ignore", invalid="ignore"):
            a = m3 / (6.0 * np.maximum(m2, 0) ** 1.5)
        return np.where(m2 > 1e-12 * np.maximum(s[1], 1e-300), a, 0.0)

    def means(self) -> Interval:
        self._flush(final=True)
        est = self.s[0] / self.n if self.n else np.full(self.m, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            star = self.tot / self.wsum[:, None] + self._shift()
        return Interval(est, *interval(est, star, self._accel(self.s), self.spec), star=star)

    def differences(self) -> Interval:
        self._flush(final=True)
        i, j = self.pairs[:, 0], self.pairs[:, 1]
        est = self.d[0] / self.n if self.n else np.full(len(i), np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            c = self._shift()
            star = (self.tot[:, i] - self.tot[:, j]) / self.wsum[:, None] + (c[i] - c[j])
        lo, hi = interval(est, star, self._accel(self.d), self.spec)
        if self.spec.test == "randomisation":
            extreme = np.abs(self.flip) >= np.abs(self.d[0])[None, :] * (1 - 1e-12)
            p = (1 + extreme.sum(axis=0)) / (1 + self.spec.resamples)
        elif self.spec.test == "normal":
            p = normal_p(est, star)
        else:
            p = bootstrap_p(est, star)
        return Interval(est, lo, hi, p, star)


def mean_interval(values: np.ndarray, spec: UncertaintySpec) -> Interval:
    """Mean and interval of each column of ``values`` (units × metrics), all from one weight matrix.

    >>> spec = UncertaintySpec(resamples=2000, seed=1)
    >>> r = mean_interval(np.r_[np.zeros(50), np.ones(50)][:, None], spec)
    >>> float(r.estimate[0]), bool(0.39 < r.lo[0] < 0.42), bool(0.58 < r.hi[0] < 0.61)
    (0.5, True, True)
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[:, None] if values.ndim == 1 else values
    acc = MeanBootstrap(len(values), values.shape[1], spec)
    acc.add(np.arange(len(values)), values)
    return acc.means()


def paired_difference(x: np.ndarray, base: np.ndarray, spec: UncertaintySpec) -> Interval:
    """Mean of ``x − base`` (same units, columns = metrics), its interval and a two-sided p-value
    (``spec.test``): paired, because both are re-weighted by the same resample."""
    x, base = np.asarray(x, dtype=np.float64), np.asarray(base, dtype=np.float64)
    x, base = (x[:, None], base[:, None]) if x.ndim == 1 else (x, base)
    m = x.shape[1]
    acc = MeanBootstrap(len(x), 2 * m, spec, pairs=[(k, m + k) for k in range(m)])
    acc.add(np.arange(len(x)), np.hstack([x, base]))
    return acc.differences()


# --------------------------------------------------------------------------- aggregate metrics
class AggregateBootstrap(_BlockTotals):
    """Streamed weighted totals ``W @ C`` of per-unit count columns (dense rows or sparse CSR),
    from which aggregate metrics are recomputed on each resample (:meth:`interval`, :meth:`paired`).

    ``fn(totals, weight_sums)`` maps (R, d) weighted totals of the columns it is given and the (R,)
    weight sums to (R,) metric values; it is called on the full sample (R = 1, weights 1), the B
    resamples and the grouped-jackknife leave-outs. ``stream``: as :class:`MeanBootstrap`'s."""

    def __init__(self, n_units: int, n_cols: int, spec: UncertaintySpec, stream: WeightStream | None = None) -> None:
        self.spec, self.n_units, self.d = spec, n_units, n_cols
        self.stream = weight_stream(spec, n_units, stream)
        self.g = min(JACKKNIFE_GROUPS, max(n_units, 1))
        self.tot = np.zeros((spec.resamples, n_cols))
        self.wsum = np.zeros(spec.resamples)
        self.full = np.zeros(n_cols)
        self.groups = np.zeros((self.g, n_cols))
        self.group_n = np.zeros(self.g)
        self._pending = _Pending()

    def add(self, idx: np.ndarray, counts) -> None:
        idx = np.asarray(idx, dtype=np.int64)
        is_sparse = sp.issparse(counts)
        c = sp.csr_matrix(counts, dtype=np.float32) if is_sparse else np.asarray(counts, dtype=np.float32).reshape(len(idx), self.d)
        group = idx * self.g // max(self.n_units, 1)
        c64 = c.astype(np.float64)
        self.full += np.asarray(c64.sum(axis=0)).ravel()
        gm = sp.csr_matrix((np.ones(len(idx)), (group, np.arange(len(idx)))), shape=(self.g, len(idx)))
        self.groups += np.asarray((gm @ c64).todense() if is_sparse else gm @ c64)
        self.group_n += np.bincount(group, minlength=self.g)
        self._pending.push(idx, c)
        self._flush()

    def _resample(self, idx: np.ndarray, c) -> None:
        if not sp.issparse(c):
            self._add_dense(idx, c)
            return
        for part, w, _ in self.stream.pieces(idx):
            self.wsum += w.sum(axis=1)
            self.tot += (c[part].T @ w.T).T

    def _flushed(self) -> "AggregateBootstrap":
        self._flush(final=True)
        return self

    def _values(self, fn: Callable, cols=slice(None)) -> tuple[float, np.ndarray, np.ndarray]:
        """``fn`` on the full sample, on every resample and on every grouped-jackknife leave-out."""
        self._flush(final=True)
        est = float(np.asarray(fn(self.full[None, cols], np.array([float(self.group_n.sum())])))[0])
        star = np.asarray(fn(self.tot[:, cols], self.wsum), dtype=np.float64)
        keep = self.group_n > 0
        jack = np.asarray(fn((self.full[None, :] - self.groups[keep])[:, cols], self.group_n.sum() - self.group_n[keep]),
                          dtype=np.float64)
        return est, star, jack

    def interval(self, fn: Callable, cols=slice(None), centre: bool = False) -> Interval:
        est, star, jack = self._values(fn, cols)
        return _from_values(np.array([est]), star[:, None], jack, self.spec, centre=centre)

    def paired(self, fn: Callable, cols, base_cols, base_fn: Callable | None = None, centre: bool = False) -> Interval:
        """``fn`` on ``cols`` minus ``base_fn`` (default ``fn``) on ``base_cols``, on the same resamples.
        The p-value: with ``test: normal`` δ̂ against the resamples' standard error (:func:`normal_p`);
        otherwise it inverts the percentile interval (:func:`inverted_p`): an aggregate's resampled
        values are biased (coverage can only fall in a resample), which misplaces a shifted null."""
        e1, s1, j1 = self._values(fn, cols)
        e0, s0, j0 = self._values(base_fn or fn, base_cols)
        return _from_values(np.array([e1 - e0]), (s1 - s0)[:, None], j1 - j0, self.spec, paired=True, centre=centre)


def _from_values(est: np.ndarray, star: np.ndarray, jack: np.ndarray, spec: UncertaintySpec, paired: bool = False,
                 centre: bool = False) -> Interval:
    """Interval (and p-value) from resampled values; ``centre`` moves them to mean θ̂ first (the
    bootstrap's bias removed: for coverage, which can only fall in a resample)."""
    raw = star
    if centre:
        # The bias is removed by the centring, so BCa's bias correction z₀ would count it again:
        # plain percentiles of the centred values, widened to contain θ̂ (a resample of coverage
        # is either equal to θ̂ or below it; centred, the common value can sit just above θ̂).
        star = star - np.nanmean(star, axis=0, keepdims=True) + est[None, :]
        lo, hi = interval(est, star, np.zeros(star.shape[1]), replace(spec, method="percentile"))
        lo, hi = np.fmin(lo, est), np.fmax(hi, est)
    else:
        a = _accel(jack.mean() - jack) if len(jack) > 1 else 0.0
        lo, hi = interval(est, star, np.atleast_1d(a), spec)
    if not paired:
        p = None
    elif spec.test == "normal":
        p = normal_p(est, star)
    else:
        p = inverted_p(star)
    return Interval(est, lo, hi, p, raw)


def aggregate_interval(fn: Callable, counts, spec: UncertaintySpec) -> Interval:
    """Interval of the aggregate metric ``fn`` (see :class:`AggregateBootstrap`) of per-unit
    ``counts`` (units × d, dense or sparse), recomputed on every resample of units.

    For example KL@N of the aggregate mix: ``counts`` = per-user category counts of the top-N,
    ``fn = lambda t, w: kl(p_star, t / t.sum(1, keepdims=True))``; coverage: ``counts`` = per-user
    item indicators, ``fn = lambda t, w: (t > 0).sum(1) / n_items``."""
    n = counts.shape[0]
    acc = AggregateBootstrap(n, counts.shape[1], spec)
    acc.add(np.arange(n), counts)
    return acc.interval(fn)


class CoverageBootstrap:
    """Coverage (distinct listed items / ``n_candidates``) of several cells' lists on the same
    units, with intervals and paired differences: ``add(cell, idx, items)`` stores the lists
    (items ≥ 0, −1 = empty slot); :meth:`finish` streams the weights once over all cells, using
    only items listed by fewer than :data:`COMMON_ITEM` units (the others are always covered).

    Coverage can only fall in a resample (an item leaves when all its units do), so the resampled
    values sit below the estimate by the bootstrap's bias; the intervals use them centred on the
    estimate (θ̂ + percentiles of θ* − mean θ*), i.e. they show the spread, not the bias."""

    def __init__(self, n_units: int, n_cells: int, n_items: int, spec: UncertaintySpec,
                 stream: WeightStream | None = None) -> None:
        self.spec, self.n_units, self.n_cells, self.n_items = spec, n_units, n_cells, n_items
        self.stream = stream
        self.parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(n_cells)]

    def add(self, cell: int, idx: np.ndarray, items: np.ndarray) -> None:
        self.parts[cell].append((np.asarray(idx, dtype=np.int64), np.asarray(items, dtype=np.int32)))

    def _incidence(self, cell: int) -> tuple[sp.csr_matrix, int]:
        """(units × rare items) 0/1 matrix of one cell and its number of always-covered items."""
        if not self.parts[cell]:
            return sp.csr_matrix((self.n_units, 0), dtype=np.float32), 0
        idx = np.concatenate([p[0] for p in self.parts[cell]])
        items = np.concatenate([p[1] for p in self.parts[cell]]).astype(np.int64)
        srt = np.sort(items, axis=1)  # an item twice in one list counts once
        first = np.ones(srt.shape, dtype=bool)
        first[:, 1:] = srt[:, 1:] != srt[:, :-1]
        keep = first & (srt >= 0)
        rows, cols = np.repeat(idx, srt.shape[1])[keep.ravel()], srt[keep]
        listed = np.bincount(cols, minlength=self.n_items)
        rare = (listed > 0) & (listed < COMMON_ITEM)
        col_of = np.cumsum(rare) - 1
        sel = rare[cols]
        m = sp.csr_matrix((np.ones(int(sel.sum()), dtype=np.float32), (rows[sel], col_of[cols[sel]])),
                          shape=(self.n_units, int(rare.sum())))
        return m, int((listed >= COMMON_ITEM).sum())

    def _prepare(self) -> None:
        """Stream the weights once over every cell's rare-item incidence."""
        if getattr(self, "_acc", None) is not None:
            return
        mats, self._common = zip(*(self._incidence(c) for c in range(self.n_cells)))
        widths = np.cumsum([0, *(m.shape[1] for m in mats)])
        self._cols = [slice(int(widths[c]), int(widths[c + 1])) for c in range(self.n_cells)]
        self._acc = AggregateBootstrap(self.n_units, int(widths[-1]), self.spec, self.stream)
        big = sp.hstack(mats, format="csr") if widths[-1] else sp.csr_matrix((self.n_units, 0), dtype=np.float32)
        step = UNIT_BLOCK * 8
        for s in range(0, self.n_units, step):
            self._acc.add(np.arange(s, min(s + step, self.n_units)), big[s : s + step])

    def _fn(self, cells: Sequence[int], n_cand: int) -> Callable:
        """Mean coverage over ``cells`` (e.g. the repeats of a stochastic cell), from all columns."""
        def fn(t, w):
            return np.mean([((t[:, self._cols[c]] > 0).sum(axis=1) + self._common[c]) / n_cand for c in cells], axis=0)
        return fn

    def interval(self, cells: Sequence[int], n_candidates: int | None = None) -> Interval:
        self._prepare()
        return self._acc.interval(self._fn(cells, n_candidates or self.n_items), centre=True)

    def paired(self, cells: Sequence[int], base_cells: Sequence[int], n_candidates: int | None = None) -> Interval:
        self._prepare()
        n_cand = n_candidates or self.n_items
        return self._acc.paired(self._fn(cells, n_cand), slice(None), slice(None), self._fn(base_cells, n_cand), centre=True)

    def finish(self, baseline: int | None = None, n_candidates: int | None = None) -> tuple[Interval, Interval | None]:
        """Coverage intervals of every cell and (``baseline``) each cell's paired difference to it."""
        ivs = [self.interval([c], n_candidates) for c in range(self.n_cells)]
        diffs = None if baseline is None else [self.paired([c], [baseline], n_candidates) for c in range(self.n_cells)]
        return _stack(ivs), (None if diffs is None else _stack(diffs))


def _stack(ivs: Sequence[Interval]) -> Interval:
    def cat(f):
        parts = [getattr(iv, f) for iv in ivs]
        return None if parts[0] is None else (np.hstack(parts) if f == "star" else np.concatenate(parts))
    return Interval(*(cat(f) for f in ("estimate", "lo", "hi", "p", "star")))


# --------------------------------------------------------------------------- a results table's cells
def lambda_zero_baseline(cells: Sequence[tuple[str, float]]) -> dict:
    """(selection, λ) cells -> the same selection at λ = 0 (None where the grid has no λ = 0)."""
    return {c: ((c[0], 0.0) if (c[0], 0.0) in cells else None) for c in cells}


class CellMeans:
    """Mean metrics of several cells (λ values, methods) on the same units: intervals of each and
    paired differences to each cell's baseline (``baseline[cell]``, None for none), one weight
    stream for all. ``add(idx, {cell: (units, metrics) values})``; :meth:`columns` -> table cells."""

    def __init__(self, cells: Sequence, metrics: Sequence[str], n_units: int, spec: UncertaintySpec,
                 baseline: Mapping | None = None, stream: WeightStream | None = None) -> None:
        self.cells, self.metrics = list(cells), tuple(metrics)
        m = len(self.metrics)
        base = baseline or {}
        self._pair: dict = {}
        pairs = []
        for i, c in enumerate(self.cells):
            b = base.get(c)
            if b is not None and b in self.cells and b != c:
                for k in range(m):
                    self._pair[(c, k)] = len(pairs)
                    pairs.append((i * m + k, self.cells.index(b) * m + k))
        self.acc = MeanBootstrap(n_units, len(self.cells) * m, spec, pairs, stream)
        self._is_base = {c: base.get(c) == c for c in self.cells}
        self._done: tuple | None = None

    def add(self, idx: np.ndarray, values: Mapping) -> None:
        self.acc.add(idx, np.hstack([np.asarray(values[c], dtype=np.float64).reshape(len(idx), -1) for c in self.cells]))

    def columns(self, cell) -> dict[str, Any]:
        if self._done is None:
            self._done = (self.acc.means(), self.acc.differences() if self._pair else None)
        means, diffs = self._done
        i, out = self.cells.index(cell), {}
        for k, name in enumerate(self.metrics):
            j = self._pair.get((cell, k))
            out.update(interval_columns(name, means, i * len(self.metrics) + k, None if j is None else diffs, j or 0,
                                        is_baseline=self._is_base.get(cell, False)))
        return out


class CellAggregates:
    """One aggregate metric ``fn(totals, weight_sums)`` of per-unit count vectors (``width``
    columns) for several cells, each possibly repeated (stochastic selection: the cell's value is
    the mean over its repeats), with paired differences to ``baseline``: ``add(idx, {(cell, r): counts})``."""

    def __init__(self, keys: Sequence[tuple], width: int, n_units: int, spec: UncertaintySpec, fn: Callable,
                 name: str, baseline: Mapping | None = None, stream: WeightStream | None = None) -> None:
        self.keys, self.width, self.fn, self.name = list(keys), width, fn, name
        self.baseline = baseline or {}
        self.acc = AggregateBootstrap(n_units, len(self.keys) * width, spec, stream)

    def add(self, idx: np.ndarray, counts: Mapping) -> None:
        self.acc.add(idx, np.hstack([np.asarray(counts[k], dtype=np.float64).reshape(len(idx), self.width) for k in self.keys]))

    def _cell_fn(self, cell) -> Callable:
        cols = [slice(i * self.width, (i + 1) * self.width) for i, k in enumerate(self.keys) if k[0] == cell]

        def fn(t, w):
            return np.mean([self.fn(t[:, c], w) for c in cols], axis=0)
        return fn

    def columns(self, cell) -> dict[str, Any]:
        iv = self.acc.interval(self._cell_fn(cell))
        b = self.baseline.get(cell)
        if b == cell:
            return interval_columns(self.name, iv, 0, is_baseline=True)
        d = None if b is None else self.acc.paired(self._cell_fn(cell), slice(None), slice(None), self._cell_fn(b))
        return interval_columns(self.name, iv, 0, d, 0)


# --------------------------------------------------------------------------- multiple testing
def holm_adjust(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stay NaN and do not count as tests).

    >>> holm_adjust([0.01, 0.04, 0.03, 0.005]).round(3).tolist()
    [0.03, 0.06, 0.06, 0.02]
    """
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adj
    return out


def add_holm_columns(table, prefix: str = "p_"):
    """``table`` (polars) with a ``<p column>_holm`` next to every ``p_*`` column: Holm's correction
    across all the run's cells and metrics together (every p-value of the table is one test)."""
    import polars as pl

    cols = [c for c in table.columns if c.startswith(prefix) and not c.endswith("_holm")]
    if not cols or table.height == 0:
        return table
    flat = np.concatenate([table[c].cast(pl.Float64).fill_null(np.nan).to_numpy() for c in cols])
    adj = holm_adjust(flat).reshape(len(cols), table.height)
    return table.with_columns([pl.Series(f"{c}_holm", a, dtype=pl.Float64).fill_nan(None) for c, a in zip(cols, adj)])


def interval_columns(name: str, iv: Interval, k: int = 0, delta: Interval | None = None, dk: int = 0,
                     is_baseline: bool = False) -> dict[str, Any]:
    """Table cells ``<name>_lo/_hi``, the bootstrap replicates ``<name>_star`` (the B resampled
    values, for :func:`split_replicates`) and, with ``delta``, ``delta_<name>``, ``delta_<name>_lo/_hi``,
    ``p_<name>``; the baseline's own row (``is_baseline``) has delta 0 and no p-value (no test)."""
    def f(v):
        return None if v is None or not np.isfinite(v) else float(v)

    out = {f"{name}_lo": f(iv.lo[k]), f"{name}_hi": f(iv.hi[k])}
    if iv.star is not None:
        out[f"{name}{REPLICATES_SUFFIX}"] = np.asarray(iv.star[:, k], dtype=np.float32)
    if is_baseline and f(iv.estimate[k]) is not None:
        out.update({f"delta_{name}": 0.0, f"delta_{name}_lo": 0.0, f"delta_{name}_hi": 0.0, f"p_{name}": None})
    elif delta is not None:
        out.update({f"delta_{name}": f(delta.estimate[dk]), f"delta_{name}_lo": f(delta.lo[dk]),
                    f"delta_{name}_hi": f(delta.hi[dk]), f"p_{name}": f(delta.p[dk])})
    return out


#: The data-summary key of :func:`units_digest` (``recalign compare`` pairs two runs only when equal).
UNITS_DIGEST = "units_digest"


def units_digest(*arrays) -> str:
    """A digest of the evaluated units in their order (ids, offsets: the arrays that fix which unit
    sits at which position), so that two runs whose resamples pair can be told apart from two runs
    of equal size on other units. BLAKE2b over each array's dtype, shape and bytes (an absent
    array, None, adds a marker, so the arrays after it keep their places).

    >>> units_digest(np.arange(3)) == units_digest(np.arange(3)), units_digest(np.arange(3)) == units_digest(np.arange(1, 4))
    (True, False)
    """
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


#: The suffix of a column that holds a cell's bootstrap replicates: the metric on each of the B resamples.
REPLICATES_SUFFIX = "_star"


@dataclass(frozen=True)
class Replicates:
    """A run's bootstrap replicates, kept so that another run can be compared with it **pairwise**.

    Row ``i`` of ``table`` belongs to row ``i`` of the run's results; its column ``<m>_star`` holds
    metric ``m`` on each of the B resamples (float32; null where the row has no interval). The
    weights of a resample depend only on ``spec`` (seed, B, weights) and the unit's position
    (module docstring), so two runs that evaluated the same units in the same order under the same
    spec were resampled identically, and ``θ*_B,b − θ*_A,b`` is the paired bootstrap of their
    difference (:func:`compare_results`). About B × 4 bytes per metric and row: 1.8 MB for the
    AlignFlow paper grid (56 rows × 8 metrics at B = 1,000)."""

    spec: dict
    table: Any  # polars DataFrame, one row per results row

    def pairs_with(self, other: "Replicates") -> str | None:
        """None when the two runs were resampled alike, else why not (for the caller's message)."""
        keys = ("seed", "resamples", "weights")
        differ = [f"{k} {self.spec.get(k)!r} vs {other.spec.get(k)!r}" for k in keys if self.spec.get(k) != other.spec.get(k)]
        return "their uncertainty settings differ (" + ", ".join(differ) + ")" if differ else None


def split_replicates(table, spec: UncertaintySpec):
    """``(table without its <m>_star columns, Replicates or None)``: the run's final results and,
    when its rows carry replicates (intervals on), the row-aligned :class:`Replicates`."""
    cols = [c for c in table.columns if c.endswith(REPLICATES_SUFFIX)]
    if not cols or not spec.enabled or all(table[c].null_count() == table.height for c in cols):
        return table.drop(cols), None
    return table.drop(cols), Replicates(spec.as_dict(), table.select(cols))


def _replicate_matrix(rep: "Replicates", col: str, rows: np.ndarray) -> np.ndarray:
    """(len(rows), B) float64 replicates of column ``col`` at ``rows`` (NaN where a row has none)."""
    import polars as pl

    b = int(rep.spec["resamples"])
    out = np.full((len(rows), b), np.nan)
    picked = rep.table[col].gather(rows)
    good = (picked.list.len() == b).fill_null(False).to_numpy()
    if good.any():
        out[good] = picked.filter(pl.Series(good)).explode().cast(pl.Float64).fill_null(np.nan).to_numpy().reshape(-1, b)
    return out


def paired_replicate_difference(delta_hat: np.ndarray, star_a: np.ndarray, star_b: np.ndarray, level: float
                                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lo, hi, p)`` of B − A per row from both runs' replicates on the same resamples (rows × B):
    δ*_b = θ*_B,b − θ*_A,b; the interval is δ̂ + the percentiles of δ* − mean δ* (centred, as the
    aggregates' own intervals: the coverage bias cancels only in part between two runs) and p the
    normal test :func:`normal_p` against sd(δ*).

    >>> lo, hi, p = paired_replicate_difference(np.array([0.5]), np.array([[0.0, 1.0, 2.0]]),
    ...                                         np.array([[0.5, 1.5, 2.5]]), 0.95)
    >>> float(lo[0]), float(hi[0]), float(p[0])  # B moves every resample by 0.5: no spread
    (0.5, 0.5, 0.0)
    """
    import warnings

    d = np.where(np.isfinite(star_b - star_a), star_b - star_a, np.nan)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # a row without replicates: NaN bounds
        centred = d - np.nanmean(d, axis=1, keepdims=True) + delta_hat[:, None]
        lo, hi = np.nanpercentile(centred, [50 * (1 - level), 50 * (1 + level)], axis=1)
    return lo, hi, normal_p(delta_hat, d.T)


def uncertainty_columns(metrics: Sequence[str]) -> tuple[str, ...]:
    """The column names :func:`interval_columns` writes for ``metrics``."""
    return (*(f"{m}_{s}" for m in metrics for s in ("lo", "hi")),
            *(c for m in metrics for c in (f"delta_{m}", f"delta_{m}_lo", f"delta_{m}_hi", f"p_{m}")))


# --------------------------------------------------------------------------- training seeds
def aggregate_over_seeds(table, keys: Sequence[str], metrics: Sequence[str], level: float = 0.95,
                         seed_column: str = "seed"):
    """One row per ``keys`` group of a results table that has one row per training seed: for each
    metric its ``<m>_mean``, ``<m>_sd`` (sample sd, n − 1) and the Student-t interval of the mean
    over seeds ``<m>_seed_lo/_hi`` (mean ± t_{n−1, (1+level)/2} · sd / √n), plus ``n_seeds``.

    The unit resampled by the bootstrap columns is a user or an impression of one trained model;
    this is the spread over retrainings, which the bootstrap cannot see. With one seed the sd and
    the interval are null (no spread can be estimated from one model).

    >>> import polars as pl
    >>> t = pl.DataFrame({"method": ["a"] * 3, "seed": [1, 2, 3], "recall": [0.1, 0.2, 0.3]})
    >>> r = aggregate_over_seeds(t, ["method"], ["recall"]).row(0, named=True)
    >>> round(r["recall_mean"], 6), round(r["recall_sd"], 6), round(r["recall_seed_hi"], 4)
    (0.2, 0.1, 0.4484)
    """
    import polars as pl
    from scipy import stats as sst

    missing = [c for c in (*keys, seed_column, *metrics) if c not in table.columns]
    if missing:
        raise ValueError(f"aggregate_over_seeds: the results table has no column {missing[0]!r}")
    exprs = [pl.col(seed_column).n_unique().alias("n_seeds")]
    for m in metrics:
        exprs += [pl.col(m).mean().alias(f"{m}_mean"), pl.col(m).std(ddof=1).alias(f"{m}_sd"),
                  pl.col(m).count().alias(f"_{m}_n")]
    out = table.group_by(list(keys), maintain_order=True).agg(exprs)
    cols = []
    for m in metrics:
        n = out[f"_{m}_n"].to_numpy().astype(np.float64)
        sd = out[f"{m}_sd"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        mean = out[f"{m}_mean"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.where(n > 1, sst.t.ppf((1 + level) / 2, np.maximum(n - 1, 1)), np.nan)
            half = t * sd / np.sqrt(n)
        cols += [pl.Series(f"{m}_seed_lo", mean - half).fill_nan(None), pl.Series(f"{m}_seed_hi", mean + half).fill_nan(None)]
    return out.with_columns(cols).drop([f"_{m}_n" for m in metrics])


# --------------------------------------------------------------------------- two runs
def is_interval_column(name: str) -> bool:
    """Whether a column is an interval, a difference, a p-value or a seed summary (not a metric)."""
    return name.startswith(("delta_", "p_")) or name.endswith(("_lo", "_hi", "_sd", "_holm", REPLICATES_SUFFIX))


def compare_results(a, b, keys: Sequence[str], metrics: Sequence[str] | None = None, level: float = 0.95,
                    replicates: "tuple[Replicates, Replicates] | None" = None):
    """Run B − run A for every cell (a row identified by ``keys``) both results tables hold.

    Per metric ``m``: ``<m>_a``, ``<m>_b``, ``<m>_delta`` = b − a and, where both runs have the
    bootstrap interval ``<m>_lo/_hi``, ``<m>_delta_lo/_hi``, the two-sided ``<m>_delta_p`` (plus
    ``<m>_delta_p_holm``: Holm's correction over every p-value of the table) and
    ``<m>_delta_paired``, which says how the interval was made:

    * **paired** (true): with ``replicates`` — both runs' :class:`Replicates`, drawn under the same
      spec on the same units (the caller checks the units, :meth:`Replicates.pairs_with` the
      spec) — the difference is resampled pairwise, δ*_b = θ*_B,b − θ*_A,b on the same resample b
      (:func:`paired_replicate_difference`). On the same units this is the interval of the
      difference itself: narrower than the unpaired one when the runs' errors are correlated.
    * **unpaired** (false; a row or metric without replicates): the normal approximation from the
      two runs' intervals, se = (hi − lo) / (2 z) with z = Φ⁻¹((1 + level)/2) and
      δ ± z·√(se_a² + se_b²). ``level`` must be the runs' ``uncertainty.level``. On the same units
      this is conservative (it ignores the positive correlation of the two runs' errors).

    Cells in one run only are left out. ``metrics`` default: every float column both tables share
    that is not a key, an interval, a difference, a p-value or an sd.

    >>> import polars as pl
    >>> a = pl.DataFrame({"method": ["x"], "auc": [0.60], "auc_lo": [0.58], "auc_hi": [0.62]})
    >>> b = pl.DataFrame({"method": ["x"], "auc": [0.63], "auc_lo": [0.61], "auc_hi": [0.65]})
    >>> r = compare_results(a, b, ["method"]).row(0, named=True)
    >>> round(r["auc_delta"], 4), round(r["auc_delta_lo"], 4), round(r["auc_delta_hi"], 4)
    (0.03, 0.0017, 0.0583)
    """
    import polars as pl

    if not 0.0 < level < 1.0:
        raise ValueError(f"compare_results: level must be in (0, 1), got {level!r}")
    keys = list(keys)
    for name, t in (("A", a), ("B", b)):
        missing = [k for k in keys if k not in t.columns]
        if missing:
            raise ValueError(f"compare_results: run {name}'s results have no key column {missing[0]!r}")
    for name, t in (("A", a), ("B", b)):
        dup = t.select(keys).is_duplicated()
        if dup.any():
            row = t.filter(dup).select(keys).row(0, named=True)
            raise ValueError(f"compare_results: the keys {keys} do not identify one row of run {name}'s results "
                             f"(several rows have {row}); add the key column that tells them apart")
    if metrics is None:
        metrics = [c for c in a.columns if c in b.columns and c not in keys and not is_interval_column(c)
                   and a.schema[c].is_float() and b.schema[c].is_float()]
    with_iv = [m for m in metrics if all(f"{m}_{s}" in t.columns for s in ("lo", "hi") for t in (a, b))]
    wanted = keys + [c for m in metrics for c in (m, *((f"{m}_lo", f"{m}_hi") if m in with_iv else ()))]
    j = a.select(wanted).with_row_index("__row").join(b.select(wanted).with_row_index("__row"), on=keys, how="inner",
                                                      suffix="__b", nulls_equal=True, maintain_order="left")
    rows_a, rows_b = j["__row"].to_numpy(), j["__row__b"].to_numpy()
    z = float(ndtri((1 + level) / 2))
    out = [j[k] for k in keys]
    for m in metrics:
        va, vb = (j[c].cast(pl.Float64).fill_null(np.nan).to_numpy() for c in (m, f"{m}__b"))
        d = vb - va
        series = {f"{m}_a": va, f"{m}_b": vb, f"{m}_delta": d}
        if m in with_iv:
            lo_a, hi_a, lo_b, hi_b = (j[c].cast(pl.Float64).fill_null(np.nan).to_numpy()
                                      for c in (f"{m}_lo", f"{m}_hi", f"{m}_lo__b", f"{m}_hi__b"))
            se = np.sqrt(((hi_a - lo_a) / (2 * z)) ** 2 + ((hi_b - lo_b) / (2 * z)) ** 2)
            with np.errstate(invalid="ignore", divide="ignore"):
                p = np.where(se > 0, 2 * ndtr(-np.abs(d) / se), np.where(d == 0, 1.0, 0.0))
            p = np.where(np.isfinite(se) & np.isfinite(d), p, np.nan)
            lo, hi, paired = d - z * se, d + z * se, np.zeros(len(d), dtype=bool)
            col = f"{m}{REPLICATES_SUFFIX}"
            if replicates is not None and all(col in r.table.columns for r in replicates):
                star_a, star_b = _replicate_matrix(replicates[0], col, rows_a), _replicate_matrix(replicates[1], col, rows_b)
                paired = np.isfinite(star_a).any(axis=1) & np.isfinite(star_b).any(axis=1) & np.isfinite(d)
                plo, phi, pp = paired_replicate_difference(d, star_a, star_b, level)
                lo, hi, p = np.where(paired, plo, lo), np.where(paired, phi, hi), np.where(paired, pp, p)
            series.update({f"{m}_delta_lo": lo, f"{m}_delta_hi": hi, f"{m}_delta_p": p})
        out += [pl.Series(name, v, dtype=pl.Float64).fill_nan(None) for name, v in series.items()]
        if m in with_iv:
            out.append(pl.Series(f"{m}_delta_paired", paired, dtype=pl.Boolean))
    return _holm_of_deltas(pl.DataFrame(out))


def _holm_of_deltas(table):
    """``<m>_delta_p_holm`` next to every ``<m>_delta_p``: Holm over all the table's p-values."""
    import polars as pl

    cols = [c for c in table.columns if c.endswith("_delta_p")]
    if not cols or table.height == 0:
        return table
    flat = np.concatenate([table[c].fill_null(np.nan).to_numpy() for c in cols])
    adj = holm_adjust(flat).reshape(len(cols), table.height)
    return table.with_columns([pl.Series(f"{c}_holm", x, dtype=pl.Float64).fill_nan(None) for c, x in zip(cols, adj)])


# --------------------------------------------------------------------------- table text (cards, reports)
#: The mark of a difference that survives Holm's correction.
HOLM_MARK = "✓"


def number_text(v: float | None) -> str:
    """A table cell's number: 3 significant digits, a true minus sign, "–" for none."""
    if v is None or v != v:
        return "–"
    return f"{v:.3g}".replace("-", "−") if v != 0 else "0"


def row_value(row: dict, name: str) -> float | None:
    """``row[name]`` as a float, None where it is missing or NaN."""
    v = row.get(name)
    return None if v is None or v != v else float(v)


def interval_cell(row: dict, name: str) -> str:
    """``"0.31 [0.29, 0.33]"``: the row's ``name`` and its interval ``<name>_lo``, ``<name>_hi``
    (the value alone where a bound is missing; "–" without a value). ``delta_<m>`` gives the difference."""
    v, lo, hi = row_value(row, name), row_value(row, f"{name}_lo"), row_value(row, f"{name}_hi")
    if v is None:
        return "–"
    return number_text(v) if lo is None or hi is None else f"{number_text(v)} [{number_text(lo)}, {number_text(hi)}]"


def holm_mark(text: str, p_holm: float | None, alpha: float = 0.05) -> str:
    """``text`` with :data:`HOLM_MARK` when the Holm-adjusted p-value is below ``alpha``."""
    return f"{text} {HOLM_MARK}" if p_holm is not None and p_holm < alpha else text


def n_tests(results) -> int:
    """How many p-values the run's Holm correction counted (every non-null ``p_*`` cell of the polars ``results``)."""
    return sum(results[c].count() for c in results.columns if c.startswith("p_") and not c.endswith("_holm"))
