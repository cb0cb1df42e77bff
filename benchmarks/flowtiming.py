"""Run one flow as a subprocess (``python flows/<flow> ... run``) and time it: shared by the
benchmark scripts that time a whole flow (``bench_align.py grid``, ``bench_tail.py flow``)."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path


def timed_flow_run(flow_file: Path, args: list[str], cwd: Path, env: dict, name: str) -> tuple[float, float, float]:
    """``(wall seconds, CPU seconds of the run and all its tasks, peak RSS in MB of the largest task)``
    of ``python <flow_file> <args>``; a failed run prints the tail of its output and exits naming
    ``name``. The CPU time (user + system of every waited-for descendant) is less sensitive to the
    machine's load than the wall time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(flow_file), *args], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        print(proc.stdout[-4000:], proc.stderr[-4000:])
        raise SystemExit(f"{name} failed")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return round(wall, 1), round(cpu, 1), round(after.ru_maxrss / 1024, 1)
