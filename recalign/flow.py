"""The house style of recalign's flows: a base FlowSpec and a mutator that decorates steps by group.

A flow subclasses :class:`RecalignFlow`, names how its config is parsed (``parse_config``) and
lists its steps' resource groups with :class:`step_groups`; its file keeps the graph and the steps.
The alignment fan-out AlignFlow and NewsRecFlow share is :class:`recalign.fanout.AlignFanOut`, the
report cards are in :mod:`recalign.cards`.
"""

from __future__ import annotations

from metaflow import FlowMutator, FlowSpec, Parameter, current

from steps.faults import CELL_FAILURE
from steps.storage import RunStorage


class RecalignFlow(FlowSpec):
    """Parameters, the parsed config and the export location every recalign flow has."""

    artifacts_dir = Parameter("artifacts-dir", default="artifacts", help="Where tables, figures and other outputs are exported")
    storage_root = Parameter("storage-root", default="", help="Folder for large intermediate files (default .recalign)")

    #: ``<Config>.from_dict`` of the flow's config (a bound method, so Metaflow keeps it out of the artifacts).
    parse_config = None

    @property
    def cfg(self):
        """The config as its typed object, parsed once per task (kept out of the artifacts)."""
        cached = self.__dict__.get("__cfg__")
        if cached is None:
            cached = self.__dict__["__cfg__"] = type(self).parse_config(self.config.to_dict())
        return cached

    @property
    def export_target(self) -> str:
        """Where the report step exports: ``<artifacts-dir>/<Flow>/<run_id>`` (local or ``s3://``)."""
        return f"{self.artifacts_dir.rstrip('/')}/{current.flow_name}/{current.run_id}"

    def new_storage(self) -> RunStorage:
        """This run's folder for large intermediate files."""
        return RunStorage.for_run(current.flow_name, current.run_id, self.storage_root or None)

    def export(self, tables: dict, figures: dict, files: dict | None = None, **summary) -> str:
        """:func:`steps.export.export_run` to :attr:`export_target`, staged in the run's storage; the
        summary holds the run, the config, ``data_summary`` and ``summary``'s entries."""
        from steps.export import export_run

        summary = {"run": current.pathspec, "config": self.cfg.as_dict(), "data": self.data_summary, **summary}
        return export_run(self.export_target, tables, figures, files or {}, summary, self.storage.dir("report"))

    def failed_cells_block(self, card, title: str = "Failed cells (the grid is partial)") -> None:
        """List ``self.failed_cells`` on the card, when there are any."""
        from metaflow.cards import Markdown

        if self.failed_cells:
            card.append(Markdown(f"**{title}:**\n\n" + "\n".join(f"- `{f}`" for f in self.failed_cells)))


class step_groups(FlowMutator):
    """Decorate every step from one table: ``{step: "<resource group> [retry] [timeout] [cell]"}``.

    Each step gets ``@resources`` from ``config.resources.<group>`` (steps not listed: ``join``) and,
    where the group sets ``blas_threads``, ``@environment`` with ``OPENBLAS_NUM_THREADS`` (read
    when the task's process loads NumPy);
    ``retry`` adds ``@retry`` (``config.run.retries``, ``minutes_between_retries``), ``timeout``
    adds ``@timeout`` (``config.run.timeout_minutes``), and ``cell`` marks a fan-out cell, which
    gets ``@catch`` when ``run.on_cell_failure`` is ``continue``: the run goes on, the cell's
    exception is kept in the artifact ``cell_failure`` and the report lists the failed cells. With
    ``stop`` (the default) a failing cell fails the run, which can be resumed.
    """

    def init(self, table: dict[str, str]) -> None:
        self.table = {name: spec.split() for name, spec in table.items()}

    def pre_mutate(self, mutable_flow) -> None:
        from metaflow import catch, environment, resources, retry, timeout

        config = mutable_flow.config
        run = config.get("run", {})
        for name, s in mutable_flow.steps:
            group, *flags = self.table.get(name, ["join"])
            res = config["resources"][group]
            s.add_decorator(resources, deco_kwargs={k: res[k] for k in ("cpu", "memory", "gpu") if k in res})
            if res.get("blas_threads"):
                s.add_decorator(environment, deco_kwargs={"vars": {"OPENBLAS_NUM_THREADS": str(res["blas_threads"])}})
            if "retry" in flags:
                s.add_decorator(retry, deco_kwargs={"times": run["retries"],
                                                    "minutes_between_retries": run["minutes_between_retries"]})
            if "timeout" in flags:
                s.add_decorator(timeout, deco_kwargs={"minutes": run["timeout_minutes"]})
            if "cell" in flags and run.get("on_cell_failure", "stop") == "continue":
                s.add_decorator(catch, deco_kwargs={"var": CELL_FAILURE, "print_exception": True})
