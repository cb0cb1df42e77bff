"""TailFlow: semantic item-tail promotion — EASE, IPW, CVaR, adversarial re-weighting and popularity
re-ranking on MovieLens-20M, Netflix Prize and MSD or synthetic data (details: README).

    python flows/tail_flow.py run                                         # tiny synthetic data
    python flows/tail_flow.py --config config configs/tail_ml20m.yaml run  # real ML-20M ratings.csv
    python flows/tail_flow.py resume --origin-run-id <RUN_ID>

start → foreach dataset: prepare → foreach (method, seed) cell: train → join_methods → join_datasets → report → end
"""

from metaflow import Config, card, step

from configs import config_path
from recalign.cards import tail_card, images
from recalign.flow import RecalignFlow, step_groups
from recalign.joins import tail_dataset_parts, tail_method_parts
from steps.bundles import publish_bundle
from steps.faults import failed_cells, maybe_fail
from steps.storage import map_refs
from steps.tables import concat
from steps.tail.config import TailConfig
from steps.tail.data import prepare_dataset
from steps.tail.pipeline import RESULT_COLUMNS, add_baseline_deltas, item_groups, run_method, run_results, seed_table, sort_results
from steps.tail.report import build_figures, change_report, export_tables

CARRIED = ["storage", "dataset_names", "method_names", "cell_names"]
CARRIED_DATASET = CARRIED + ["prepared", "groups", "data_summary"]


@step_groups({"prepare": "prepare retry timeout", "train": "train retry timeout cell", "report": "report"})
class TailFlow(RecalignFlow):
    """Promote the item tail of an item-item recommender and measure what it costs in accuracy."""

    config = Config("config", default=config_path("tail_quick.yaml"), parser="steps.tail.config.parse_tail_config")
    parse_config = TailConfig.from_dict

    @step
    def start(self):
        """Validate the config; fan out over datasets."""
        cfg = self.cfg
        self.storage = self.new_storage()
        self.dataset_names = cfg.dataset_names
        self.method_names = cfg.method_names
        self.cell_names = cfg.cell_names  # (method, training seed) cells: the method alone with one seed
        self.next(self.prepare, foreach="dataset_names")

    @step
    def prepare(self):
        """Load (or synthesise) one dataset, apply the strong-generalisation split, cache it as files."""
        cfg = self.cfg
        maybe_fail("prepare", self.input)
        prepared = prepare_dataset(cfg.dataset(self.input), cfg.seed, self.storage.cache_dir())
        self.groups = item_groups(prepared, cfg)
        self.prepared = map_refs(prepared, self.storage.publish)
        self.data_summary = {**self.prepared.stats, "source": self.prepared.source, "raw": self.prepared.raw_path,
                             **self.groups.summary(self.prepared.item_counts)}
        print(self.input, self.data_summary)
        self.next(self.train, foreach="cell_names")

    @step
    def train(self):
        """Fit one method with one training seed (early stopping on validation), then score
        validation and test users (with intervals; the test users' values go to the join)."""
        cfg = self.cfg
        maybe_fail("train", f"{self.prepared.name}/{self.input}")
        method, seed = cfg.cell(self.input)
        outcome = run_method(self.prepared, self.groups, method, cfg, self.storage.dir("lists"), seed=seed)
        # part_per_user: steps.tail.evaluate.UserValues (test users × a few metrics, lists)
        self.part_cell, self.part_per_user, self.part_results = (method.name, seed), outcome.per_user, outcome.results
        self.part_buckets, self.part_history = outcome.buckets, outcome.history
        self.part_files = map_refs({"lists": outcome.lists, "model": outcome.model}, self.storage.publish)
        self.part_candidates = publish_bundle(outcome.candidates, self.storage.publish) if outcome.candidates else None
        print(outcome.results.select(RESULT_COLUMNS[:11]))
        self.next(self.join_methods)

    @step
    def join_methods(self, inputs):
        """Collect the cells of one dataset; each method's paired differences against EASE of the same seed."""
        self.merge_artifacts(inputs, include=CARRIED_DATASET)
        self.part_failed = failed_cells(inputs, lambda i: f"{i.prepared.name}/{i.input}")
        per_user, results, self.part_buckets, self.part_history, self.part_files, self.part_candidates = \
            tail_method_parts(inputs, self.prepared.name)
        self.part_results = add_baseline_deltas(results, per_user, self.prepared.n_items, self.cfg)
        self.next(self.join_datasets)

    @step
    def join_datasets(self, inputs):
        """Collect every dataset; Holm's correction over the whole run; the table over training seeds."""
        cfg = self.cfg
        self.merge_artifacts(inputs, include=CARRIED)
        self.results, self.replicates = run_results([i.part_results for i in inputs], cfg)  # replicates: recalign compare
        self.results_by_seed = seed_table(self.results, cfg)  # mean, sd, t interval over training seeds (or None)
        self.buckets = sort_results(concat([i.part_buckets for i in inputs]), self.dataset_names, self.method_names, cfg.seeds)
        # candidates: the bundles for AlignFlow (steps.bundles)
        (self.history, self.files, self.candidates, self.candidates_notes, self.data_summary,
         self.failed_cells) = tail_dataset_parts(inputs)
        self.next(self.report)

    @card(type="blank", id="report")
    @step
    def report(self):
        """Change against EASE, figures, the card, and the export to artifacts/TailFlow/<run_id>/."""
        self.change, self.statements = change_report(self.results, self.cfg.uncertainty.level)
        figures = build_figures(self.results, self.buckets, self.results_by_seed)
        tables = export_tables(self.results, self.buckets, self.history, self.change, self.results_by_seed)
        self.export_dir = self.export(tables, figures, statements=self.statements, failed_cells=self.failed_cells)
        tail_card(self, images(figures))  # the PNGs the export wrote (drawn once)
        self.next(self.end)

    @step
    def end(self):
        """Print where the results are."""
        cols = RESULT_COLUMNS[:11] if len(self.cfg.seeds) == 1 else [*RESULT_COLUMNS[:3], "seed", *RESULT_COLUMNS[3:11]]
        print(self.results.filter(self.results["split"] == "test").select(cols))
        print(*self.statements, f"Exported to {self.export_dir}", sep="\n")


if __name__ == "__main__":
    TailFlow()
