"""Benchmark of TailFlow's heavy parts on an ML-20M-sized synthetic matrix.

    .venv/bin/python benchmarks/bench_tail.py                       # 136,677 users × 20,108 items, ≈10M interactions
    .venv/bin/python benchmarks/bench_tail.py --users 30000 --items 5000 --mean-items 60   # a scaled run

Parts (each in its own process, so that its peak RSS is its own):
  * ``data``      — the synthetic interaction matrix (cached as .npz under the storage root);
  * ``ease``      — closed-form EASE of recalign (XᵀX, Cholesky inverse), λ = 500;
  * ``cornac``    — Cornac's EASE (``cornac.models.EASE``, the peer library; X.T·X, ``np.linalg.inv``);
  * ``adv_epoch`` — one epoch of the adversarial method (``2bmlp2``, ML-20M's best settings) over the
    training users, plus its validation scoring, on CUDA when torch sees a GPU, else CPU.
Prints wall time, throughput and peak RSS (``resource.getrusage``) per part.

The whole TailFlow at that size, EASE only (``benchmarks/tail_ml20m_ease.yaml``), as one subprocess:

    .venv/bin/python benchmarks/bench_tail.py flow --prepare           # build the dataset cache, untimed
    .venv/bin/python benchmarks/bench_tail.py flow --resamples 1000    # intervals on (0 = off)
    .venv/bin/python benchmarks/bench_tail.py flow --users 3000 --items 500 --mean-items 30 --heldout-users 300

``flow`` runs ``flows/tail_flow.py`` with a derived config under benchmarks/.data/ (the YAML with the
size options and ``uncertainty: {resamples: N}`` merged in; without ``--resamples`` the default B) and
storage under benchmarks/.data/tail_storage/, where the prepared split is cached across runs (so
``--prepare`` first keeps its construction out of the timed runs). Prints JSON with the wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flowtiming import timed_flow_run  # noqa: E402  (benchmarks/, the script's own folder)

DATA = ROOT / "benchmarks" / ".data"
FLOW_CONFIG = ROOT / "benchmarks" / "tail_ml20m_ease.yaml"
FLOW_STORAGE = DATA / "tail_storage"
ML20M_SIZE = {"users": 136_677, "items": 20_108, "mean_items": 73.0}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def matrix_path(args) -> Path:
    from steps.storage import storage_root

    return Path(storage_root()) / "bench" / f"tail_{args.users}x{args.items}_{args.mean_items:g}.npz"


def part_data(args) -> dict:
    from steps.tail.config import SyntheticSpec
    from steps.tail.synthetic import iter_synthetic_ratings

    spec = SyntheticSpec(n_users=args.users, n_items=args.items, n_clusters=50, mean_items_per_user=args.mean_items,
                         popularity_weight=1.0, low_rating_share=0.0, seed=1)
    t0 = time.perf_counter()
    rows, cols = [], []
    ids = None
    from steps.tail.synthetic import item_truth

    ids = item_truth(spec).movie_ids
    for frame in iter_synthetic_ratings(spec, batch_users=1000):
        rows.append(frame["userId"].to_numpy() - 1)
        cols.append(np.searchsorted(ids, frame["movieId"].to_numpy()))
    r, c = np.concatenate(rows), np.concatenate(cols)
    x = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(args.users, args.items))
    path = matrix_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    sp.save_npz(path, x, compressed=False)
    return {"part": "data", "seconds": time.perf_counter() - t0, "nnz": int(x.nnz), "users": args.users, "items": args.items,
            "peak_rss_mb": peak_rss_mb()}


def part_ease(args) -> dict:
    from steps.tail.models import ease_closed_form, gram_matrix

    x = sp.load_npz(matrix_path(args)).tocsr()
    t0 = time.perf_counter()
    g = gram_matrix(x)
    t_gram = time.perf_counter() - t0
    del g
    t0 = time.perf_counter()
    b = ease_closed_form(x, 500.0)
    secs = time.perf_counter() - t0
    return {"part": "ease", "seconds": secs, "gram_seconds": t_gram, "checksum": float(np.abs(b[:50, :50]).sum()),
            "peak_rss_mb": peak_rss_mb()}


def part_cornac(args) -> dict:
    from collections import OrderedDict

    from cornac.data import Dataset
    from cornac.models import EASE

    x = sp.load_npz(matrix_path(args)).tocoo()
    ds = Dataset(x.shape[0], x.shape[1], OrderedDict((i, i) for i in range(x.shape[0])),
                 OrderedDict((i, i) for i in range(x.shape[1])), (x.row, x.col, x.data.astype(np.float64)))
    _ = ds.matrix  # build Cornac's CSR matrix before timing the fit
    t0 = time.perf_counter()
    model = EASE(lamb=500.0, posB=False, verbose=False).fit(ds)
    secs = time.perf_counter() - t0
    return {"part": "cornac", "seconds": secs, "checksum": float(np.abs(model.B[:50, :50]).sum()), "peak_rss_mb": peak_rss_mb()}


def part_adv_epoch(args) -> dict:
    import torch

    from steps.tail.config import MethodSpec, Training
    from steps.tail.models import ItemItem, resolve_device
    from steps.tail.train import build_objective, make_optimizer, run_epoch, validation_scores

    x = sp.load_npz(matrix_path(args)).tocsr()
    device = resolve_device("auto")
    n_valid = min(10_000, x.shape[0] // 10)
    train, valid = x[: x.shape[0] - n_valid], x[x.shape[0] - n_valid :]
    rng = np.random.default_rng(0)
    mask = sp.csr_matrix((rng.random(valid.nnz) < 0.2, valid.indices, valid.indptr), shape=valid.shape)
    valid_te = valid.multiply(mask).tocsr()
    valid_tr = (valid - valid_te).tocsr()
    valid_te.eliminate_zeros(), valid_tr.eliminate_zeros()
    counts = np.diff(train.tocsc().indptr)
    method = MethodSpec(name="adversarial", training=Training(optimizer="sgd", lr=0.05, wd=8e-6, batch_size=1024),
                        adversary="2bmlp2", nstd=1.5, alr=1.0, awd=0.0, lam=1.0, aloss="recall_dist")
    torch.manual_seed(0)
    model = ItemItem(x.shape[1]).to(device)
    objective = build_objective(method, train, counts, device)
    opt = make_optimizer(model.parameters(), method.training, 2.0, 8e-6)
    t0 = time.perf_counter()
    loss = run_epoch(model, objective, opt, train, rng.permutation(train.shape[0]), 1024, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_epoch = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = validation_scores(model.B.detach(), valid_tr, valid_te, 1000, device)
    t_valid = time.perf_counter() - t0
    out = {"part": "adv_epoch", "device": str(device), "seconds": t_epoch, "validation_seconds": t_valid, "loss": loss,
           "train_users": int(train.shape[0]), "users_per_second": train.shape[0] / t_epoch,
           "valid_ndcg_at_100": scores["ndcg_at_100"], "peak_rss_mb": peak_rss_mb(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def flow_config(args) -> Path:
    """benchmarks/tail_ml20m_ease.yaml with the size options and ``--resamples`` merged in, under DATA."""
    import yaml

    from steps.tail.config import parse_tail_config

    raw = yaml.safe_load(FLOW_CONFIG.read_text(encoding="utf-8"))
    (dataset,) = raw["datasets"]
    dataset["synthetic"].update(n_users=args.users, n_items=args.items, mean_items_per_user=args.mean_items)
    if args.heldout_users is not None:
        dataset["protocol"]["heldout_users"] = args.heldout_users
    tag = f"{args.users}x{args.items}_{args.mean_items:g}_h{dataset['protocol']['heldout_users']}"
    if args.resamples is not None:
        raw["uncertainty"] = {**(raw.get("uncertainty") or {}), "resamples": args.resamples}
        tag += f"_resamples{args.resamples}"
    text = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    parse_tail_config(text)  # refuse a bad derived config before the flow starts
    DATA.mkdir(parents=True, exist_ok=True)
    out = DATA / f"{FLOW_CONFIG.stem}_{tag}.yaml"
    out.write_text(text, encoding="utf-8")
    return out


def run_flow(args) -> dict:
    """The whole TailFlow (prepare, EASE, joins, report) on the derived config, or with ``--prepare``
    only the dataset cache its prepare step reuses."""
    from steps.storage import RunStorage
    from steps.tail.config import TailConfig, parse_tail_config
    from steps.tail.data import prepare_dataset

    config = flow_config(args)
    cfg = TailConfig.from_dict(parse_tail_config(config.read_text(encoding="utf-8")))
    if args.prepare:
        t0 = time.perf_counter()
        cache = RunStorage.for_run("TailFlow", "prepare", str(FLOW_STORAGE)).cache_dir()
        prepared = prepare_dataset(cfg.dataset(cfg.dataset_names[0]), cfg.seed, cache)
        return {"what": "prepare", "seconds": round(time.perf_counter() - t0, 1), **prepared.stats}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "METAFLOW_USER": os.environ.get("METAFLOW_USER", "bench")}
    wall, cpu, peak = timed_flow_run(ROOT / "flows" / "tail_flow.py",
                                ["--no-pylint", "--config", "config", str(config), "run", "--max-workers", str(args.workers),
                                 "--storage-root", str(FLOW_STORAGE), "--artifacts-dir", str(DATA / "artifacts")], DATA, env, "TailFlow")
    return {"what": "flow", "config": config.name, "methods": cfg.method_names, "users": args.users, "items": args.items,
            "mean_items": args.mean_items, "resamples": cfg.uncertainty.resamples, "workers": args.workers,
            "wall_s": wall, "cpu_s": cpu, "peak_task_rss_mb": peak}


PARTS = {"data": part_data, "ease": part_ease, "cornac": part_cornac, "adv_epoch": part_adv_epoch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", choices=["parts", "flow"], default="parts",
                    help="parts (default): the heavy parts, each in its own process; flow: the whole TailFlow, EASE only")
    ap.add_argument("--users", type=int, default=ML20M_SIZE["users"])
    ap.add_argument("--items", type=int, default=ML20M_SIZE["items"])
    ap.add_argument("--mean-items", type=float, default=ML20M_SIZE["mean_items"], help="mean positives per user (ML-20M: ≈73)")
    ap.add_argument("--parts", default="data,ease,cornac,adv_epoch")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--resamples", type=int, default=None,
                    help="flow: bootstrap resamples (0 = intervals off); default: the config's own (1,000)")
    ap.add_argument("--heldout-users", type=int, default=None, help="flow: validation (and test) users; default 10,000")
    ap.add_argument("--workers", type=int, default=2, help="flow: --max-workers")
    ap.add_argument("--prepare", action="store_true", help="flow: only build the cached dataset split, untimed")
    args = ap.parse_args()
    if args.what == "flow":
        result = run_flow(args)
        result["cpu_count"] = os.cpu_count()
        print(json.dumps(result))
        return
    if args.part:
        print(json.dumps(PARTS[args.part](args)))
        return
    results = []
    for part in args.parts.split(","):
        if part == "data" and matrix_path(args).exists():
            continue
        cmd = [sys.executable, __file__, "--part", part, "--users", str(args.users), "--items", str(args.items),
               "--mean-items", str(args.mean_items)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"part {part} failed")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["process_seconds"] = time.perf_counter() - t0
        results.append(res)
        print(json.dumps(res), flush=True)
    if results:
        print(pl.DataFrame([{k: r.get(k) for k in ("part", "seconds", "peak_rss_mb", "process_seconds")} for r in results]))


if __name__ == "__main__":
    main()
