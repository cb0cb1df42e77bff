"""Issue #11, finding 7: what moves the adversarial method's test Recall@20 / nDCG@100? (a measurement, not a timing)

    .venv/bin/python benchmarks/tail_adversary_gap.py                    # drop_last, seeds, item order (≈ 5 min on 1 core)
    .venv/bin/python benchmarks/tail_adversary_gap.py --batch-size 83 --seeds 2 --parts drop_last   # ML-20M's batch pattern

Synthetic data (12k users × 1k items, 9,704 training users), the ML-20M settings the reference code
runs (SGD lr 0.05, wd 8e-6, ``2bmlp2``, nstd 1.5, alr 1, ``recall_dist``), 6 epochs, the last one
evaluated. Parts: ``drop_last`` (paired over seeds), ``item_order`` (random item relabellings: other
items win the tied first lists), ``init`` (``adv_init: scaled``). Results are in the README
(TailFlow, "The gap to the authors' adversarial runs").
"""

from __future__ import annotations

import argparse

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from steps import metrics
from steps.tail.config import MethodSpec, Protocol, SyntheticSpec, Training
from steps.tail.data import split_strong_generalisation
from steps.tail.evaluate import heldout_hits, topk_lists
from steps.tail.synthetic import iter_synthetic_ratings
from steps.tail.train import fit_item_item


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--method", default="adversarial", choices=["adversarial", "ease_gd"])
    ap.add_argument("--parts", default="drop_last,item_order,init")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = SyntheticSpec(n_users=12000, n_items=1000, n_clusters=20, mean_items_per_user=30, popularity_weight=1.0, seed=2024)
    raw = pl.concat(list(iter_synthetic_ratings(spec))).select(pl.col("userId").alias("user"), pl.col("movieId").alias("item"), "rating")
    s = split_strong_generalisation(raw, Protocol(heldout_users=1000), seed=11)
    n = s.train.shape[0]
    print(f"{n} training users: {n // args.batch_size} full batches of {args.batch_size} + {n % args.batch_size} users")

    def run(seed: int, drop_last: bool, perm=None, init: str = "paper"):
        mats = [s.train, s.valid_tr, s.valid_te, s.test_tr, s.test_te]
        if perm is not None:
            mats = [m[:, perm] for m in mats]
        tr, vtr, vte, ttr, tte = mats
        t = Training(epochs=6, batch_size=args.batch_size, optimizer="sgd", lr=0.05, wd=8e-6, loss_scale=1000,
                     schedule="cosine", patience=10, select_epoch="last", drop_last=drop_last)
        m = MethodSpec(name=args.method, training=t, adversary="2bmlp2", nstd=1.5, alr=1.0, lam=1.0, aloss="recall_dist",
                       dist_ones=False, adv_init=init)
        f = fit_item_item(m, tr, vtr, vte, np.diff(sp.csc_matrix(tr).indptr), seed=seed, log=lambda x: None)
        h = heldout_hits(topk_lists(f.B, ttr, 100), tte)
        r20 = float(np.nanmean(metrics.recall_at_k(h.offsets, h.positions, 20)))
        n100 = float(np.nanmean(metrics.ndcg_at_k(h.offsets, h.positions, 100)))
        return r20, n100, f.diagnostics or {}

    parts = set(args.parts.split(","))
    base = {}
    if "drop_last" in parts:
        diffs = []
        for seed in range(args.seeds):
            keep, drop = run(seed, False), run(seed, True)
            base[seed] = keep
            diffs.append(np.subtract(drop[:2], keep[:2]))
            print(f"seed {seed}: keep last batch R@20 {keep[0]:.4f} nDCG@100 {keep[1]:.4f} | drop_last {drop[0]:.4f} {drop[1]:.4f} "
                  f"| diagnostics {keep[2]}")
        d = np.array(diffs)
        print(f"drop_last − keep: mean {d.mean(0).round(4).tolist()}" + (f", sd {d.std(0, ddof=1).round(4).tolist()}" if len(d) > 1 else ""))
    if "item_order" in parts:
        rng = np.random.default_rng(0)
        ref = base.get(0) or run(0, False)
        for j in range(2):
            r = run(0, False, perm=rng.permutation(s.train.shape[1]))
            print(f"item relabelling {j}: R@20 {r[0]:.4f} ({r[0] - ref[0]:+.4f}) nDCG@100 {r[1]:.4f} ({r[1] - ref[1]:+.4f})")
    if "init" in parts and args.method == "adversarial":
        r = run(0, False, init="scaled")
        print(f"adv_init scaled, seed 0: R@20 {r[0]:.4f} nDCG@100 {r[1]:.4f} diagnostics {r[2]}")


if __name__ == "__main__":
    main()
