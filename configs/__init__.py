"""Experiment configurations (YAML), shipped with the code package of remote runs.

Flows locate their default config with :func:`config_path`; declaring the package ``include``
makes Metaflow put these files into the code package it sends to Kubernetes / AWS Batch.
"""

from pathlib import Path

METAFLOW_PACKAGE_POLICY = "include"

CONFIG_DIR = Path(__file__).resolve().parent


def config_path(name: str) -> str:
    """Absolute path of ``configs/<name>``."""
    path = CONFIG_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"no config {name!r} in {CONFIG_DIR}")
    return str(path)
