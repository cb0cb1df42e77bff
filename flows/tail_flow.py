"""TailFlow: semantic item-tail promotion — EASE, IPW, CVaR tail optimisation, adversarial item
re-weighting and popularity re-ranking on MovieLens-20M, Netflix Prize and MSD (or synthetic data).

    python flows/tail_flow.py run                                         # tiny synthetic data
    python flows/tail_flow.py --config config configs/tail_ml20m.yaml run  # real ML-20M ratings.csv
    python flows/tail_flow.py resume --origin-run-id <RUN_ID>

start → foreach dataset: prepare (load or synthesise, split, cache) → foreach (method, training
seed) cell: train (early stopping on validation) and evaluate on test, with bootstrap intervals
→ join_methods (paired deltas against EASE of the same seed) → join_datasets (Holm over the run,
the table over seeds) → report (card, exports) → end

The train cells are the method names with one training seed (config ``seeds``, default
``[seed]``), else ``<method>@<seed>``.
"""

from metaflow import Config, card, step

from configs import config_path
from recalign.cards import tail_card, images
from recalign.flow import RecalignFlow, step_groups
from steps.faults import failed_cells, maybe_fail
from steps.bundles import publish_bundle
from steps.storage import map_refs
from steps.tables import concat
from steps.tail.config import TailConfig
from steps.tail.data import prepare_dataset
from steps.tail.pipeline import (RESULT_COLUMNS, add_baseline_deltas, item_groups, run_method, run_results, seed_table,
                                 sort_results)
from steps.tail.report import build_figures, change_sentences, change_vs_baseline

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
        self.part_cell = (method.name, seed)
        self.part_per_user = outcome.per_user  # steps.tail.evaluate.UserValues (test users × a few metrics, lists)
        self.part_results = outcome.results
        self.part_buckets = outcome.buckets
        self.part_history = outcome.history
        self.part_files = map_refs({"lists": outcome.lists, "model": outcome.model}, self.storage.publish)
        self.part_candidates = publish_bundle(outcome.candidates, self.storage.publish) if outcome.candidates else None
        print(outcome.results.select(RESULT_COLUMNS[:11]))
        self.next(self.join_methods)

    @step
    def join_methods(self, inputs):
        """Collect the cells of one dataset; each method's paired differences against EASE of the same seed."""
        self.merge_artifacts(inputs, include=CARRIED_DATASET)
        self.part_failed = failed_cells(inputs, lambda i: f"{i.prepared.name}/{i.input}")
        done = [i for i in inputs if hasattr(i, "part_results")]
        per_user = {i.part_cell: i.part_per_user for i in done}
        self.part_results = add_baseline_deltas(concat([i.part_results for i in done]), per_user, self.prepared.n_items,
                                                self.cfg)
        self.part_buckets = concat([i.part_buckets for i in done])
        self.part_history = concat([i.part_history for i in done])
        self.part_files = {f"{self.prepared.name}/{i.input}": i.part_files for i in done}
        self.part_candidates = {f"{self.prepared.name}/{i.input}": i.part_candidates for i in done
                                if getattr(i, "part_candidates", None) is not None}
        self.next(self.join_datasets)

    @step
    def join_datasets(self, inputs):
        """Collect every dataset; Holm's correction over the whole run; the table over training seeds."""
        cfg = self.cfg
        self.merge_artifacts(inputs, include=CARRIED)
        self.results = run_results([i.part_results for i in inputs], cfg)
        # with more than one training seed: mean, sd and t interval over the seeds (else None)
        self.results_by_seed = seed_table(self.results, cfg)
        self.buckets = sort_results(concat([i.part_buckets for i in inputs]), self.dataset_names, self.method_names,
                                    cfg.seeds)
        self.history = concat([i.part_history for i in inputs])
        self.files = {k: v for i in inputs for k, v in i.part_files.items()}
        # candidate bundles for AlignFlow: {"<dataset>/<method>": FileRef of manifest.json} (steps.bundles)
        self.candidates = {k: v for i in inputs for k, v in i.part_candidates.items()}
        self.candidates_notes = [f"{i.prepared.name} ({i.prepared.source}): no item genres, no candidate bundles"
                                 for i in inputs if i.prepared.items is None]
        self.data_summary = {i.prepared.name: i.data_summary for i in inputs}
        self.failed_cells = [f for i in inputs for f in i.part_failed]
        self.next(self.report)

    @card(type="blank", id="report")
    @step
    def report(self):
        """Change against EASE, figures, the card, and the export to artifacts/TailFlow/<run_id>/."""
        self.change = change_vs_baseline(self.results)
        alpha = 1 - self.cfg.uncertainty.level
        self.statements = change_sentences(self.change, alpha) if not self.change.is_empty() else []
        figures = build_figures(self.results, self.buckets)
        card_images = images(figures)
        tables = {"results": self.results, "buckets": self.buckets, "history": self.history, "change_vs_ease": self.change}
        if self.results_by_seed is not None:
            tables["results_by_seed"] = self.results_by_seed
        self.export_dir = self.export(tables, figures, statements=self.statements, failed_cells=self.failed_cells)

        tail_card(self, card_images)
        self.next(self.end)

    @step
    def end(self):
        """Print where the results are."""
        cols = RESULT_COLUMNS[:11] if len(self.cfg.seeds) == 1 else [*RESULT_COLUMNS[:3], "seed", *RESULT_COLUMNS[3:11]]
        print(self.results.filter(self.results["split"] == "test").select(cols))
        for s in self.statements:
            print(s)
        print(f"Exported to {self.export_dir}")


if __name__ == "__main__":
    TailFlow()
