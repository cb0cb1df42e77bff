"""Static checks: no undefined names, unused imports or syntax errors anywhere in the project."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_pyflakes_rules_pass():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is a dev dependency (pyproject.toml)"
    out = subprocess.run([ruff, "check", "--select", "F,E9", "--no-cache", "steps", "flows", "recalign", "tests",
                          "benchmarks", "configs"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
