"""AlignFlow: NAILS, Steck's calibrated re-ranking and their combination on a prediction dump.

    python flows/align_flow.py run                                    # embedded synthetic data
    python flows/align_flow.py --config config configs/quick.yaml run
    python flows/align_flow.py run --predictions test_scores.parquet --articles articles.parquet
    python flows/align_flow.py run --predictions-from NewsRecFlow/<RUN_ID>        # a NewsRecFlow dump
    python flows/align_flow.py resume --origin-run-id <RUN_ID>

start (load or synthesise, validate) → foreach target → foreach method → evaluate (λ grid)
→ join_methods → join_targets → report (card, exports) → end
"""

from metaflow import Config, FlowSpec, Parameter, card, current, step
from metaflow.cards import Image, Markdown, Table

from configs import config_path
from recalign.flowtools import catch_cells, resources_from, retry_from_config, timeout_from_config
from recalign.runs import dump_source
from steps.align.config import AlignConfig
from steps.align.data import input_refs, prepare_dump
from steps.align.evaluate import RESULT_COLUMNS, evaluate_method, target_layout, target_mix
from steps.align.pipeline import (
    build_report,
    data_summary,
    export_run,
    combine_targets,
    gather_method_outputs,
    model_distribution_dict,
    publish_outcome,
    resolve_inputs,
    summary_text,
)
from steps.align.targets import resolve_target
from steps.faults import maybe_fail
from steps.tables import table_rows
from steps.storage import RunStorage, map_refs

# Artifacts of the start step that the joins carry forward.
CARRIED = ["storage", "inputs", "prepared", "input_files", "data_summary", "target", "model_distribution", "target_names"]
DEFAULT_CONFIG = config_path("nails_paper.yaml")


