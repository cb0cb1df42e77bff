"""Run a flow end to end through Metaflow's ``Runner`` (and resume it) from a test."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "flows"
CONFIGS = ROOT / "configs"

# Every config the flow tests run, named once here (a renamed config is a one-line change).
ALIGN_QUICK = CONFIGS / "align_quick.yaml"
ALIGN_ML100K = CONFIGS / "align_calibrate_ml100k.yaml"
TAIL_QUICK = CONFIGS / "tail_quick.yaml"
NEWSREC_QUICK = CONFIGS / "newsrec_quick.yaml"
EXPLAIN_QUICK = CONFIGS / "explain_quick.yaml"


def derived_config(base: Path, out: Path, **overrides) -> Path:
    """``base`` with top-level keys replaced by ``overrides`` (``None``: key removed), written to
    ``out`` (a test's tmp folder)."""
    import yaml

    cfg = yaml.safe_load(Path(base).read_text())
    for key, value in overrides.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return out


@dataclass
class FlowRun:
    status: str
    run_id: str
    run: object  # metaflow.Run
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.status == "successful"


class FlowRunner:
    """Each test gets the same private cwd (so Metaflow's local datastore and exports stay out of
    the repository); every call passes its own environment."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = Path(cwd)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECALIGN_FAIL")}
        env["METAFLOW_USER"] = os.environ.get("METAFLOW_USER", "recalign-tests")
        env["RECALIGN_STORAGE_ROOT"] = str(self.cwd / ".recalign")
        env.update(extra)
        return env

    def run(self, flow: str, config: str | Path | None = None, env: dict | None = None, max_workers: int = 2, **params) -> FlowRun:
        from metaflow import Runner

        kwargs = {"config": [("config", str(config))]} if config else {}
        with Runner(str(FLOWS / flow), show_output=False, pylint=False, env=env or self.env(), cwd=str(self.cwd), **kwargs) as runner:
            result = runner.run(max_workers=max_workers, **params)
            return FlowRun(result.status, result.run.id, result.run, result.stdout, result.stderr)

    def resume(self, flow: str, origin_run_id: str, env: dict | None = None) -> FlowRun:
        """Resume a failed run; its parameters and configs are frozen to the origin run."""
        from metaflow import Runner

        with Runner(str(FLOWS / flow), show_output=False, pylint=False, env=env or self.env(), cwd=str(self.cwd)) as runner:
            result = runner.resume(origin_run_id=origin_run_id, max_workers=2)
            return FlowRun(result.status, result.run.id, result.run, result.stdout, result.stderr)


def card_data(task, card_id: str) -> str:
    """The JSON payload of a card (Metaflow embeds it base64-encoded in the HTML)."""
    import base64
    import re

    from metaflow.cards import get_cards

    html = get_cards(task, id=card_id)[0].get()
    match = re.search(r'window\.__MF_DATA__\["[^"]+"\] = "([^"]+)"', html)
    assert match, "card has no embedded data"
    import json

    return json.dumps(json.loads(base64.b64decode(match.group(1))), ensure_ascii=False)


def assert_replicates(data, table, metrics) -> None:
    """A finished run's ``replicates`` (what ``recalign compare`` pairs on): row-aligned with its
    results ``table``, one list of B resampled values per metric, finite where the row has an interval."""
    rep = data.replicates
    b = rep.spec["resamples"]
    assert rep.table.height == table.height and not any(c.endswith("_star") for c in table.columns)
    for m in metrics:
        star = rep.table[f"{m}_star"]
        has = table[f"{m}_lo"].is_not_null()
        assert (star.filter(has).list.len() == b).all(), m
        assert star.filter(has).list.eval(pl.element().is_finite().all()).explode().all(), m
