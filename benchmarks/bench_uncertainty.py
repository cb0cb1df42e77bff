"""Cost of the bootstrap intervals (issue #13, steps/uncertainty.py) at the flows' paper sizes.

    .venv/bin/python benchmarks/bench_uncertainty.py align   # AlignFlow paper grid: 200k BA rows, 1M impressions
    .venv/bin/python benchmarks/bench_uncertainty.py tail    # TailFlow at ML-20M test size: 10k users × 20,108 items
    .venv/bin/python benchmarks/bench_uncertainty.py align --resamples 1000 --workers 2

The intervals' collectors of every task are run exactly as the evaluation runs them (the same
classes, the same chunks: BA rows in 20k chunks, impressions in 100k batches), fed per-unit values
of the real shapes (the values are random: the cost does not depend on them). The per-unit values
are made before the clock starts, so the figures are the intervals' own cost, which is what the
evaluation adds. CPU seconds (process time) are reported next to wall seconds because the machine
is shared; the flow's wall-time share assumes the tasks' extra CPU spreads over ``--workers``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from steps.metrics import smoothed_kl  # noqa: E402
from steps.uncertainty import CellAggregates, CellMeans, CoverageBootstrap, UncertaintySpec, lambda_zero_baseline  # noqa: E402

LAMBDAS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99)
#: the AlignFlow paper grid's wall time (BENCHMARKS.md, `bench_align.py grid`, --max-workers 2)
ALIGN_FLOW_WALL_S = 313.0
#: TailFlow's cheapest method task at ML-20M size (BENCHMARKS.md: EASE 268 s + validation scoring 22 s)
TAIL_EASE_TASK_S = 290.0


def _clock():
    return time.perf_counter(), time.process_time()


def _since(t):
    return round(time.perf_counter() - t[0], 2), round(time.process_time() - t[1], 2)


def align_task(method: str, spec: UncertaintySpec, ba_rows: int, impressions: int, slots: int = 11,
               candidates: int = 250, top_n: int = 10, repeats: int = 3) -> dict:
    """One (target, method) task's collectors: BA (KL@N, kl_all, user KL, coverage) + accuracy."""
    sels = ("det", "stoch") if method == "nails" else ("det",)
    cells = [(s, lam) for s in sels for lam in LAMBDAS]
    n_rep = {c: (repeats if c[0] == "stoch" else 1) for c in cells}
    keys = [(c, r) for c in cells for r in range(n_rep[c])]
    base = lambda_zero_baseline(cells)
    rng = np.random.default_rng(0)
    chunk = 20_000
    counts = rng.multinomial(top_n, np.full(slots, 1 / slots), size=chunk).astype(np.float64)
    p_star = np.full(slots, 1 / slots)
    kl_vals = rng.random(chunk)
    tops = np.argsort(rng.random((chunk, candidates)), axis=1)[:, :top_n].astype(np.int16)
    masses = rng.dirichlet(np.ones(slots), size=chunk)

    def kl_mix(t, w):
        return smoothed_kl(p_star, t / t.sum(axis=1, keepdims=True), 1e-4)

    t = _clock()
    kl_at_n = CellAggregates(keys, slots, ba_rows, spec, kl_mix, "kl_at_n", base)
    user = CellMeans(cells, ("user_kl_mean",), ba_rows, spec, base)
    cov = CoverageBootstrap(ba_rows, len(keys), candidates, spec)
    kl_all = (CellAggregates([(("det", lam), 0) for lam in LAMBDAS], slots, ba_rows, spec,
                             lambda t, w: smoothed_kl(p_star, t / w[:, None], 1e-4), "kl_all", base)
              if method == "nails" else None)
    for s in range(0, ba_rows, chunk):
        idx = np.arange(s, min(s + chunk, ba_rows))
        c = len(idx)
        kl_at_n.add(idx, {k: counts[:c] for k in keys})
        user.add(idx, {cell: kl_vals[:c] for cell in cells})
        for i in range(len(keys)):
            cov.add(i, idx, tops[:c])
        if kl_all is not None:
            kl_all.add(idx, {(("det", lam), 0): masses[:c] for lam in LAMBDAS})
    for cell in cells:
        kl_at_n.columns(cell), user.columns(cell)
        if kl_all is not None:
            kl_all.columns(("det", cell[1]))
        mine = [i for i, k in enumerate(keys) if k[0] == cell]
        cov.interval(mine)
        if base[cell] != cell:
            cov.paired(mine, [i for i, k in enumerate(keys) if k[0] == base[cell]])
    ba = _since(t)

    batch = 100_000
    labelled = np.sort(rng.choice(batch, int(batch * 0.9), replace=False))  # ~90 % of impressions have a click
    acc_vals = rng.random((len(labelled), 4))
    t = _clock()
    acc = CellMeans(cells, ("auc", "mrr", "ndcg_at_5", "ndcg_at_10"), impressions, spec, base)
    for s in range(0, impressions, batch):
        rows = labelled[labelled < impressions - s]
        acc.add(s + rows, {cell: acc_vals[: len(rows)] for cell in cells})
    for cell in cells:
        acc.columns(cell)
    imp = _since(t)
    return {"method": method, "cells": len(cells), "ba_wall_s": ba[0], "ba_cpu_s": ba[1],
            "impressions_wall_s": imp[0], "impressions_cpu_s": imp[1],
            "wall_s": round(ba[0] + imp[0], 2), "cpu_s": round(ba[1] + imp[1], 2)}


