"""A loopback S3 stand-in (moto server) and helpers to run / compile flows against it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.flowrun import FLOWS

BUCKET = "recalign-ci"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_s3():
    """Start ``moto_server`` on 127.0.0.1 (stopped on exit), create a bucket, yield the env that
    points Metaflow and recalign at it."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("moto server did not start")
            time.sleep(0.2)
        endpoint = f"http://127.0.0.1:{port}"
        env = {
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
            "METAFLOW_DEFAULT_DATASTORE": "s3", "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{BUCKET}/metaflow",
            "METAFLOW_S3_ENDPOINT_URL": endpoint, "METAFLOW_KUBERNETES_NAMESPACE": "default",
            "METAFLOW_DEFAULT_METADATA": "local",
        }
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                     aws_secret_access_key="test").create_bucket(Bucket=BUCKET)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def s3_client(env):
    import boto3

    return boto3.client("s3", endpoint_url=env["METAFLOW_S3_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def flow_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECALIGN_", "METAFLOW_DEFAULT"))}
    env.setdefault("METAFLOW_USER", "recalign-tests")
    env.update(extra)
    return env


def flow_steps(flow: str, config: str | None, env: dict, cwd: Path) -> list[str]:
    """Step names of a flow, from ``python flow.py show``."""
    cmd = [sys.executable, str(FLOWS / flow), "--no-pylint"] + (["--config", "config", config] if config else []) + ["show"]
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=True)
    return [line.split()[1] for line in out.stdout.splitlines() if line.startswith("Step ")]


def argo_template(flow: str, config: str | None, env: dict, cwd: Path) -> dict:
    """``argo-workflows create --only-json`` (needs the S3 stand-in: the code package is uploaded)."""
    cmd = [sys.executable, str(FLOWS / flow), "--no-pylint"] + (["--config", "config", config] if config else [])
    cmd += ["argo-workflows", "create", "--only-json"]
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if out.returncode:
        raise AssertionError(f"argo compile of {flow} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout[out.stdout.index("{"):])


def run_cli(flow: str, args: list[str], env: dict, cwd: Path, config: str | None = None) -> tuple[int, str, str]:
    """``python flow.py [--config ...] <args> --run-id-file F``: (returncode, run id, output)."""
    run_id_file = Path(cwd) / f".run-id-{time.time_ns()}"
    cmd = [sys.executable, str(FLOWS / flow), "--no-pylint"] + (["--config", "config", config] if config else [])
    cmd += args + ["--run-id-file", str(run_id_file)]
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    run_id = run_id_file.read_text().strip() if run_id_file.exists() else ""
    return out.returncode, run_id, out.stdout + out.stderr
