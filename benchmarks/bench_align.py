"""Benchmark of the alignment pipeline (issue #2 targets).

    .venv/bin/python benchmarks/bench_align.py steck            # Steck over the BA block, 7 lambdas
    .venv/bin/python benchmarks/bench_align.py grid             # the full paper grid through AlignFlow
    .venv/bin/python benchmarks/bench_align.py grid --resamples 0   # ... with bootstrap intervals off
    .venv/bin/python benchmarks/bench_align.py memory --impressions 13500000   # RSS vs size
    .venv/bin/python benchmarks/bench_align.py flow-memory --impressions 13500000   # the flow at that size

Sizes default to the issue's: 200,000 beyond-accuracy rows x 250 candidates and 1,000,000
labelled impressions. Synthetic dumps are cached under benchmarks/.data/ (git-ignored).
Peak RSS is the largest resident set of any single process (the flow's tasks are processes).
``--resamples N`` (grid, flow-memory) runs the flow with a derived config: the same YAML with
``uncertainty: {resamples: N}`` merged in, written under benchmarks/.data/ (N = 0: intervals off);
without it the config runs as it is (configs/align_nails_paper.yaml: the default, B = 1,000).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flowtiming import timed_flow_run  # noqa: E402  (benchmarks/, the script's own folder)

from steps.align.config import AlignConfig, load_align_config  # noqa: E402
from steps.align.data import prepare_dump  # noqa: E402
from steps.align.evaluate import evaluate_method, target_layout  # noqa: E402
from steps.align.synthetic import SyntheticDumpSpec, write_synthetic_dump  # noqa: E402
from steps.align.targets import resolve_target  # noqa: E402

DATA = ROOT / "benchmarks" / ".data"


def peak_rss_mb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def dump_for(ba_rows: int, impressions: int, inview_max: int = 50) -> dict:
    spec = SyntheticDumpSpec(n_articles=5000, n_candidates=250, n_ba_rows=ba_rows, n_impressions=impressions,
                             inview_max=inview_max, chunk_rows=100_000, seed=2026)
    folder = DATA / f"dump_{ba_rows}_{impressions}_{inview_max}"
    if not (folder / "predictions.parquet").exists():
        t = time.perf_counter()
        write_synthetic_dump(folder, spec)
        print(f"wrote synthetic dump {folder.name} in {time.perf_counter() - t:.1f} s", flush=True)
    return {"predictions": str(folder / "predictions.parquet"), "articles": str(folder / "articles.parquet")}


def bench_steck(args) -> dict:
    """Steck top-N selection over every BA row for the whole lambda grid, one process."""
    paths = dump_for(args.ba_rows, 0)
    t = time.perf_counter()
    prepared = prepare_dump(paths["predictions"], paths["articles"], DATA / "prepared_ba")
    t_prepare = time.perf_counter() - t
    cfg = load_align_config(ROOT / "configs" / "align_nails_paper.yaml")
    out = {"ba_rows": args.ba_rows, "prepare_s": round(t_prepare, 2)}
    for target in ("Editorial", "Uniform"):
        layout = target_layout(prepared, resolve_target(target, prepared.candidate_categories), cfg.unknown_category_weight)
        t = time.perf_counter()
        evaluate_method(prepared, layout, "steck", cfg, DATA / "steck_out")
        out[f"steck_{target}_7_lambdas_s"] = round(time.perf_counter() - t, 2)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


def with_resamples(config: Path, resamples: int | None) -> Path:
    """``config`` itself, or (``resamples`` given) a copy under DATA with ``uncertainty.resamples``
    set to it (the config's other uncertainty keys kept)."""
    if resamples is None:
        return config
    with open(config, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    raw["uncertainty"] = {**(raw.get("uncertainty") or {}), "resamples": resamples}
    out = DATA / f"{config.stem}_resamples{resamples}.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    load_align_config(out)  # refuse a bad derived config before the flow starts
    return out


def bench_grid(args, config: Path = ROOT / "configs" / "align_nails_paper.yaml") -> dict:
    """The full paper grid through AlignFlow (2 targets x 4 methods/selections x 7 lambdas)."""
    paths = dump_for(args.ba_rows, args.impressions, inview_max=args.inview_max)
    config = with_resamples(config, args.resamples)
    env = {**os.environ, "METAFLOW_USER": os.environ.get("METAFLOW_USER", "bench"),
           "RECALIGN_STORAGE_ROOT": str(DATA / "storage")}
    wall, cpu, peak = timed_flow_run(ROOT / "flows" / "align_flow.py",
                                ["--no-pylint", "--config", "config", str(config), "run", "--max-workers", str(args.workers),
                                 "--predictions", paths["predictions"], "--articles", paths["articles"],
                                 "--artifacts-dir", str(DATA / "artifacts")], DATA, env, "AlignFlow")
    return {"ba_rows": args.ba_rows, "impressions": args.impressions, "workers": args.workers,
            "config": config.name, "resamples": load_align_config(config).uncertainty.resamples,
            "wall_s": wall, "cpu_s": cpu, "peak_task_rss_mb": peak}


def bench_flow_memory(args) -> dict:
    """AlignFlow on a dump of ``--impressions`` impressions with a reduced grid
    (benchmarks/align_memory.yaml: Editorial; NAILS det and Steck at one lambda; submissions)."""
    return {"grid": "align_memory.yaml", **bench_grid(args, ROOT / "benchmarks" / "align_memory.yaml")}


def bench_memory(args) -> dict:
    """Prepare + one NAILS cell over all labelled impressions: peak RSS must not grow with size."""
    paths = dump_for(0 if args.no_ba else args.ba_rows, args.impressions, inview_max=args.inview_max)
    folder = DATA / f"prepared_mem_{args.impressions}"
    t = time.perf_counter()
    prepared = prepare_dump(paths["predictions"], paths["articles"], folder)
    t_prepare = time.perf_counter() - t
    rss_prepare = peak_rss_mb()
    cfg = AlignConfig.from_dict({"lambdas": [0.5], "selections": ["det"], "submissions": True})
    layout = target_layout(prepared, resolve_target("Editorial", prepared.candidate_categories), cfg.unknown_category_weight)
    t = time.perf_counter()
    evaluate_method(prepared, layout, "nails", cfg, folder / "out")
    return {"impressions": args.impressions, "in_view_elements": int(prepared.logits.shape[0]),
            "prepare_s": round(t_prepare, 1), "peak_rss_after_prepare_mb": round(rss_prepare, 1),
            "nails_det_one_lambda_s": round(time.perf_counter() - t, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["steck", "grid", "memory", "flow-memory"])
    ap.add_argument("--ba-rows", type=int, default=200_000)
    ap.add_argument("--impressions", type=int, default=1_000_000)
    ap.add_argument("--inview-max", type=int, default=50)
    ap.add_argument("--no-ba", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--resamples", type=int, default=None,
                    help="grid / flow-memory: bootstrap resamples (0 = intervals off); default: the config's own")
    args = ap.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    result = {"steck": bench_steck, "grid": bench_grid, "memory": bench_memory,
              "flow-memory": bench_flow_memory}[args.what](args)
    result["cpu_count"] = os.cpu_count()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