def bench_align(args) -> dict:
    spec = UncertaintySpec(resamples=args.resamples)
    tasks = []
    for target in ("Editorial", "Uniform"):
        for method in ("nails", "steck", "nails_steck"):
            r = align_task(method, spec, args.ba_rows, args.impressions)
            r["target"] = target
            tasks.append(r)
            print(json.dumps(r), flush=True)
    cpu = sum(r["cpu_s"] for r in tasks)
    wall = sum(r["wall_s"] for r in tasks)
    return {"what": "AlignFlow paper grid", "resamples": args.resamples, "ba_rows": args.ba_rows,
            "impressions": args.impressions, "tasks": len(tasks), "sum_task_wall_s": round(wall, 1),
            "sum_task_cpu_s": round(cpu, 1), "added_flow_wall_s": round(wall / args.workers, 1),
            "flow_wall_s": ALIGN_FLOW_WALL_S, "overhead_pct_wall": round(100 * wall / args.workers / ALIGN_FLOW_WALL_S, 1),
            # the flow's wall time is a quiet machine's, where a task's wall ≈ its CPU: compare like with like
            "overhead_pct_cpu": round(100 * cpu / args.workers / ALIGN_FLOW_WALL_S, 1),
            "load": os.getloadavg()}


def bench_tail(args) -> dict:
    """One method task at ML-20M test size: intervals of both splits' metrics + deltas to EASE on test."""
    from steps.tail.config import Evaluation
    from steps.tail.evaluate import UserValues, baseline_deltas, list_intervals

    spec = UncertaintySpec(resamples=args.resamples)
    ev = Evaluation(ks=(20, 50, 100), buckets=5)
    rng = np.random.default_rng(0)
    n_users, n_items = args.users, args.items
    pop = rng.zipf(1.3, n_items).astype(float)
    pop /= pop.sum()

    def values():
        lists = np.stack([rng.choice(n_items, 100, replace=False, p=pop) for _ in range(n_users)]).astype(np.int32)
        names = tuple(f"{m}_at_{k}" for k in ev.ks for m in ("recall", "ndcg", "hit_rate"))
        return UserValues(np.arange(n_users), names, rng.random((n_users, len(names))), lists, n_users)

    a, b = values(), values()
    t = _clock()
    for _split in ("validation", "test"):
        list_intervals(a, n_items, ev, spec)
    one = _since(t)
    t = _clock()
    baseline_deltas(a, b, n_items, ev, spec)
    delta = _since(t)
    wall = one[0] + delta[0]
    return {"what": "TailFlow, one method task at ML-20M test size", "resamples": args.resamples, "users": n_users,
            "items": n_items, "intervals_two_splits_wall_s": one[0], "intervals_cpu_s": one[1],
            "deltas_to_ease_wall_s": delta[0], "deltas_cpu_s": delta[1], "ease_task_wall_s": TAIL_EASE_TASK_S,
            "overhead_pct_of_ease_task_wall": round(100 * wall / TAIL_EASE_TASK_S, 1),
            "overhead_pct_of_ease_task_cpu": round(100 * (one[1] + delta[1]) / TAIL_EASE_TASK_S, 1), "load": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("align", "tail"))
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--ba-rows", type=int, default=200_000)
    ap.add_argument("--impressions", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=20_108)
    args = ap.parse_args()
    out = bench_align(args) if args.what == "align" else bench_tail(args)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
