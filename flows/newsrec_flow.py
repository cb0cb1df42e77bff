"""NewsRecFlow: train NRMS and NRMSDocVec on EB-NeRD (TensorFlow), dump the test split's logits and run
AlignFlow's alignment grid on each model's dump (details: README).

    python flows/newsrec_flow.py run                                   # embedded synthetic EB-NeRD (demo config)
    python flows/newsrec_flow.py --config config configs/newsrec_quick.yaml run
    python flows/newsrec_flow.py --config config configs/newsrec_nrms_docvec_ebnerd_small.yaml run --data-root ~/ebnerd
    python flows/newsrec_flow.py resume --origin-run-id <RUN_ID>

start → foreach (model, seed): train → dump → prepare_alignment → foreach target → foreach method: evaluate → join_methods → join_targets → join_datasets → report → end
"""

from metaflow import Config, Parameter, card, step

from configs import config_path
from recalign.fanout import AlignFanOut
from recalign.cards import images, newsrec_card
from recalign.flow import RecalignFlow, step_groups
from recalign.joins import model_alignment, model_files, model_training
from steps.faults import maybe_fail
from steps.newsrec.config import NewsRecConfig, seed_label
from steps.newsrec.pipeline import dump_model, dump_targets, export_metadata, prepare_model_dump, train_model
from steps.newsrec.prepare import prepare_news_data, publish_news_data, resolve_data_root
from steps.newsrec.report import alignment_reports, export_parts

# Artifacts every model branch carries through the alignment joins.
CARRIED = ["storage", "data", "data_summary", "model", "model_name", "seed", "model_artifact", "curves", "model_metrics", "prediction_file", "submission_file",
           "prepared", "target", "model_distribution", "target_names", "candidates_file"]


@step_groups({"start": "start retry timeout", "train": "train retry timeout", "dump": "dump retry timeout",
              "prepare_alignment": "align retry", "evaluate": "align retry timeout cell", "report": "report"})
class NewsRecFlow(AlignFanOut, RecalignFlow):
    """NRMS / NRMSDocVec on EB-NeRD → logit dumps → NAILS / Steck alignment of each model's dump."""

    config = Config("config", default=config_path("newsrec_demo.yaml"), parser="steps.newsrec.config.parse_newsrec_config")
    parse_config = NewsRecConfig.from_dict
    data_root = Parameter("data-root", default="", help="EB-NeRD folder (ebnerd_small/, ebnerd_testset/, artifacts/); empty = synthetic")
    split = Parameter("split", default="", help="EB-NeRD bundle under --data-root (ebnerd_demo, ebnerd_small, ebnerd_large); default: config data.bundle")
    align_section, carried_artifacts = "align", CARRIED

    @step
    def start(self):
        """Read (or synthesise) EB-NeRD, validate every file, tokenise, write the model inputs."""
        cfg = self.cfg
        self.storage = self.new_storage()
        root, bundle, synthetic = resolve_data_root(self.data_root, cfg, self.storage.dir("synthetic"), self.split)
        data = prepare_news_data(root, bundle, synthetic, cfg, self.storage.dir("prepared"))
        self.data = publish_news_data(data, self.storage)
        self.data_summary = data.summary()
        print(self.data_summary)
        self.models = cfg.model_names
        self.train_cells = cfg.train_cells  # (model, training seed)
        self.next(self.train, foreach="train_cells")

    @step
    def train(self):
        """Fit one model with one training seed: Wu et al. samples, early stopping on validation AUC;
        keep the best weights. ``model`` is the branch label (the model name with one seed)."""
        cfg = self.cfg
        self.model_name, self.seed = self.input
        self.model = seed_label(self.model_name, self.seed, cfg.several_seeds)
        maybe_fail("train", self.model)
        self.curves, self.validation_metrics, self.model_artifact = train_model(self.data, self.model_name, cfg, self.seed, self.storage)
        self.next(self.dump)

    @step
    def dump(self):
        """Score the test split with the best weights (logits), evaluate where labels exist, write the dump."""
        self.prediction_file, self.submission_file, self.candidates_file, self.model_metrics = dump_model(
            self.data, self.model_artifact, self.model_name, self.model, self.seed, self.validation_metrics, self.cfg, self.storage)
        print(self.model_metrics)
        self.next(self.prepare_alignment)

    @step
    def prepare_alignment(self):
        """Hand the dump to AlignFlow's loader and targets (the same code, not a copy)."""
        acfg = self.align_cfg
        self.dataset, self.kind, self.cell_prefix = self.model, "ebnerd", f"{self.model}/"  # the fan-out's dataset: this dump
        self.prepared = prepare_model_dump(self.prediction_file, self.data.articles_path, self.storage.dir("align", self.model),
                                           acfg, self.storage)
        self.targets, self.target, self.model_distribution, self.target_names = dump_targets(self.prepared, acfg)
        self.next(self.per_target, foreach="target_names")

    # per_target → evaluate → join_methods → join_targets: AlignFanOut (recalign/fanout.py)

    @step
    def join_datasets(self, inputs):
        """Collect every model: accuracy (and over seeds), curves, dumps, and the alignment tables with a model
        column (Holm across the run)."""
        self.merge_artifacts(inputs, include=["storage", "data", "data_summary"])
        self.train_metrics, self.train_metrics_by_seed, self.training_curves = model_training(inputs, self.cfg.several_seeds)
        (self.predictions, self.candidates, self.model_submission_files, self.model_artifacts, self.targets_by_model,
         self.model_distribution) = model_files(inputs)
        (self.results, self.replicates, self.category_mix, self.user_kl_hist, self.alignment_submissions,
         self.failed_cells) = model_alignment(inputs, self.cfg.align.uncertainty)
        self.articles_path = self.data.articles_path
        self.next(self.report)

    @card(type="blank", id="report")
    @step
    def report(self):
        """Training curves, accuracy table, each model's alignment figures; export to artifacts/NewsRecFlow/<run_id>/."""
        alignment = alignment_reports(self.results, self.category_mix, self.user_kl_hist, self.alignment_submissions, self.cfg.align)
        parts = export_parts(self.train_metrics, self.training_curves, self.predictions, self.model_submission_files, alignment,
                             self.train_metrics_by_seed)
        self.export_dir = self.export(*parts, **export_metadata(self.model_artifacts, self.predictions))
        newsrec_card(self, {m: images(rep.figures) for m, (_, rep, _) in alignment.items()})  # drawn once, for the export
        self.next(self.end)

    @step
    def end(self):
        """Print the accuracy table and where the results are."""
        print(self.train_metrics)
        print(self.results.select(["model", "distribution", "method", "selection", "lambda", "kl_at_n", "coverage_at_n", "auc"]))
        print(f"Exported to {self.export_dir}")


if __name__ == "__main__":
    NewsRecFlow()
