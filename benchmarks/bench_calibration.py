"""Benchmark of per-user calibration of candidate lists (Steck's re-ranking toward each user's history).

    .venv/bin/python benchmarks/bench_calibration.py                       # ML-20M size, multi-genre and one-genre
    .venv/bin/python benchmarks/bench_calibration.py --users 20000          # smaller
    .venv/bin/python benchmarks/bench_calibration.py --path single          # one path only

Size defaults to the issue's: 136,677 users × 100 candidates × 20 genres (ML-20M's strong-
generalisation users and genre count), top-10, 7 λ, targets = each user's history mix. Items:
20,108, with 1–4 genres each (multi-genre path; ML-20M films have 2.0 on average) or exactly one
(single-category queue path). Runs the whole ``evaluate_lists`` (selection + C_KL, KL@N, coverage,
precision/recall/nDCG against 5 held-out items per user), on an in-memory candidate set. Peak RSS
is the process's largest resident set; ``evaluate_cpu_s`` the process's CPU time (NumPy runs these
kernels on one thread, so on a shared machine it is what the wall time would be when quiet).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from steps.align.config import AlignConfig  # noqa: E402
from steps.align.lists import evaluate_lists, resolve_list_target  # noqa: E402
from steps.candidates import CandidateSet  # noqa: E402


def candidate_set(users: int, items: int, genres: int, m: int, single: bool, seed: int = 0) -> CandidateSet:
    rng = np.random.default_rng(seed)
    n_gen = np.ones(items, dtype=np.int64) if single else rng.choice([1, 2, 3, 4], size=items, p=[0.35, 0.35, 0.2, 0.1])
    keys = rng.random((items, genres)) * (1.0 / np.arange(1, genres + 1))[None, :]
    member = np.zeros((items, genres), dtype=bool)
    order = np.argsort(-keys, axis=1)
    member[np.arange(items)[:, None], order[:, :4]] = np.arange(4)[None, :] < n_gen[:, None]
    item_genre = sp.csr_matrix(member / member.sum(axis=1, keepdims=True))
    pop = 1.0 / np.arange(1, items + 1) ** 0.8
    pop /= pop.sum()
    cand = np.empty((users, m), dtype=np.int64)
    for s in range(0, users, 20_000):  # m distinct popular-skewed items per user (exponential race)
        b = min(20_000, users - s)
        k = np.log(pop[None, : 4 * m + 2000]) - np.log(rng.standard_exponential((b, 4 * m + 2000)))
        cand[s : s + b] = np.argsort(-k, axis=1)[:, :m]
    scores = np.sort(rng.normal(size=(users, m)), axis=1)[:, ::-1].copy()
    hist_len = 20
    hist = rng.choice(items, size=(users, hist_len), p=pop)
    held = rng.choice(items, size=(users, 5), p=pop)
    return CandidateSet(
        path="<memory>", meta={}, user_ids=np.arange(users), candidate_rows=cand, scores=scores,
        item_ids_sorted=np.arange(items), genres=tuple(f"g{i}" for i in range(genres)), item_genre=item_genre,
        heldout_offsets=np.arange(users + 1) * 5, heldout_ids=held.ravel(),
        history_offsets=np.arange(users + 1) * hist_len, history_rows=hist.ravel(), history_times=None,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=136_677)
    ap.add_argument("--items", type=int, default=20_108)
    ap.add_argument("--genres", type=int, default=20)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--path", choices=["multi", "single", "both"], default="both")
    ap.add_argument("--method", default="steck")
    args = ap.parse_args()
    cfg = AlignConfig.from_dict({"targets": ["history"], "lambdas": [0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99], "top_n": 10,
                                 "selections": ["det"], "calibration_alpha": 0.01, "steck_smoothing_select": 0.01})
    for path in (["multi", "single"] if args.path == "both" else [args.path]):
        t0 = time.perf_counter()
        cs = candidate_set(args.users, args.items, args.genres, args.candidates, path == "single")
        t_data = time.perf_counter() - t0
        t0 = time.perf_counter()
        target = resolve_list_target("history", cs)
        t_target = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        out = evaluate_lists(cs, target, args.method, cfg, "bench")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        res = out.results.sort("lambda")
        print(json.dumps({
            "path": path, "method": args.method, "users": args.users, "candidates": args.candidates, "genres": args.genres,
            "top_n": 10, "lambdas": 7, "make_data_s": round(t_data, 1), "history_targets_s": round(t_target, 2),
            "evaluate_s": round(wall, 1), "evaluate_cpu_s": round(cpu, 1), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "c_kl_mean_lambda0": round(float(res["c_kl_mean"][0]), 4), "c_kl_mean_lambda099": round(float(res["c_kl_mean"][-1]), 4),
        }), flush=True)


if __name__ == "__main__":
    main()