class AlignFlow(FlowSpec):
    """Align a recommender's predictions toward target category distributions and measure the cost."""

    config = Config("config", default=DEFAULT_CONFIG, parser="steps.align.config.parse_align_config")
    predictions = Parameter(
        "predictions", default="", help="Prediction dump (parquet, NAILS layout); empty = synthetic data from the config"
    )
    articles = Parameter("articles", default="", help="EB-NeRD articles.parquet matching --predictions")
    predictions_from = Parameter(
        "predictions-from", default="", help="Align the dump of a finished run: NewsRecFlow/<run_id>[/<model>] (default model nrms_docvec)"
    )
    artifacts_dir = Parameter("artifacts-dir", default="artifacts", help="Where tables, figures and submissions are exported")
    storage_root = Parameter("storage-root", default="", help="Folder for large intermediate files (default .recalign)")

    @resources_from("start")
    @retry_from_config()
    @timeout_from_config()
    @step
    def start(self):
        """Load (or synthesise) the dump, validate every row, resolve the targets."""
        cfg = AlignConfig.from_dict(self.config.to_dict())
        self.storage = RunStorage.for_run(current.flow_name, current.run_id, self.storage_root or None)
        data_dir = self.storage.dir("data")
        predictions, articles = dump_source(self.predictions_from, self.predictions, self.articles)
        self.inputs = resolve_inputs(predictions, articles, cfg.synthetic, data_dir)
        prepared = prepare_dump(
            self.inputs.predictions, self.inputs.articles, data_dir / "prepared",
            cfg.exclude_categories, cfg.missing_category,
        )
        self.prepared = map_refs(prepared, self.storage.publish)
        self.input_files = input_refs(prepared)
        self.data_summary = data_summary(prepared)
        for note in self.prepared.notes:
            print("NOTE:", note)
        targets = [resolve_target(spec, self.prepared.candidate_categories) for spec in cfg.targets]
        self.target = {t.name: t.as_dict() for t in targets}
        self.model_distribution = model_distribution_dict(self.prepared)
        self.targets = targets
        self.target_names = [t.name for t in targets]
        self.next(self.per_target, foreach="target_names")

    @resources_from("join")
    @step
    def per_target(self):
        """Lay the target over the dump's categories; fan out over methods."""
        cfg = AlignConfig.from_dict(self.config.to_dict())
        target = next(t for t in self.targets if t.name == self.input)
        self.layout = target_layout(self.prepared, target, cfg.unknown_category_weight)
        self.methods = list(cfg.methods)
        self.next(self.evaluate, foreach="methods")

    @catch_cells
    @resources_from("evaluate")
    @retry_from_config()
    @timeout_from_config()
    @step
    def evaluate(self):
        """One method toward one target over the λ grid: BA metrics, accuracy, submissions."""
        cfg = AlignConfig.from_dict(self.config.to_dict())
        method = self.input
        maybe_fail("evaluate", f"{self.layout.target.name}/{method}")
        outcome = evaluate_method(self.prepared, self.layout, method, cfg, self.storage.dir("submissions"))
        self.outcome = publish_outcome(outcome, self.storage)
        self.next(self.join_methods)

    @resources_from("join")
    @step
    def join_methods(self, inputs):
        """Collect the methods of one target."""
        self.merge_artifacts(inputs, include=CARRIED)
        self.gathered = gather_method_outputs(inputs, target_mix(inputs[0].layout))
        self.next(self.join_targets)

    @resources_from("join")
    @step
    def join_targets(self, inputs):
        """Collect every target; keep the start step's artifacts."""
        self.merge_artifacts(inputs, include=CARRIED)
        combined = combine_targets([i.gathered for i in inputs], self.target_names)
        self.results, self.category_mix, self.user_kl_hist = combined.results, combined.category_mix, combined.user_kl_hist
        self.submissions, self.failed_cells = combined.submissions, combined.failed
        self.next(self.report)

    @card(type="blank", id="report")
    @resources_from("report")
    @step
    def report(self):
        """Best-λ comparison, figures, card, and the export to artifacts/AlignFlow/<run_id>/."""
        cfg = AlignConfig.from_dict(self.config.to_dict())
        rep = build_report(self.results, self.category_mix, self.user_kl_hist, cfg)
        self.best_lambda = rep.best_lambda
        self.comparison = rep.comparison
        export_dir = f"{self.artifacts_dir.rstrip('/')}/{current.flow_name}/{current.run_id}"
        summary = {"run": current.pathspec, "config": cfg.as_dict(), "data": self.data_summary,
                   "failed_cells": self.failed_cells,
                   "target": self.target, "model_distribution": self.model_distribution}
        tables = {"results": self.results, "comparison": self.comparison, "category_mix": self.category_mix,
                  "best_lambda": self.best_lambda}
        card_figures = {name: Image.from_matplotlib(fig) for name, fig in rep.figures.items()}
        self.export_dir = export_run(export_dir, tables, rep, self.submissions, summary, self.storage.dir("report"))

        c = current.card["report"]
        c.append(Markdown(f"# AlignFlow `{current.run_id}` — {cfg.name}"))
        c.append(Markdown(
            f"Data: {self.data_summary['beyond_accuracy_rows']:,} beyond-accuracy rows × "
            f"{self.data_summary['candidates']} candidates, {self.data_summary['impressions']:,} impressions "
            f"({self.data_summary['labelled_impressions']:,} labelled){' — synthetic' if self.inputs.synthetic else ''}. "
            f"Top-N = {cfg.top_n}, α = {cfg.alpha:g}, repeats = {cfg.repeats}. Exported to `{self.export_dir}`."
        ))
        for note in self.data_summary["notes"]:
            c.append(Markdown(f"**Note:** {note}"))
        if self.failed_cells:
            c.append(Markdown("**Failed cells (the grid is partial):**\n\n" + "\n".join(f"- `{f}`" for f in self.failed_cells)))
        cols = [col for col in RESULT_COLUMNS if not col.endswith("_sd") and col != "n_repeats"]
        c.append(Markdown("## Results"))
        c.append(Table(table_rows(self.results, cols), headers=cols))
        c.append(Markdown("## Best λ per method"))
        c.append(Table(table_rows(self.best_lambda), headers=self.best_lambda.columns))
        for title, name in (("KL@N against λ", "kl_vs_lambda.png"), ("Category mix at the best λ", "category_mix.png"),
                            ("User-level KL density", "user_kl_density.png"), ("Accuracy against KL@N", "accuracy_vs_kl.png")):
            c.append(Markdown(f"## {title}"))
            c.append(card_figures[name])
        self.next(self.end)

    @resources_from("join")
    @step
    def end(self):
        """Print where the results are."""
        print(summary_text(self.results, self.comparison))
        print(f"Exported to {self.export_dir}")


if __name__ == "__main__":
    AlignFlow()
