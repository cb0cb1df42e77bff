"""Attribution time per user for 20-event histories: exact (prefix tree) vs Kernel SHAP vs
TimeSHAP-pruned, on CPU; plus the exact estimator without prefix sharing, for comparison.

    .venv/bin/python benchmarks/bench_explain.py                 # defaults below
    .venv/bin/python benchmarks/bench_explain.py --users 5 --dtype float32
    .venv/bin/python benchmarks/bench_explain.py --model /tmp/gru.pt --no-sharing-events 0   # reuse a model

Every estimator evaluates under one thread policy (``steps.explain.game.run_chunks``):
single-threaded kernels, independent chunks on ``torch.get_num_threads()`` workers.

A GRU4Rec (embedding 64, hidden 64) is trained for a few epochs on the default synthetic data so
that the pruning horizon is realistic; then each user's last 20 events are explained. Printed per
estimator: mean / max wall seconds per user, CPU seconds per user (user + system; on a shared
machine wall time includes waiting for the cores), coalitions evaluated per second, peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from steps.explain.config import ExplainConfig  # noqa: E402
from steps.explain.data import user_histories  # noqa: E402
from steps.explain.attribute import top_k_items  # noqa: E402
from steps.explain.game import SequenceGame, all_coalitions  # noqa: E402
from steps.explain.model import GRU4Rec, as_dtype, load_rechorus_checkpoint, save_checkpoint  # noqa: E402
from steps.explain.pipeline import TORCH_DTYPES  # noqa: E402
from steps.explain.shapley import kernel_shap, prune_horizon, pruned_players, shapley_from_values  # noqa: E402
from steps.explain.synthetic import synthetic_dataset  # noqa: E402
from steps.explain.train import train_gru4rec  # noqa: E402
from steps.seeding import rng_for  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn):
    w, c = time.perf_counter(), cpu_seconds()
    out = fn()
    return out, time.perf_counter() - w, cpu_seconds() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=3)
    ap.add_argument("--events", type=int, default=20)
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--epochs", type=int, default=5, help="training epochs (0: an untrained model)")
    ap.add_argument("--kernel-samples", type=int, default=2048)
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--no-sharing-events", type=int, default=16,
                    help="history length for the exact-without-prefix-sharing comparison (2^n coalitions; 0 skips it)")
    ap.add_argument("--model", default="", help="checkpoint to load if it exists, else where the trained model is saved")
    args = ap.parse_args()

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, dtype {args.dtype}, events {args.events}")
    cfg = ExplainConfig.from_dict({"max_epochs": max(args.epochs, 1), "early_stop_patience": max(args.epochs, 1), "lr": 0.005,
                                   "history_max": args.events, "kernel_samples": args.kernel_samples})
    data = synthetic_dataset(cfg.synthetic, cfg.n_neg)
    if args.model and Path(args.model).exists():
        model = load_rechorus_checkpoint(args.model, data.n_items)
        print(f"loaded {args.model}")
    elif args.epochs == 0:  # untrained (ReChorus initialisation): attribution time does not depend on the weights
        model = GRU4Rec(data.n_items, cfg.emb_size, cfg.hidden_size, seed=cfg.seed)
        print("untrained model (--epochs 0)")
    else:
        (model, log), wall, cpu = timed(lambda: train_gru4rec(data, cfg, log=lambda s: None))
        print(f"training: {len(log)} epochs, {wall:.1f} s wall, {cpu:.1f} s CPU; best dev nDCG@5 {log['dev_ndcg_at_5'].max():.3f}")
        if args.model:
            save_checkpoint(model, args.model)
    model = as_dtype(model, TORCH_DTYPES[args.dtype])

    hists = user_histories(data, range(1, data.n_users + 1), args.events)
    users = [u for u, h in hists.items() if len(h) == args.events][: args.users]
    rows = {"exact": [], "kernel": [], "pruned": []}
    if args.no_sharing_events:
        rows["exact (no prefix sharing)"] = []
    coalitions = {"exact": 1 << args.events, "kernel": args.kernel_samples}
    kept = []
    for u in users:
        h = hists[u]
        game = SequenceGame(model, h, top_k_items(model, h, 10), "padding")
        ends = (game.empty_value(), game.full_value())
        phi, wall, cpu = timed(lambda: shapley_from_values(game.all_values()))
        rows["exact"].append((wall, cpu))
        assert abs(phi.sum() - (ends[1] - ends[0])) < 1e-6 * max(1.0, abs(ends[1] - ends[0]))
        _, wall, cpu = timed(lambda: kernel_shap(game.values, args.events, args.kernel_samples, rng_for(0, "bench", u), *ends))
        rows["kernel"].append((wall, cpu))

        def pruned():
            n_kept = prune_horizon(game.event_values, args.events, args.tolerance).n_kept
            return n_kept, shapley_from_values(game.with_players(pruned_players(args.events, n_kept)).all_values())

        (n_kept, _), wall, cpu = timed(pruned)
        rows["pruned"].append((wall, cpu))
        kept.append(n_kept)
        line = (f"user {u}: exact {rows['exact'][-1][0]:.2f} s, kernel {rows['kernel'][-1][0]:.3f} s, pruned "
                f"{rows['pruned'][-1][0]:.3f} s (kept {n_kept})")
        if args.no_sharing_events:
            short = SequenceGame(model, h[-args.no_sharing_events :], top_k_items(model, h[-args.no_sharing_events :], 10))
            _, wall, cpu = timed(lambda: shapley_from_values(short.values(all_coalitions(args.no_sharing_events))))
            rows["exact (no prefix sharing)"].append((wall, cpu))
            _, wall_tree, _ = timed(lambda: shapley_from_values(short.all_values()))
            line += (f", {args.no_sharing_events} events: no sharing {rows['exact (no prefix sharing)'][-1][0]:.2f} s "
                     f"vs prefix tree {wall_tree:.3f} s")
        print(line)

    print(f"\n{'estimator':28s} {'wall s/user (mean, max)':>24s} {'CPU s/user':>11s} {'coalitions/s':>13s}")
    for name, r in rows.items():
        walls = np.array([w for w, _ in r])
        cpus = np.array([c for _, c in r])
        n_coal = coalitions.get(name, 1 << args.no_sharing_events if "no prefix" in name else None)
        rate = f"{n_coal / walls.mean():,.0f}" if n_coal else "–"
        label = name if "no prefix" not in name else f"{name}, {args.no_sharing_events} ev"
        print(f"{label:28s} {walls.mean():>12.3f} {walls.max():>11.3f} {cpus.mean():>11.3f} {rate:>13s}")
    print(f"pruning horizon (events kept): {kept}")
    k, e = np.array(rows["kernel"])[:, 0], np.array(rows["exact"])[:, 0]
    print(f"Kernel SHAP ({args.kernel_samples} samples) <= exact per user: {bool(np.all(k <= e))} "
          f"(kernel max {k.max():.3f} s, exact min {e.min():.3f} s)")
    print(f"peak RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
