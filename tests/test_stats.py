"""steps.uncertainty: interval coverage on known answers, paired-test size and power, aggregate
metrics against explicit resamples, determinism, Holm, BCa against scipy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from steps.errors import ConfigError
from steps.metrics import smoothed_kl
from steps.seeding import rng_for
from steps.uncertainty import (
    UNIT_BLOCK,
    AggregateBootstrap,
    CoverageBootstrap,
    MeanBootstrap,
    UncertaintySpec,
    WeightStream,
    add_holm_columns,
    aggregate_interval,
    block_weights,
    compare_results,
    holm_adjust,
    interval,
    interval_columns,
    mean_interval,
    normal_p,
    paired_difference,
    split_replicates,
)

REPS = 400


def _binomial_band(rate: float, reps: int, sds: float = 3.5) -> tuple[float, float]:
    sd = np.sqrt(rate * (1 - rate) / reps)
    return rate - sds * sd, rate + sds * sd


@pytest.mark.parametrize("method", ["percentile", "bca"])
@pytest.mark.parametrize("kind", ["normal", "bernoulli"])
def test_interval_covers_truth_at_nominal_rate(kind, method):
    """400 seeded samples of 100 units: the 90 % interval holds the true mean ~90 % of the time
    (3.5 binomial standard deviations; all 400 samples bootstrapped at once as 400 columns)."""
    n, truth = 100, (2.0 if kind == "normal" else 0.3)
    rng = rng_for(7, "coverage", kind)
    x = rng.normal(truth, 1.5, (n, REPS)) if kind == "normal" else (rng.random((n, REPS)) < truth).astype(float)
    iv = mean_interval(x, UncertaintySpec(resamples=1000, level=0.9, method=method, seed=11))
    rate = float(np.mean((iv.lo <= truth) & (truth <= iv.hi)))
    lo, hi = _binomial_band(0.9, REPS)
    assert lo - 0.01 <= rate <= hi, rate  # the bootstrap is a little narrow at n = 100: 1 point of slack below


def test_mean_bootstrap_with_multinomial_weights_resamples_n_out_of_n():
    spec = UncertaintySpec(resamples=50, weights="multinomial", seed=3)
    n = 2 * UNIT_BLOCK + 17
    from steps.uncertainty import WeightStream

    stream = WeightStream(spec, n)
    total = sum(w.sum(axis=1) for _, w, _ in stream.pieces(np.arange(n)))
    assert np.all(total == n)


@pytest.mark.parametrize("test", ["normal", "bootstrap", "randomisation"])
def test_paired_test_size_under_null_and_power_under_shift(test):
    """Two methods with the same per-unit distribution: ~5 % of 400 runs reject at 0.05; a planted
    shift of 0.5 (unit sd 1 per method) on 100 paired units is found in most runs."""
    n = 100
    rng = rng_for(5, "size")
    common = rng.normal(0, 1, (n, REPS))  # a unit effect both methods share (pairing matters)
    a, b = common + rng.normal(0, 1, (n, REPS)), common + rng.normal(0, 1, (n, REPS))
    spec = UncertaintySpec(resamples=500, seed=2, test=test)
    null = paired_difference(a, b, spec)
    lo, hi = _binomial_band(0.05, REPS)
    assert lo <= float(np.mean(null.p < 0.05)) <= hi
    shifted = paired_difference(a + 0.5, b, spec)
    assert float(np.mean(shifted.p < 0.05)) > 0.85
    assert np.all(shifted.lo <= shifted.estimate) and np.all(shifted.estimate <= shifted.hi)


def test_aggregate_bootstrap_equals_recomputation_on_explicit_resamples():
    """KL@N of the aggregate mix and coverage, bootstrapped by weights, equal the same metrics
    recomputed on the explicit resamples (units repeated as often as they are drawn)."""
    spec = UncertaintySpec(resamples=40, weights="multinomial", seed=9)
    rng = rng_for(1, "agg")
    n, n_cat, n_items = 9, 3, 12
    counts = rng.integers(0, 4, (n, n_cat)).astype(float)
    counts[:, 0] += 1
    lists = rng.integers(0, n_items, (n, 3))
    p_star = np.array([0.5, 0.3, 0.2])

    def kl_fn(t, w):
        return smoothed_kl(p_star, t / t.sum(axis=1, keepdims=True), 1e-4)

    iv = aggregate_interval(kl_fn, counts, spec)
    cov = CoverageBootstrap(n, 1, n_items, spec)
    cov.add(0, np.arange(n), lists)
    cov_iv, _ = cov.finish()
    w = block_weights(spec, n, 0).astype(int)
    for b in range(spec.resamples):
        units = np.repeat(np.arange(n), w[b])
        mix = counts[units].sum(axis=0)
        assert iv.star[b, 0] == pytest.approx(float(smoothed_kl(p_star, mix / mix.sum(), 1e-4)), rel=1e-5)
        assert cov_iv.star[b, 0] == pytest.approx(len(np.unique(lists[units])) / n_items)
    assert iv.estimate[0] == pytest.approx(float(smoothed_kl(p_star, counts.sum(0) / counts.sum(), 1e-4)))
    assert cov_iv.estimate[0] == len(np.unique(lists)) / n_items


def test_same_seed_same_intervals_and_chunking_does_not_matter():
    rng = rng_for(3, "det")
    x = rng.exponential(1.0, (2 * UNIT_BLOCK + 5, 2))
    spec = UncertaintySpec(resamples=100, seed=42)
    one, two = mean_interval(x, spec), mean_interval(x, spec)
    np.testing.assert_array_equal(one.lo, two.lo)
    np.testing.assert_array_equal(one.hi, two.hi)
    acc = MeanBootstrap(len(x), 2, spec)
    for s in range(0, len(x), 5000):  # chunks that do not line up with the weight blocks
        acc.add(np.arange(s, min(s + 5000, len(x))), x[s : s + 5000])
    chunked = acc.means()
    np.testing.assert_allclose(chunked.lo, one.lo, rtol=1e-6)
    np.testing.assert_allclose(chunked.hi, one.hi, rtol=1e-6)
    other = mean_interval(x, UncertaintySpec(resamples=100, seed=43))
    assert not np.array_equal(other.lo, one.lo)


def test_collectors_sharing_one_weight_stream_give_the_intervals_of_their_own_streams():
    """Several collectors of the same units read one stream (each block made once, the last few
    kept): their intervals, differences and randomisation p-values equal those of separate streams,
    whatever order they ask for the blocks in; a stream of other units is refused."""
    rng = rng_for(4, "shared")
    n = 3 * UNIT_BLOCK + 11
    x, counts = rng.normal(0.0, 1.0, (n, 4)), rng.poisson(2.0, (n, 3)).astype(float)
    spec = UncertaintySpec(resamples=60, seed=5, test="randomisation")
    fn = lambda t, w: t[:, 0] / t.sum(axis=1)  # noqa: E731

    def collectors(stream):
        means = MeanBootstrap(n, 4, spec, pairs=[(0, 1), (2, 3)], stream=stream)
        agg = AggregateBootstrap(n, 3, spec, stream=stream)
        for s in range(0, n, 7000):
            means.add(np.arange(s, min(s + 7000, n)), x[s : s + 7000])
        agg.add(np.arange(n), counts)  # all blocks again, after the means asked for them
        return means.means(), means.differences(), agg.interval(fn)

    shared = WeightStream(spec, n)
    for own, common in zip(collectors(None), collectors(shared)):
        for f in ("lo", "hi", "p", "star"):
            if getattr(own, f) is not None:
                np.testing.assert_array_equal(getattr(common, f), getattr(own, f), err_msg=f)
    assert len(shared._cache) <= WeightStream.KEEP
    with pytest.raises(ValueError, match="cannot weight"):
        MeanBootstrap(n + 1, 1, spec, stream=shared)


def test_holm_against_a_hand_checked_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(holm_adjust([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    out = holm_adjust([0.5, np.nan, 0.01])
    assert np.isnan(out[1]) and out.tolist()[::2] == [0.5, 0.02]
    import polars as pl

    t = add_holm_columns(pl.DataFrame({"p_auc": [0.01, None], "p_mrr": [0.04, 0.03], "auc": [0.5, 0.6]}))
    assert t["p_auc_holm"].to_list() == [pytest.approx(0.03), None]
    assert t["p_mrr_holm"].to_list() == [pytest.approx(0.06), pytest.approx(0.06)]


def test_bca_matches_scipy_on_a_skewed_sample():
    x = rng_for(4, "skew").exponential(1.0, 60)
    ref = scipy.stats.bootstrap((x,), np.mean, n_resamples=20000, method="BCa", confidence_level=0.95,
                                random_state=np.random.default_rng(0)).confidence_interval
    iv = mean_interval(x, UncertaintySpec(resamples=20000, seed=8, method="bca"))
    width = ref.high - ref.low
    assert abs(iv.lo[0] - ref.low) < 0.05 * width and abs(iv.hi[0] - ref.high) < 0.05 * width
    pct = mean_interval(x, UncertaintySpec(resamples=20000, seed=8, method="percentile"))
    assert iv.hi[0] > pct.hi[0]  # right skew: BCa moves the interval up


def test_bca_acceleration_of_an_aggregate_uses_the_jackknife():
    """For a mean written as an aggregate, the grouped jackknife with one unit per group is the
    ordinary jackknife: the BCa bounds equal those of the mean path on the same weights."""
    x = rng_for(6, "agg-mean").exponential(1.0, 80)
    spec = UncertaintySpec(resamples=2000, seed=1)
    acc = AggregateBootstrap(len(x), 1, spec)
    acc.add(np.arange(len(x)), x[:, None])
    agg = acc.interval(lambda t, w: t[:, 0] / w)
    direct = mean_interval(x, spec)
    np.testing.assert_allclose([agg.lo[0], agg.hi[0]], [direct.lo[0], direct.hi[0]], rtol=1e-5)


def test_percentile_hand_check():
    lo, hi = interval(np.array([0.25]), np.array([[0.0], [0.5]]), np.zeros(1), UncertaintySpec(method="percentile"))
    assert (lo[0], hi[0]) == pytest.approx((0.0125, 0.4875))


@pytest.mark.parametrize("raw, message", [
    ({"resamples": -1}, "uncertainty.resamples: expected an integer >= 0, got -1"),
    ({"resamples": 5}, "uncertainty.resamples: 5 resamples"),
    ({"level": 1.5}, "uncertainty.level: expected a number in (0, 1)"),
    ({"method": "basic"}, "uncertainty.method: unknown value 'basic'"),
    ({"test": "t"}, "uncertainty.test: unknown value 't'"),
    ({"B": 10}, "uncertainty: unknown key(s) ['B']"),
    ([1], "uncertainty: expected a mapping"),
])
def test_spec_validation_names_key_and_value(raw, message):
    with pytest.raises(ConfigError) as e:
        UncertaintySpec.from_dict(raw)
    assert message in str(e.value)


def test_spec_defaults_and_off():
    assert UncertaintySpec.from_dict(None).resamples == 1000
    assert not UncertaintySpec.from_dict({"resamples": 0}).enabled
    spec = UncertaintySpec.from_dict({"resamples": 100, "level": 0.9, "method": "percentile", "seed": 1, "test": "randomisation"})
    assert UncertaintySpec.from_dict(spec.as_dict()) == spec


def test_seed_aggregate_is_the_t_interval_over_seeds():
    import polars as pl
    from scipy import stats as sst

    from steps.uncertainty import aggregate_over_seeds

    t = pl.DataFrame({"method": ["a", "a", "a", "a", "b"], "seed": [1, 2, 3, 4, 1],
                      "recall": [0.10, 0.14, 0.12, 0.16, 0.3]})
    out = aggregate_over_seeds(t, ["method"], ["recall"], level=0.9)
    a = out.row(0, named=True)
    x = np.array([0.10, 0.14, 0.12, 0.16])
    half = sst.t.ppf(0.95, 3) * x.std(ddof=1) / 2
    assert a["n_seeds"] == 4 and a["recall_mean"] == pytest.approx(0.13)
    assert a["recall_sd"] == pytest.approx(x.std(ddof=1))
    assert (a["recall_seed_lo"], a["recall_seed_hi"]) == pytest.approx((0.13 - half, 0.13 + half))
    b = out.row(1, named=True)  # one seed: no spread can be estimated
    assert b["n_seeds"] == 1 and b["recall_sd"] is None and b["recall_seed_lo"] is None
    with pytest.raises(ValueError, match="no column 'ndcg'"):
        aggregate_over_seeds(t, ["method"], ["ndcg"])


def test_coverage_interval_contains_the_estimate_when_resamples_sit_on_one_side():
    """Coverage 1.0 where a few resamples miss an item: the (centred) interval still holds 1.0."""
    spec = UncertaintySpec(resamples=200, seed=3)
    n, n_items = 400, 50
    lists = np.tile(np.arange(10), (n, 1)) % n_items
    lists[:, 0] = np.arange(n) % n_items  # items 10..49 each listed by 8 units: rarely all dropped
    lists[0, 1] = 49
    cov = CoverageBootstrap(n, 1, n_items, spec)
    cov.add(0, np.arange(n), lists)
    iv, _ = cov.finish()
    assert iv.estimate[0] == 1.0
    assert iv.lo[0] <= 1.0 <= iv.hi[0]


def test_normal_p_reaches_below_one_over_b():
    """A large planted shift: the default p-value is far below 1/(B+1), so Holm over many cells can keep it."""
    rng = rng_for(8, "normal-p")
    a = rng.normal(0, 1, (500, 1))
    spec = UncertaintySpec(resamples=200, seed=1)
    r = paired_difference(a + 1.0, a + rng.normal(0, 0.1, (500, 1)), spec)
    assert spec.test == "normal" and r.p[0] < 1e-6


def _run_table(x: np.ndarray, counts: np.ndarray, spec: UncertaintySpec):
    """One 'run' on the units: the mean of x and the KL-like aggregate share of column 0 of counts,
    with intervals and replicates, as a results table and its Replicates."""
    n = len(x)
    means = MeanBootstrap(n, 1, spec)
    means.add(np.arange(n), x[:, None])
    agg = AggregateBootstrap(n, counts.shape[1], spec)
    agg.add(np.arange(n), counts)
    share = agg.interval(lambda t, w: t[:, 0] / t.sum(axis=1))
    m = means.means()
    row = {"cell": "c", "m": float(m.estimate[0]), "share": float(share.estimate[0]),
           **interval_columns("m", m, 0), **interval_columns("share", share, 0)}
    import polars as pl

    return split_replicates(pl.DataFrame([row]), spec)


def test_two_runs_replicates_pair_exactly_like_one_collector_of_both_runs():
    """recalign compare's paired difference of two runs on the same units equals the paired
    bootstrap of one collector that holds both runs' per-unit values (same resamples)."""
    rng = np.random.default_rng(3)
    n = 3 * UNIT_BLOCK // 2
    x_a = rng.normal(size=n)
    x_b = x_a + 0.05 + 0.3 * rng.normal(size=n)  # strongly correlated with run A
    c_a = rng.poisson(2.0, size=(n, 2)).astype(float)
    c_b = c_a + rng.poisson(0.3, size=(n, 2))
    spec = UncertaintySpec(resamples=300, seed=11)
    (ra, rep_a), (rb, rep_b) = _run_table(x_a, c_a, spec), _run_table(x_b, c_b, spec)
    assert "m_star" not in ra.columns and rep_a.table.columns == ["m_star", "share_star"] and rep_a.pairs_with(rep_b) is None
    d = compare_results(ra, rb, ["cell"], replicates=(rep_a, rep_b)).row(0, named=True)
    both = MeanBootstrap(n, 2, spec, pairs=[(1, 0)])
    both.add(np.arange(n), np.c_[x_a, x_b])
    diff = both.differences()
    centred = diff.star[:, 0] - diff.star[:, 0].mean() + diff.estimate[0]
    assert d["m_delta_paired"] and d["m_delta"] == pytest.approx(diff.estimate[0], abs=1e-12)
    assert (d["m_delta_lo"], d["m_delta_hi"]) == pytest.approx(tuple(np.percentile(centred, [2.5, 97.5])), abs=2e-6)
    assert d["m_delta_p"] == pytest.approx(float(normal_p(diff.estimate, diff.star)[0]), rel=1e-3)
    agg = AggregateBootstrap(n, 4, spec)
    agg.add(np.arange(n), np.c_[c_a, c_b])
    share = agg.paired(lambda t, w: t[:, 0] / t.sum(axis=1), slice(2, 4), slice(0, 2))
    assert d["share_delta_paired"] and d["share_delta"] == pytest.approx(share.estimate[0], abs=1e-12)
    centred = share.star[:, 0] - share.star[:, 0].mean() + share.estimate[0]
    assert (d["share_delta_lo"], d["share_delta_hi"]) == pytest.approx(tuple(np.percentile(centred, [2.5, 97.5])), abs=2e-6)
    # without replicates: the unpaired normal approximation, much wider on these correlated runs
    u = compare_results(ra, rb, ["cell"]).row(0, named=True)
    assert not u["m_delta_paired"] and u["m_delta_hi"] - u["m_delta_lo"] > 3 * (d["m_delta_hi"] - d["m_delta_lo"])
    # other resamples (another seed) do not pair
    other = _run_table(x_b, c_b, UncertaintySpec(resamples=300, seed=12))[1]
    assert rep_a.pairs_with(other) == "their uncertainty settings differ (seed 11 vs 12)"


def test_paired_compare_of_two_runs_has_the_nominal_size_and_power_on_the_same_units():
    """Two runs on the same units whose per-unit values differ by noise (plus a planted shift):
    the paired comparison rejects at about 5 % without the shift and nearly always with a shift
    the unpaired approximation finds only about half the time."""
    spec = UncertaintySpec(resamples=200, seed=5)
    n = 400

    def rejections(reps: int, shift: float, paired: bool) -> int:
        out = 0
        for r in range(reps):
            rng = rng_for(21, "paired-size", r)
            base = rng.normal(size=n)
            (ra, rep_a), (rb, rep_b) = (_run_table(base + s + 0.5 * rng.normal(size=n), np.ones((n, 2)), spec) for s in (0.0, shift))
            d = compare_results(ra, rb, ["cell"], replicates=(rep_a, rep_b) if paired else None)
            out += d["m_delta_p"][0] < 0.05
        return out

    reps = 120
    size = rejections(reps, 0.0, True)
    assert scipy.stats.binom.ppf(0.001, reps, 0.05) <= size <= scipy.stats.binom.ppf(0.999, reps, 0.05)
    assert rejections(40, 0.15, True) >= 38 and rejections(40, 0.15, False) <= 32
