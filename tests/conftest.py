"""Shared test set-up. Metaflow refuses the user name "root": set one before anything imports it."""

import os

os.environ.setdefault("METAFLOW_USER", "recalign-tests")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Import torch's lazily loaded parts now, before any test lets Metaflow's Runner load a flow file in
# this process: Metaflow's vendored typing_extensions replaces typing._collect_parameters, after
# which a *first* import of torch._dynamo / torch._inductor (pulled in lazily by torch.optim and
# torch.use_deterministic_algorithms) fails. Flows run from the command line are unaffected.
import torch  # noqa: E402,F401
import torch._dynamo  # noqa: E402,F401
import torch._inductor.config  # noqa: E402,F401
import pytest  # noqa: E402

from tests.flowrun import FlowRunner  # noqa: E402


@pytest.fixture(scope="session")
def flow_runner(tmp_path_factory) -> FlowRunner:
    """Runs flows through Metaflow's Runner in a private working directory (datastore, exports)."""
    return FlowRunner(tmp_path_factory.mktemp("flows"))


@pytest.fixture(scope="session")
def quick_run(flow_runner):
    """One AlignFlow run of the quick config, shared by the tests that only read it."""
    from tests.flowrun import ALIGN_QUICK

    run = flow_runner.run("align_flow.py", ALIGN_QUICK)
    assert run.ok, run.stderr[-3000:]
    return run


@pytest.fixture(scope="session")
def tail_quick_run(flow_runner):
    """One TailFlow run of the quick config, shared by TailFlow's tests and AlignFlow's chained test."""
    from tests.flowrun import TAIL_QUICK

    run = flow_runner.run("tail_flow.py", TAIL_QUICK)
    assert run.ok, run.stderr[-3000:]
    return run
