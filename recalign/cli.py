"""``recalign``: what is not a flow.

    recalign synth ebnerd|ml|sequences --out DIR [--size tiny|small|paper] [--seed N]   # synthetic data sets
    recalign export AlignFlow/1234 --out DIR                               # tables, figures, submissions, card
                                        # (DIR: new, empty, or an earlier export, which is replaced)
    recalign compare AlignFlow/1234 AlignFlow/1240 [--out deltas.csv] [--keys a,b] [--level 0.95]
                                        # B − A per shared cell, with intervals where both runs have them
"""

from __future__ import annotations

import argparse
import errno
import os
import pickle
import uuid
import sys
from pathlib import Path
from typing import Callable

import polars as pl

from steps.uncertainty import UNITS_DIGEST

# --------------------------------------------------------------------------- synth
SIZES = ("tiny", "small", "paper")


def _synth_ebnerd(out: Path, size: str, seed: int) -> list[str]:
    """EB-NeRD (articles, train/validation/test behaviors and histories, document vectors) for
    NewsRecFlow, plus a prediction dump in the NAILS layout for AlignFlow."""
    from dataclasses import replace

    from steps.align.synthetic import SyntheticDumpSpec, write_synthetic_dump
    from steps.newsrec.synthetic import SyntheticEbnerdSpec, write_synthetic_ebnerd

    news = {
        "tiny": dict(n_articles=300, n_users=300, n_train_impressions=2_000, n_validation_impressions=500,
                     n_test_impressions=500, n_ba_rows=100, n_candidates=40),
        "small": {},
        "paper": dict(n_articles=20_000, n_users=50_000, n_train_impressions=2_000_000, n_validation_impressions=500_000,
                      n_test_impressions=1_000_000, n_ba_rows=200_000, n_candidates=250),
    }[size]
    dump = {
        "tiny": dict(n_articles=400, n_candidates=60, n_ba_rows=1_000, n_impressions=2_000),
        "small": dict(n_articles=3_000, n_candidates=250, n_ba_rows=20_000, n_impressions=50_000),
        "paper": dict(n_articles=5_000, n_candidates=250, n_ba_rows=200_000, n_impressions=13_500_000),
    }[size]
    ebnerd = write_synthetic_ebnerd(out / "ebnerd", replace(SyntheticEbnerdSpec(), seed=seed, **news))
    paths = write_synthetic_dump(out / "nails_dump", SyntheticDumpSpec(seed=seed, chunk_rows=100_000, **dump), progress=True)
    return [*ebnerd.values(), *paths.values()]


def _synth_ml(out: Path, size: str, seed: int) -> list[str]:
    """A ``ratings.csv`` in the MovieLens-20M layout (popularity long tail, item clusters) for TailFlow."""
    from dataclasses import replace

    from steps.tail.config import SyntheticSpec
    from steps.tail.synthetic import write_synthetic_ratings

    sizes = {"tiny": dict(n_users=2_000, n_items=300), "small": {},
             "paper": dict(n_users=138_000, n_items=20_000, mean_items_per_user=72.0)}[size]
    return [str(write_synthetic_ratings(out / "ratings.csv", replace(SyntheticSpec(), seed=seed, **sizes)))]


def _synth_sequences(out: Path, size: str, seed: int) -> list[str]:
    """ReChorus' sequential format (train/dev/test.csv with 99 negatives, item_meta.csv) for ExplainFlow."""
    from dataclasses import replace

    from steps.explain.data import write_rechorus
    from steps.explain.synthetic import SyntheticSeqSpec, synthetic_dataset

    sizes = {"tiny": dict(n_users=200, n_items=150), "small": {}, "paper": dict(n_users=6_040, n_items=3_706)}[size]
    data = synthetic_dataset(replace(SyntheticSeqSpec(), seed=seed, **sizes), n_neg=99)
    return list(write_rechorus(out, data).values())


#: kind -> (description, writer(out, size, seed) -> written paths)
SYNTH: dict[str, tuple[str, Callable[[Path, str, int], list[str]]]] = {
    "ebnerd": ("EB-NeRD bundle (NewsRecFlow) + a NAILS-layout prediction dump (AlignFlow)", _synth_ebnerd),
    "ml": ("MovieLens-20M ratings.csv layout (TailFlow)", _synth_ml),
    "sequences": ("ReChorus sequential files (ExplainFlow)", _synth_sequences),
}


