"""Cluster readiness without a cluster: every flow compiles to an Argo Workflows template against
a loopback S3 stand-in, with each step's resources; AlignFlow runs end to end on an S3 datastore.

Select with ``pytest -k cluster``.
"""

import io

import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal

from tests.cluster import BUCKET, argo_template, flow_env, flow_steps, moto_s3, run_cli, s3_client
from tests.flowrun import CONFIGS

pytestmark = [pytest.mark.flow, pytest.mark.slow]

# flow file -> (config for the compile check, module with DEFAULT_RESOURCES, step -> resource group,
#              steps with @retry/@timeout)
FLOWS = {
    "align_flow.py": (CONFIGS / "align_nails_paper.yaml", "steps.align.config",
                      {"start": "start", "prepare": "start", "evaluate": "evaluate", "report": "report"},
                      ["start", "prepare", "evaluate"]),
    "newsrec_flow.py": (CONFIGS / "newsrec_demo.yaml", "steps.newsrec.config",
                        {"start": "start", "train": "train", "dump": "dump", "prepare_alignment": "align",
                         "evaluate": "align", "report": "report"}, ["start", "train", "dump", "evaluate"]),
    "explain_flow.py": (CONFIGS / "explain_synthetic.yaml", "steps.explain.config",
                        {"start": "start", "train": "train", "evaluate": "train", "explain": "explain", "report": "report"},
                        ["start", "train", "explain"]),
    "tail_flow.py": (CONFIGS / "tail_ml20m.yaml", "steps.tail.config",
                     {"prepare": "prepare", "train": "train", "report": "report"}, ["prepare", "train"]),
}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with moto_s3() as env:
        yield env, tmp_path_factory.mktemp("cluster")


@pytest.mark.parametrize("flow", list(FLOWS))
def test_cluster_argo_template_has_every_step_with_resources(s3, flow):
    import importlib

    from steps.configtools import DEFAULT_RUN

    config, module, groups, retried = FLOWS[flow]
    env_extra, cwd = s3
    env = flow_env(env_extra)
    template = argo_template(flow, str(config), env, cwd)
    assert template["kind"] == "WorkflowTemplate"
    by_name = {t["name"]: t for t in template["spec"]["templates"]}
    cfg = yaml.safe_load(config.read_text())
    defaults = importlib.import_module(module).DEFAULT_RESOURCES
    run_settings = {**DEFAULT_RUN, **cfg.get("run", {})}
    steps = flow_steps(flow, str(config), env, cwd)
    assert len(steps) >= 5
    for step in steps:
        t = by_name[step.replace("_", "-")]
        requests = t["container"]["resources"]["requests"]
        group = groups.get(step, "join")
        expected = {**defaults[group], **cfg.get("resources", {}).get(group, {})}
        # the Kubernetes decorator takes the larger of @resources and its own defaults (1 cpu, 4096 MB)
        assert float(requests["cpu"]) == max(expected["cpu"], 1), step
        assert float(requests["memory"].rstrip("M")) == max(expected["memory"], 4096), step
        env_vars = {e["name"]: e.get("value") for e in t["container"].get("env", [])}
        assert env_vars.get("OPENBLAS_NUM_THREADS") == (str(expected["blas_threads"]) if expected.get("blas_threads") else None), step
    for step in retried:
        t = by_name[step.replace("_", "-")]
        assert int(t["retryStrategy"]["limit"]) == run_settings["retries"], step
        assert t["activeDeadlineSeconds"] == run_settings["timeout_minutes"] * 60, step


def test_cluster_align_flow_on_an_s3_datastore_matches_a_local_run(s3, quick_run):
    env_extra, cwd = s3
    env = flow_env(env_extra)
    export = f"s3://{BUCKET}/exports"
    rc, run_id, out = run_cli("align_flow.py", ["run", "--max-workers", "2", "--artifacts-dir", export], env, cwd,
                              config=str(CONFIGS / "align_quick.yaml"))
    assert rc == 0, out[-3000:]
    s3c = s3_client(env_extra)
    # large intermediate files went to the flow's S3 datastore root, not to a local folder
    keys = [o["Key"] for o in s3c.list_objects_v2(Bucket=BUCKET, Prefix=f"metaflow/recalign/AlignFlow/{run_id}/")["Contents"]]
    assert any(k.endswith("ba_probs.npy") for k in keys) and any(k.endswith(".zip") for k in keys)
    assert not (cwd / ".recalign").exists()
    body = s3c.get_object(Bucket=BUCKET, Key=f"exports/AlignFlow/{run_id}/results.csv")["Body"].read()
    remote = pl.read_csv(io.BytesIO(body))
    # the local run of the same config is the suite's shared quick run
    expected = pl.read_csv(io.BytesIO(quick_run.run.data.results.write_csv().encode()))
    assert_frame_equal(remote, expected)
    assert s3c.get_object(Bucket=BUCKET, Key=f"exports/AlignFlow/{run_id}/summary.json")["ContentLength"] > 0


def test_cluster_saved_weights_published_to_s3_load_back(s3, monkeypatch):
    """NewsRecFlow's dump step on an S3 datastore: the weights' FileRef names ``s3://...``; load_best
    downloads it (checksum verified) before loading, not ``Path("s3://...")``."""
    import os
    import shutil
    import uuid
    from dataclasses import replace

    import numpy as np

    from steps.errors import InputError
    from steps.newsrec.config import ModelConfig, TrainConfig
    from steps.newsrec.prepare import PreparedNewsData
    from steps.newsrec.train import build_for, load_best, save_best
    from steps.storage import FileRef, RunStorage, map_refs

    env_extra, _ = s3
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "METAFLOW_S3_ENDPOINT_URL"):
        monkeypatch.setenv(key, env_extra[key])
    hp = ModelConfig(head_num=2, head_dim=3, attention_hidden_dim=5, units=(8,))
    training = TrainConfig(history_size=3, npratio=2)
    prepared = PreparedNewsData("", "x", True, "", FileRef("ids", "", 0, (10,)), None, None, 0,
                                FileRef("vectors", "", 0, (12, 6), "float32"))
    rec = build_for(prepared, "nrms_docvec", hp, training, seed=3)
    run_id = uuid.uuid4().hex
    storage = RunStorage(f"s3://{BUCKET}/weights-test", "NewsRecFlow", run_id)
    artifact = save_best(rec, storage.dir("models"), 2, hp, training, seed=3)
    published = map_refs(artifact, storage.publish)
    shutil.rmtree(storage.dir())  # the local staging copy is gone: only the S3 copy is left
    assert published.weights.path == f"s3://{BUCKET}/weights-test/NewsRecFlow/{run_id}/models/nrms_docvec.weights.h5"
    with pytest.raises(InputError, match="file is missing"):  # what load_best checks
        published.weights.verify()
    assert not os.path.exists(artifact.weights.path)
    loaded = load_best(prepared, published, training)
    assert all(np.array_equal(a, b) for a, b in zip(rec.train_model.get_weights(), loaded.train_model.get_weights()))
    # the downloaded copy is verified against the artifact's checksum before loading
    with pytest.raises(InputError, match="checksum mismatch"):
        load_best(prepared, replace(published, weights=replace(published.weights, sha256="0" * 64)), training)
