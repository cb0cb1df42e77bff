"""Shared test set-up. Metaflow refuses the user name "root": set one before anything imports it."""

import os

os.environ.setdefault("METAFLOW_USER", "recalign-tests")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Two pytest workers, each running flows with two task workers, share the machine's cores: one
# thread per process for OpenBLAS (NumPy), OpenMP (torch) and TensorFlow, so that their thread pools
# do not spin against each other (the flows' Runner runs inherit this environment). Set before
# anything loads those libraries; an explicit value in the environment wins.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
    os.environ.setdefault(_var, "1")

# Import torch's lazily loaded parts now, before any test lets Metaflow's Runner load a flow file in
# this process: Metaflow's vendored typing_extensions replaces typing._collect_parameters, after
# which a *first* import of torch._dynamo / torch._inductor (pulled in lazily by torch.optim and
# torch.use_deterministic_algorithms) fails. Flows run from the command line are unaffected.
import torch  # noqa: E402,F401
import torch._dynamo  # noqa: E402,F401
import torch._inductor.config  # noqa: E402,F401
import pytest  # noqa: E402

from tests.flowrun import FlowRunner  # noqa: E402

#: make test runs two pytest-xdist workers with ``--dist loadfile``: every test module is one unit
#: of work, and the modules of one entry here are one unit together, because their tests read one
#: shared flow run (a session fixture), which is then made once. The heavy units go first, so the
#: workers finish together.
SHARED_RUN_GROUPS = {
    "tests/test_newsrec_flow.py": "newsrec_quick",
    "tests/test_tail_flow.py": "tail_quick", "tests/test_calibrate_flow.py": "tail_quick",
    "tests/test_align_flow.py": "align_quick", "tests/test_cli.py": "align_quick", "tests/test_cluster.py": "align_quick",
    "tests/test_explain_flow.py": "explain_quick",
}
HEAVY_FIRST = ("newsrec_quick", "tail_quick", "align_quick", "explain_quick")

try:
    from xdist.scheduler import LoadFileScheduling
except ImportError:  # pytest-xdist not installed: one process, nothing to schedule
    LoadFileScheduling = None

if LoadFileScheduling is not None:
    class SharedRunScheduling(LoadFileScheduling):
        """``--dist loadfile`` with :data:`SHARED_RUN_GROUPS` as units and :data:`HEAVY_FIRST` first."""

        def __init__(self, config, log=None) -> None:
            super().__init__(config, log)
            config.option.loadscopereorder = False  # the order below, not "most tests first"

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return SHARED_RUN_GROUPS.get(path, path)

        def _assign_work_unit(self, node) -> None:
            # once, before the first unit goes out: the heavy units first, the others in collection order
            # (the queue is reordered, never the workers' collections: units are sent as indices into those)
            if not getattr(self, "_ordered", False):
                rank = {scope: i for i, scope in enumerate(HEAVY_FIRST)}
                self.workqueue = type(self.workqueue)(sorted(self.workqueue.items(), key=lambda kv: rank.get(kv[0], len(rank))))
                self._ordered = True
            super()._assign_work_unit(node)

    def pytest_xdist_make_scheduler(config, log):
        """The scheduler of ``--dist loadfile`` (other modes: xdist's own)."""
        return SharedRunScheduling(config, log) if config.getvalue("dist") == "loadfile" else None


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
