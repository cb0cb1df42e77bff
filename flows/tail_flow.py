"""TailFlow: semantic item-tail promotion — EASE, IPW, CVaR tail optimisation, adversarial item
re-weighting and popularity re-ranking on MovieLens-20M, Netflix Prize and MSD (or synthetic data).

    python flows/tail_flow.py run                                         # tiny synthetic data
    python flows/tail_flow.py --config config configs/tail_ml20m.yaml run  # real ML-20M ratings.csv
    python flows/tail_flow.py resume --origin-run-id <RUN_ID>

start → foreach dataset: prepare (load or synthesise, split, cache) → foreach method: train
(early stopping on validation) and evaluate on test → join_methods → join_datasets
→ report (card, exports) → end
"""

from pathlib import Path

from metaflow import Config, FlowSpec, Parameter, card, current, step
from metaflow.cards import Image, Markdown, Table

from steps.align.pipeline import results_markdown
from steps.faults import maybe_fail
from steps.storage import run_dir
from steps.tail.config import TailConfig
from steps.tail.data import prepare_dataset
from steps.tail.pipeline import RESULT_COLUMNS, concat, item_groups, run_method, sort_results
from steps.tail.report import build_figures, change_sentences, change_vs_baseline, export_run

DEFAULT_CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "tail_quick.yaml")
CARRIED = ["dataset_names", "method_names"]
CARRIED_DATASET = CARRIED + ["prepared", "groups", "data_summary"]


class TailFlow(FlowSpec):
    """Promote the item tail of an item-item recommender and measure what it costs in accuracy."""

    config = Config("config", default=DEFAULT_CONFIG, parser="steps.tail.config.parse_tail_config")
    artifacts_dir = Parameter("artifacts-dir", default="artifacts", help="Where tables and figures are exported")
    storage_root = Parameter("storage-root", default="", help="Folder for the data cache and large files (default .recalign)")

    @step
    def start(self):
        """Validate the config; fan out over datasets."""
        cfg = TailConfig.from_dict(self.config.to_dict())
        self.dataset_names = cfg.dataset_names
        self.method_names = cfg.method_names
        self.next(self.prepare, foreach="dataset_names")

    @step
    def prepare(self):
        """Load (or synthesise) one dataset, apply the strong-generalisation split, cache it as files."""
        cfg = TailConfig.from_dict(self.config.to_dict())
        maybe_fail("prepare", self.input)
        self.prepared = prepare_dataset(cfg.dataset(self.input), cfg.seed, root=self.storage_root or None)
        self.groups = item_groups(self.prepared, cfg)
        self.data_summary = {**self.prepared.stats, "source": self.prepared.source, "raw": self.prepared.raw_path,
                             **self.groups.summary(self.prepared.item_counts)}
        print(self.input, self.data_summary)
        self.next(self.train, foreach="method_names")

    @step
    def train(self):
        """Fit one method (early stopping on validation), then score validation and test users."""
        cfg = TailConfig.from_dict(self.config.to_dict())
        maybe_fail("train", f"{self.prepared.name}/{self.input}")
        out_dir = run_dir(current.flow_name, current.run_id, "lists", root=self.storage_root or None)
        outcome = run_method(self.prepared, self.groups, cfg.method(self.input), cfg, out_dir)
        self.part_results = outcome.results
        self.part_buckets = outcome.buckets
        self.part_history = outcome.history
        self.part_files = {"lists": outcome.lists, "model": outcome.model}
        self.item_weights = outcome.item_weights
        print(outcome.results.select(RESULT_COLUMNS[:11]))
        self.next(self.join_methods)

    @step
    def join_methods(self, inputs):
        """Collect the methods of one dataset."""
        self.merge_artifacts(inputs, include=CARRIED_DATASET)
        self.part_results = concat([i.part_results for i in inputs])
        self.part_buckets = concat([i.part_buckets for i in inputs])
        self.part_history = concat([i.part_history for i in inputs])
        self.part_files = {f"{self.prepared.name}/{i.input}": i.part_files for i in inputs}
        self.next(self.join_datasets)

    @step
    def join_datasets(self, inputs):
        """Collect every dataset."""
        self.merge_artifacts(inputs, include=CARRIED)
        self.results = sort_results(concat([i.part_results for i in inputs]), self.dataset_names, self.method_names)
        self.buckets = sort_results(concat([i.part_buckets for i in inputs]), self.dataset_names, self.method_names)
        self.history = concat([i.part_history for i in inputs])
        self.files = {k: v for i in inputs for k, v in i.part_files.items()}
        self.data_summary = {i.prepared.name: i.data_summary for i in inputs}
        self.next(self.report)

    @card(type="blank", id="report")
    @step
    def report(self):
        """Change against EASE, figures, the card, and the export to artifacts/TailFlow/<run_id>/."""
        cfg = TailConfig.from_dict(self.config.to_dict())
        self.change = change_vs_baseline(self.results)
        self.statements = change_sentences(self.change) if not self.change.is_empty() else []
        figures = build_figures(self.results, self.buckets)
        card_images = {name: Image.from_matplotlib(fig) for name, fig in figures.items()}
        tables = {"results": self.results, "buckets": self.buckets, "history": self.history, "change_vs_ease": self.change}
        summary = {"run": current.pathspec, "config": cfg.as_dict(), "data": self.data_summary, "statements": self.statements}
        self.export_dir = str(export_run(Path(self.artifacts_dir) / current.flow_name / current.run_id, tables, figures, summary))

        c = current.card["report"]
        c.append(Markdown(f"# TailFlow `{current.run_id}` — {cfg.name}"))
        for name, d in self.data_summary.items():
            c.append(Markdown(
                f"**{name}** ({d['source']}): {d['train_users']:,} training users, {d['items']:,} items, "
                f"{d['train_interactions']:,} training interactions; {d['valid_users_evaluable']:,} validation and "
                f"{d['test_users_evaluable']:,} test users evaluated; tail = {d['tail_items']:,} items holding "
                f"{d['tail_interaction_share']:.1%} of the training interactions."
            ))
        c.append(Markdown("## Accuracy and coverage against EASE (test users)"))
        c.append(Markdown("\n".join(f"* {s}" for s in self.statements) or "No EASE baseline in this run."))
        cols = RESULT_COLUMNS[:11]
        c.append(Markdown("## Results"))
        c.append(Table(results_markdown(self.results, cols), headers=cols))
        for title, name in (("Accuracy against coverage", "accuracy_vs_coverage.png"),
                            ("Exposure by popularity bucket, before (EASE) and after promotion", "exposure_by_popularity.png"),
                            ("Item-level Recall@20 by popularity bucket", "item_recall_by_popularity.png")):
            c.append(Markdown(f"## {title}"))
            c.append(card_images[name])
        self.next(self.end)

    @step
    def end(self):
        """Print where the results are."""
        print(self.results.filter(self.results["split"] == "test").select(RESULT_COLUMNS[:11]))
        for s in self.statements:
            print(s)
        print(f"Exported to {self.export_dir}")


if __name__ == "__main__":
    TailFlow()
