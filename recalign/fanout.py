"""The alignment fan-out over one dataset (target → method → joins), shared by AlignFlow and
NewsRecFlow: Metaflow builds a flow's graph from every step its class has, inherited ones too."""

from __future__ import annotations

import polars as pl
from metaflow import step

from steps.align.datasets import LIST_KINDS
from steps.align.evaluate import evaluate_method, target_layout, target_mix
from steps.align.lists import evaluate_lists, list_target_mix, resolve_list_target
from steps.align.pipeline import MethodOutputs, combine_targets, publish_outcome
from steps.faults import failed_cells, maybe_fail
from steps.tables import concat


def gather_method_outputs(tasks, target_mix_rows: pl.DataFrame) -> MethodOutputs:
    """Join the ``outcome`` (:class:`steps.align.evaluate.MethodOutcome`) of a target's per-method
    tasks (Metaflow join inputs); tasks that failed under ``@catch`` are listed in ``failed``."""
    done = [t.outcome for t in tasks if hasattr(t, "outcome")]
    return MethodOutputs(
        results=concat([o.results for o in done]),
        category_mix=concat([target_mix_rows] + [o.category_mix for o in done]),
        user_kl_hist=concat([o.user_kl_hist for o in done]),
        submissions=[s for o in done for s in o.submissions],
        failed=failed_cells(tasks, lambda t: f"{t.target_name}/{t.input}"),
    )


class AlignFanOut:
    """per_target → evaluate → join_methods → join_targets → join_datasets, over one dataset.

    The flow's step before ``per_target`` (a foreach over ``target_names``) sets ``storage``,
    ``dataset``, ``kind`` (``ebnerd`` or a candidate-list kind), ``prepared``, ``cell_prefix`` (how
    a failed cell is named) and, for a dump, ``targets``; the flow sets ``carried_artifacts`` (what
    the joins keep), ``align_section`` when its AlignConfig is a section of its config, and defines
    the ``join_datasets`` step.
    """

    #: The config's section that is the AlignConfig (None: the whole config is one).
    align_section: str | None = None
    #: The artifacts the joins keep.
    carried_artifacts: tuple = ()

    @property
    def align_cfg(self):
        return self.cfg if self.align_section is None else getattr(self.cfg, self.align_section)

    @step
    def per_target(self):
        """Lay the target over the dataset's categories (or candidate lists); fan out over methods."""
        acfg = self.align_cfg
        self.target_name = self.input
        if self.kind in LIST_KINDS:
            cs = self.prepared.load()
            spec = acfg.target_spec_for(self.dataset, self.input)
            self.target_mix_rows = list_target_mix(resolve_list_target(spec, cs, acfg.missing_history), cs)
        else:
            self.layout = target_layout(self.prepared, next(t for t in self.targets if t.name == self.input),
                                        acfg.unknown_category_weight)
            self.target_mix_rows = target_mix(self.layout)
        self.methods = list(acfg.methods)
        self.next(self.evaluate, foreach="methods")

    @step
    def evaluate(self):
        """One method toward one target over the λ grid: BA / calibration metrics, accuracy, submissions."""
        acfg, method = self.align_cfg, self.input
        maybe_fail("evaluate", f"{self.cell_prefix}{self.target_name}/{method}")
        if self.kind in LIST_KINDS:
            cs = self.prepared.load()
            target = resolve_list_target(acfg.target_spec_for(self.dataset, self.target_name), cs, acfg.missing_history)
            outcome = evaluate_lists(cs, target, method, acfg, self.dataset)
            for note in outcome.notes:
                print("NOTE:", note)
        else:
            outcome = evaluate_method(self.prepared, self.layout, method, acfg, self.storage.dir("submissions", self.dataset))
        self.outcome = publish_outcome(outcome, self.storage)
        self.next(self.join_methods)

    @step
    def join_methods(self, inputs):
        """Collect the methods of one target."""
        self.merge_artifacts(inputs, include=list(self.carried_artifacts))
        self.gathered = gather_method_outputs(inputs, inputs[0].target_mix_rows)
        self.notes = sorted({n for i in inputs for n in getattr(getattr(i, "outcome", None), "notes", ())})
        self.next(self.join_targets)

    @step
    def join_targets(self, inputs):
        """Collect every target of one dataset."""
        self.merge_artifacts(inputs, include=list(self.carried_artifacts))
        self.dataset_outputs = combine_targets([i.gathered for i in inputs], self.target_names)
        self.notes = [n for i in inputs for n in i.notes]
        self.next(self.join_datasets)
