"""Shared test set-up. Metaflow refuses the user name "root": set one before anything imports it."""

import os

os.environ.setdefault("METAFLOW_USER", "recalign-tests")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from tests.flowrun import FlowRunner  # noqa: E402


@pytest.fixture(scope="session")
def flow_runner(tmp_path_factory) -> FlowRunner:
    """Runs flows through Metaflow's Runner in a private working directory (datastore, exports)."""
    return FlowRunner(tmp_path_factory.mktemp("flows"))


@pytest.fixture(scope="session")
def quick_run(flow_runner):
    """One AlignFlow run of configs/quick.yaml, shared by the tests that only read it."""
    from tests.flowrun import CONFIGS

    run = flow_runner.run("align_flow.py", CONFIGS / "quick.yaml")
    assert run.ok, run.stderr[-3000:]
    return run