def cmd_synth(args) -> int:
    if args.kind not in SYNTH:
        print(f"recalign synth: unknown kind {args.kind!r}; choose from {', '.join(SYNTH)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    written = SYNTH[args.kind][1](out, args.size, args.seed)
    for p in written:
        print(p)
    return 0


# --------------------------------------------------------------------------- runs
def _run(pathspec: str):
    from recalign.runs import finished_run

    if pathspec.count("/") != 1:
        raise SystemExit(f"recalign: expected a run pathspec Flow/run_id, got {pathspec!r}")
    return finished_run(pathspec, "recalign", error=SystemExit)


#: What unpickling an artifact raises when its class cannot be imported in this process.
UNREADABLE_ARTIFACT = (AttributeError, ImportError, pickle.UnpicklingError)


def _frames(run) -> dict[str, pl.DataFrame]:
    """Every Polars DataFrame artifact of the run's end step."""
    task = run["end"].task
    out = {}
    for art in task.artifacts:
        if art.id.startswith("_"):
            continue
        try:
            value = art.data
        except UNREADABLE_ARTIFACT as exc:  # e.g. a class defined in a flow file (__main__), or not installed here
            print(f"recalign: artifact {art.id} skipped: it cannot be read here ({type(exc).__name__}: {exc})", file=sys.stderr)
            continue
        if isinstance(value, pl.DataFrame):
            out[art.id] = value
    return out


def _symlink_loop(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def _check_csv_out(command: str, out: Path) -> None:
    """``--out`` of a CSV: a file name (new, or a file to replace), not a folder or a symlink loop;
    a missing parent folder is created when the file is written."""
    if _symlink_loop(out):
        raise SystemExit(f"recalign {command}: --out {out} is a symbolic link loop")
    if out.is_dir():
        raise SystemExit(f"recalign {command}: --out {out} is a folder; give a file name, e.g. {out / 'deltas.csv'}")
    parent = next((p for p in [out.parent, *out.parent.parents] if p.exists() or p.is_symlink()), None)
    if parent is not None and (_symlink_loop(parent) or not parent.is_dir()):
        raise SystemExit(f"recalign {command}: --out {out}: {parent} is not a folder")


def _write_csv_atomically(df: pl.DataFrame, out: Path) -> None:
    from steps.tables import lists_as_text

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        lists_as_text(df).write_csv(tmp)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def _check_export_folder(out: Path) -> None:
    """``--out`` must be new, empty, or an earlier export (it holds ``run.json``), which is replaced
    whole: a second export never mixes with the first one's files, and no other folder is deleted."""
    if _symlink_loop(out):
        raise SystemExit(f"recalign export: --out {out} is a symbolic link loop")
    if out.exists() and not out.is_dir():
        raise SystemExit(f"recalign export: --out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "run.json").is_file():
        raise SystemExit(
            f"recalign export: --out {out} is not empty and holds no earlier export (no run.json); "
            "choose a new or empty folder"
        )


def cmd_export(args) -> int:
    from metaflow.cards import get_cards
    from metaflow.plugins.cards.exception import CardNotPresentException

    from steps.export import export_run
    from steps.storage import localize_tree

    out = Path(args.out)
    _check_export_folder(out)
    run = _run(args.run)
    frames = _frames(run)
    exported = getattr(run.data, "export_dir", None) if "export_dir" in run.data else None
    files: dict = {}
    if exported:
        local = Path(localize_tree(exported))
        if local.exists():
            files.update({f"export/{p.relative_to(local)}": p for p in local.rglob("*") if p.is_file()})
    for step in run:
        for task in step:
            try:
                cards = list(get_cards(task))
            except CardNotPresentException:
                continue
            for card in cards:
                files[f"card_{step.id}_{card.id or card.type}.html"] = card.get().encode()
    # written into a fresh sibling folder that replaces --out in one rename at the end (run.json last)
    export_run(out, frames, {}, files, {"run": run.pathspec, "tables": sorted(frames), "export_dir": exported},
               summary_name="run.json")
    print(out.absolute())
    return 0


def key_columns(a: pl.DataFrame, b: pl.DataFrame) -> list[str]:
    """The columns that name a cell in both results tables: strings, integers (not ``n_*`` counts), ``lambda``."""
    keys = [c for c in a.columns if c in b.columns and (a.schema[c] in (pl.String, pl.Int64, pl.Int32) or c == "lambda")]
    return [k for k in keys if not k.startswith("n_")]


def metric_deltas(a: pl.DataFrame, b: pl.DataFrame, keys: list[str] | None = None) -> pl.DataFrame:
    """Join two results tables on their key columns (default :func:`key_columns`) and give ``<metric>_a``,
    ``<metric>_b`` and ``<metric>_delta`` (b − a) for every float metric (tables without intervals)."""
    keys = key_columns(a, b) if keys is None else keys
    metrics = [c for c in a.columns if c in b.columns and c not in keys and a.schema[c] in (pl.Float64, pl.Float32)]
    joined = a.select(keys + metrics).join(b.select(keys + metrics), on=keys, how="full", coalesce=True, suffix="_b")
    joined = joined.rename({m: f"{m}_a" for m in metrics})
    return joined.with_columns([(pl.col(f"{m}_b") - pl.col(f"{m}_a")).alias(f"{m}_delta") for m in metrics]).select(
        keys + [c for m in metrics for c in (f"{m}_a", f"{m}_b", f"{m}_delta")]
    )


def deltas_long(deltas: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """The delta table one row per (cell, metric): ``metric``, ``a``, ``b``, ``delta`` and, where
    there are intervals, ``delta_lo``, ``delta_hi``, ``p``, ``p_holm`` and ``paired`` (for printing)."""
    keys = [k for k in keys if k in deltas.columns]
    metrics = [c[: -len("_delta")] for c in deltas.columns if c.endswith("_delta")]
    parts = []
    for m in metrics:
        cols = {"a": f"{m}_a", "b": f"{m}_b", "delta": f"{m}_delta", "delta_lo": f"{m}_delta_lo",
                "delta_hi": f"{m}_delta_hi", "p": f"{m}_delta_p", "p_holm": f"{m}_delta_p_holm"}
        paired = f"{m}_delta_paired"
        parts.append(deltas.select(*keys, pl.lit(m).alias("metric"),
                                   *(pl.col(c).alias(n) if c in deltas.columns else pl.lit(None, pl.Float64).alias(n)
                                     for n, c in cols.items()),
                                   pl.col(paired).alias("paired") if paired in deltas.columns else pl.lit(None, pl.Boolean).alias("paired")))
    return pl.concat(parts) if parts else deltas.select(keys)


def _leaves(d, prefix: str = ""):
    """``path -> value`` of the numbers and unit digests (``units_digest``: which units, in which
    order) in a nested summary (paths, names and notes left out)."""
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _leaves(v, f"{prefix}{k}.")
    elif isinstance(d, (int, float)) or (isinstance(d, str) and prefix[:-1].rsplit(".", 1)[-1] == UNITS_DIGEST):
        yield prefix[:-1], d


def unit_differences(summary_a, summary_b) -> list[str]:
    """Where two runs' ``data_summary`` counts differ (rows, impressions, users, items...): a run
    that evaluated other units. File paths are not compared (each run keeps its own copies)."""
    la, lb = dict(_leaves(summary_a or {})), dict(_leaves(summary_b or {}))
    return [f"{k}: {la.get(k, 'absent')} vs {lb.get(k, 'absent')}" for k in sorted(set(la) | set(lb)) if la.get(k) != lb.get(k)]


def _has_intervals(df: pl.DataFrame) -> bool:
    return any(c.endswith("_lo") and c[:-3] in df.columns and f"{c[:-3]}_hi" in df.columns for c in df.columns)


def _summary(run):
    return run.data.data_summary if "data_summary" in run.data else None


#: The table ``recalign compare`` reads, per flow (the others: ``results``); its run's ``replicates`` are row-aligned with it.
COMPARED_TABLE = {"ExplainFlow": "model_metrics"}


def _replicates(a, b, summary_a, summary_b):
    """``(both runs' Replicates or None, why they are not paired or None)``."""
    reps = [run.data.replicates if "replicates" in run.data else None for run in (a, b)]
    if any(r is None for r in reps):
        return None, "a run keeps no bootstrap replicates (intervals off, or a run made before they were kept)"
    if (why := reps[0].pairs_with(reps[1])) is not None:
        return None, why
    digests = [dict((k, v) for k, v in _leaves(s or {}) if k.rsplit(".", 1)[-1] == UNITS_DIGEST) for s in (summary_a, summary_b)]
    if not digests[0] or not digests[1]:
        return None, "a run's data_summary has no units_digest, so the units' order cannot be checked"
    return tuple(reps), None


def _pairing_text(deltas: pl.DataFrame, why_not: str | None) -> str:
    flags = [c for c in deltas.columns if c.endswith("_delta_paired")]
    n_paired = int(sum(deltas[c].sum() for c in flags))
    n_all = int(sum(deltas[c].len() for c in flags))
    unpaired = ("unpaired normal approximation from the two runs' bootstrap intervals (conservative on shared units)")
    if n_paired == 0:
        return f"{unpaired}, because {why_not or 'no metric has replicates in both runs'}."
    text = (f"paired bootstrap on the same resamples of the same units for {n_paired} of {n_all} (cell, metric) "
            "differences (column paired)")
    return text + (f"; the rest: {unpaired}." if n_paired < n_all else ".")


def cmd_compare(args) -> int:
    from steps.uncertainty import compare_results

    if not 0.0 < args.level < 1.0:
        raise SystemExit(f"recalign compare: --level {args.level:g} is not a level in (0, 1), e.g. 0.95")
    if args.out:
        _check_csv_out("compare", Path(args.out))
    flow_a, flow_b = (spec.split("/")[0] for spec in (args.run_a, args.run_b))
    if flow_a != flow_b:
        raise SystemExit(f"recalign compare: {args.run_a} and {args.run_b} are runs of different flows; compare two runs of one flow")
    a, b = _run(args.run_a), _run(args.run_b)
    table = COMPARED_TABLE.get(flow_a, "results")
    if table not in a.data or table not in b.data:
        raise SystemExit(f"recalign compare: both runs need a `{table}` artifact")
    ra, rb = getattr(a.data, table), getattr(b.data, table)
    sa, sb = _summary(a), _summary(b)
    if sa is None or sb is None:
        print("recalign compare: a run has no data_summary; whether both evaluated the same units is not checked", file=sys.stderr)
    elif diff := unit_differences(sa, sb):
        raise SystemExit(
            f"recalign compare: {args.run_a} and {args.run_b} were evaluated on different units (their data differ: "
            + "; ".join(diff[:8]) + (" ..." if len(diff) > 8 else "")
            + "); a difference of their metrics would mix the data with the method, so none is reported"
        )
    keys = key_columns(ra, rb)
    if args.keys:
        keys = [k.strip() for k in args.keys.split(",") if k.strip()]
        missing = [k for k in keys if k not in ra.columns or k not in rb.columns]
        if missing:
            raise SystemExit(f"recalign compare: --keys {missing[0]!r} is not a column of both runs' results; "
                             f"their shared columns: {', '.join(c for c in ra.columns if c in rb.columns)}")
    shared_cells = ra.select(keys).join(rb.select(keys), on=keys, how="semi", nulls_equal=True).height if keys else 0
    if shared_cells == 0:
        raise SystemExit(f"recalign compare: no cell (keys {', '.join(keys)}) is in both runs' results; "
                         "choose the columns that name a cell with --keys (e.g. leave out seed)")
    if _has_intervals(ra) and _has_intervals(rb):
        replicates, why_not = _replicates(a, b, sa, sb)
        try:
            deltas = compare_results(ra, rb, keys, level=args.level, replicates=replicates)
        except ValueError as exc:
            raise SystemExit(f"recalign {exc}; name the cells with --keys") from exc
        shared = deltas.height
        print(f"B − A for the {shared} cell(s) both runs hold ({ra.height - shared} of A and {rb.height - shared} of B only "
              f"in one run, left out). Intervals ({args.level:g}): {_pairing_text(deltas, why_not)}")
    else:
        deltas = metric_deltas(ra, rb, keys)
        print("B − A per cell; the runs' results hold no intervals (<metric>_lo/_hi), so none is given.")
    with pl.Config(tbl_rows=200, tbl_cols=30, tbl_width_chars=200, fmt_str_lengths=40):
        print(deltas_long(deltas, keys))
    if not args.out:
        print("(the wide table with every column: --out deltas.csv)")
    if args.out:
        _write_csv_atomically(deltas, Path(args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="recalign", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synth", help="write a synthetic data set in a real data set's layout")
    s.add_argument("kind", help=", ".join(f"{k} ({d})" for k, (d, _) in SYNTH.items()))
    s.add_argument("--out", required=True)
    s.add_argument("--size", choices=SIZES, default="small")
    s.add_argument("--seed", type=int, default=7)
    s.set_defaults(func=cmd_synth)
    e = sub.add_parser("export", help="export a finished run's tables, figures, submissions and cards")
    e.add_argument("run", help="Flow/run_id")
    e.add_argument("--out", required=True, help="a new or empty folder, or an earlier export (replaced whole)")
    e.set_defaults(func=cmd_export)
    c = sub.add_parser("compare", help="B - A per cell two runs of one flow share, with intervals where both have them")
    c.add_argument("run_a")
    c.add_argument("run_b")
    c.add_argument("--out", help="write the full delta table as CSV")
    c.add_argument("--keys", help="comma-separated columns that name a cell (default: the string and integer "
                   "columns both results share, and lambda)")
    c.add_argument("--level", type=float, default=0.95,
                   help="the level of the runs' intervals (their uncertainty.level), also the level of the deltas' intervals")
    c.set_defaults(func=cmd_compare)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
