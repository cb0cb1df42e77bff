"""AlignFlow: NAILS, Steck's calibrated re-ranking and their combination, on news dumps and on any
recommender's candidate lists, toward global or per-user targets (details: README).

    python flows/align_flow.py run                                    # embedded synthetic EB-NeRD dump
    python flows/align_flow.py --config config configs/align_calibrate_ml100k.yaml run   # real MovieLens-100K, EASE
    python flows/align_flow.py run --predictions test_scores.parquet --articles articles.parquet
    python flows/align_flow.py run --predictions-from NewsRecFlow/<RUN_ID>        # or TailFlow/<RUN_ID>/<method>
    python flows/align_flow.py run --candidates path/to/bundle                    # your own model's lists
    python flows/align_flow.py resume --origin-run-id <RUN_ID>

start → foreach dataset: prepare → foreach target → foreach method: evaluate → join_methods → join_targets → join_datasets → report → end
"""

from metaflow import Config, Parameter, card, step

from configs import config_path
from recalign.fanout import AlignFanOut
from recalign.cards import align_card, images
from recalign.flow import RecalignFlow, step_groups
from recalign.joins import align_dataset_outputs, list_datasets
from recalign.runs import candidates_of_run, dump_source
from steps.align.config import AlignConfig
from steps.align.datasets import check_dataset_params, implicit_dataset
from steps.align.pipeline import build_reports, example_users, export_parts, prepare_dataset, run_results, summary_text, with_dataset
from steps.tables import concat

# Artifacts of a dataset's prepare step that the joins carry forward.
CARRIED = ["storage", "dataset", "kind", "inputs", "prepared", "input_files", "data_summary", "target",
           "model_distribution", "target_names", "several_datasets"]


@step_groups({"start": "start retry timeout", "prepare": "start retry timeout", "evaluate": "evaluate retry timeout cell",
              "report": "report"})
class AlignFlow(AlignFanOut, RecalignFlow):
    """Align a recommender's predictions toward target category distributions and measure the cost."""

    config = Config("config", default=config_path("align_nails_paper.yaml"), parser="steps.align.config.parse_align_config")
    parse_config = AlignConfig.from_dict
    predictions = Parameter("predictions", default="", help="Prediction dump (parquet, NAILS layout); empty = synthetic data from the config")
    articles = Parameter("articles", default="", help="EB-NeRD articles.parquet matching --predictions")
    predictions_from = Parameter("predictions-from", default="", help="Align a finished run's output: NewsRecFlow/<run_id>[/<model>], "
                                 "TailFlow/<run_id>/<method>, ExplainFlow/<run_id>")
    candidates = Parameter("candidates", default="", help="A candidate bundle folder (steps.candidates layout) to calibrate")
    carried_artifacts = CARRIED

    @step
    def start(self):
        """Which datasets this run aligns: the config's list, or one from the parameters."""
        cfg = self.cfg
        check_dataset_params(cfg.datasets, self.predictions, self.articles, self.predictions_from, self.candidates)
        self.storage = self.new_storage()
        self.datasets = list(cfg.datasets) or [implicit_dataset(self.predictions, self.articles, self.predictions_from, self.candidates)]
        self.dataset_names = [d["name"] for d in self.datasets]
        self.several_datasets = len(self.datasets) > 1
        self.next(self.prepare, foreach="dataset_names")

    @step
    def prepare(self):
        """Load (or synthesise / build) one dataset, validate every row, resolve the targets."""
        cfg = self.cfg
        spec = next(d for d in self.datasets if d["name"] == self.input)
        self.dataset, self.kind = spec["name"], spec["kind"]
        self.cell_prefix = f"{self.dataset}/" if self.several_datasets else ""
        p = prepare_dataset(spec, cfg, self.storage.dir("data", self.dataset), self.storage.publish, candidates_of_run, dump_source)
        self.prepared, self.inputs, self.input_files, self.data_summary = p.prepared, p.inputs, p.input_files, p.data_summary
        self.targets, self.target, self.model_distribution = p.targets, p.target, p.model_distribution
        for note in self.data_summary["notes"]:
            print("NOTE:", note)
        self.target_names = cfg.target_names_for(self.dataset)
        self.next(self.per_target, foreach="target_names")

    # per_target → evaluate → join_methods → join_targets: AlignFanOut (recalign/fanout.py)

    @step
    def join_datasets(self, inputs):
        """Every dataset's tables in one, with a ``dataset`` column; Holm's correction across the run."""
        self.merge_artifacts(inputs, include=["storage", "several_datasets"])
        parts = [(i.dataset, i.dataset_outputs) for i in inputs]
        # + Holm across the run; replicates: the bootstrap values recalign compare pairs on
        self.results, self.replicates = run_results([with_dataset(o.results, d) for d, o in parts], self.cfg.uncertainty)
        self.category_mix = concat([with_dataset(o.category_mix, d) for d, o in parts])
        self.user_kl_hist = concat([with_dataset(o.user_kl_hist, d) for d, o in parts])
        self.submissions = [s for _, o in parts for s in o.submissions]
        self.failed_cells = [f"{d}/{f}" if self.several_datasets else f for d, o in parts for f in o.failed]
        self.list_datasets, self.prepared_lists = list_datasets(inputs)
        self.inputs, self.data_summary, self.target, self.model_distribution = align_dataset_outputs(inputs, self.several_datasets)
        self.next(self.report)

    @card(type="blank", id="report")
    @step
    def report(self):
        """Best-λ comparison, figures, card, and the export to artifacts/AlignFlow/<run_id>/."""
        cfg = self.cfg
        examples, self.example_user_mix = example_users(self.prepared_lists, cfg, self.results)
        rep = build_reports(self.results, self.category_mix, self.user_kl_hist, cfg, self.list_datasets, examples)
        self.best_lambda, self.comparison = rep.best_lambda, rep.comparison
        tables = {"results": self.results, "comparison": self.comparison, "category_mix": self.category_mix,
                  "best_lambda": self.best_lambda}
        if self.example_user_mix.height:
            tables["example_user_mix"] = self.example_user_mix
        self.export_dir = self.export(*export_parts(tables, rep, self.submissions), failed_cells=self.failed_cells,
                                      target=self.target, model_distribution=self.model_distribution)
        align_card(self, images(rep.figures))  # the PNGs the export wrote (drawn once)
        self.next(self.end)

    @step
    def end(self):
        """Print where the results are."""
        print(summary_text(self.results, self.comparison))
        print(f"Exported to {self.export_dir}")


if __name__ == "__main__":
    AlignFlow()
