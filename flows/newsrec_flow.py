"""NewsRecFlow: train NRMS and NRMSDocVec on EB-NeRD (TensorFlow), score the test split with logits,
dump the predictions, and run the alignment grid of AlignFlow on each model's dump.

    python flows/newsrec_flow.py run                                   # embedded synthetic EB-NeRD (demo config)
    python flows/newsrec_flow.py --config config configs/newsrec_quick.yaml run
    python flows/newsrec_flow.py --config config configs/newsrec_nrms_docvec_ebnerd_small.yaml run --data-root ~/ebnerd
    python flows/newsrec_flow.py resume --origin-run-id <RUN_ID>

start (synthesise or read EB-NeRD, validate, tokenise) → foreach (model, training seed) → train (early stopping on
validation AUC) → dump (score the test split, evaluate, write dump + submission) → prepare_alignment
→ foreach target → foreach method → evaluate → join_methods → join_targets → join_datasets → report → end

With one training seed (``seeds`` not set: ``[seed]``) a branch is labelled by its model name; with
several, ``<model>@<seed>`` (fault names ``train:nrms@7``, file names, the ``model`` column of the
alignment tables); ``train_metrics`` keeps the model name with a ``seed`` column, and
``train_metrics_by_seed`` aggregates it over the seeds (mean, sd, Student-t interval).
"""

import os

import polars as pl

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from metaflow import Config, Parameter, card, step  # noqa: E402

from configs import config_path  # noqa: E402
from recalign.fanout import AlignFanOut  # noqa: E402
from recalign.cards import images, newsrec_card  # noqa: E402
from recalign.flow import RecalignFlow, step_groups  # noqa: E402
from steps.align.data import prepare_dump  # noqa: E402
from steps.align.pipeline import model_distribution_dict, run_results  # noqa: E402
from steps.align.targets import resolve_target  # noqa: E402
from steps.bundles import publish_bundle  # noqa: E402
from steps.faults import maybe_fail  # noqa: E402
from steps.newsrec.candidates import news_candidates  # noqa: E402
from steps.newsrec.config import NewsRecConfig, seed_label  # noqa: E402
from steps.newsrec.prepare import prepare_news_data, publish_news_data, resolve_data_root  # noqa: E402
from steps.newsrec.report import (alignment_reports, export_parts, train_metrics_by_seed, train_metrics_rows,  # noqa: E402
                                  with_model)
from steps.storage import localize, localize_input, map_refs  # noqa: E402
from steps.tables import concat  # noqa: E402

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

    @property
    def align_cfg(self):
        return self.cfg.align

    def carried(self) -> list[str]:
        return CARRIED

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
        from steps.newsrec.train import build_for, configure_determinism, fit, save_best

        hp, seed = cfg.models[self.model_name], self.seed
        configure_determinism(seed)
        rec = build_for(self.data, self.model_name, hp, cfg.training, seed)
        outcome = fit(rec, self.data, cfg.training, seed, cfg.data.train_fraction, ties=cfg.ties)
        self.curves = outcome.curves.with_columns(pl.lit(seed, dtype=pl.Int64).alias("seed"))
        self.validation_metrics = outcome.best_validation
        models_dir = self.storage.dir("models", f"seed{seed}") if cfg.several_seeds else self.storage.dir("models")
        artifact = save_best(rec, models_dir, outcome.best_epoch, hp, cfg.training, seed)
        self.model_artifact = map_refs(artifact, self.storage.publish)
        self.next(self.dump)

    @step
    def dump(self):
        """Score the test split with the best weights (logits), evaluate where labels exist, write the dump."""
        from steps.newsrec.ebnerd import load_split
        from steps.newsrec.inference import evaluate_scores, score_split, write_dump
        from steps.newsrec.train import feature_table, load_best

        cfg = self.cfg
        rec = load_best(self.data, self.model_artifact, cfg.training)
        test = load_split(self.data.splits["test"])
        scores = score_split(rec, feature_table(self.data, self.model_name), self.data.histories("test").matrix, test,
                             cfg.training.eval_batch_users, cfg.training.score_chunk)
        out = self.storage.dir("predictions")
        dump, submission = write_dump(test, scores, out / f"{self.model}_test_scores.parquet",
                                      out / f"{self.model}_predictions.zip", cfg.data.batch_rows, cfg.ties)
        self.prediction_file, self.submission_file = self.storage.publish(dump), self.storage.publish(submission)
        bundle = news_candidates(self.data, test, scores, self.model, out / f"{self.model}_candidates", cfg.align.missing_category)
        self.candidates_file = publish_bundle(bundle, self.storage.publish) if bundle else None
        self.model_metrics = train_metrics_rows(self.model_name, self.model_artifact.best_epoch,
                                                {"validation": self.validation_metrics, "test": evaluate_scores(test, scores, cfg.ties)},
                                                self.seed)
        print(self.model_metrics)
        self.next(self.prepare_alignment)

    @step
    def prepare_alignment(self):
        """Hand the dump to AlignFlow's loader and targets (the same code, not a copy)."""
        acfg = self.align_cfg
        # the fan-out's dataset is this model's dump
        self.dataset, self.kind, self.cell_prefix = self.model, "ebnerd", f"{self.model}/"
        prepared = prepare_dump(localize(self.prediction_file).path, localize_input(self.data.articles_path),
                                self.storage.dir("align", self.model), acfg.exclude_categories, acfg.missing_category)
        self.prepared = map_refs(prepared, self.storage.publish)
        self.targets = [resolve_target(spec, self.prepared.candidate_categories) for spec in acfg.targets]
        self.target = {t.name: t.as_dict() for t in self.targets}
        self.model_distribution = model_distribution_dict(self.prepared)
        self.target_names = [t.name for t in self.targets]
        self.next(self.per_target, foreach="target_names")

    # per_target → evaluate → join_methods → join_targets: AlignFanOut (recalign/fanout.py)

    @step
    def join_datasets(self, inputs):
        """Collect every model: accuracy, curves, dumps, and the alignment tables with a model column."""
        self.merge_artifacts(inputs, include=["storage", "data", "data_summary"])
        self.train_metrics = concat([i.model_metrics for i in inputs])
        # the accuracy over training seeds, per model and split (none with one seed)
        self.train_metrics_by_seed = train_metrics_by_seed(self.train_metrics) if self.cfg.several_seeds else None
        self.training_curves = concat([i.curves for i in inputs])
        self.predictions = {i.model: i.prediction_file for i in inputs}
        self.candidates = {i.model: i.candidates_file for i in inputs if getattr(i, "candidates_file", None) is not None}
        self.model_submission_files = {i.model: i.submission_file for i in inputs}
        self.model_artifacts = {i.model: i.model_artifact for i in inputs}
        self.results = run_results([with_model(i.dataset_outputs.results, i.model, i.seed) for i in inputs])  # + Holm across the run
        self.category_mix = concat([with_model(i.dataset_outputs.category_mix, i.model) for i in inputs])
        self.user_kl_hist = concat([with_model(i.dataset_outputs.user_kl_hist, i.model) for i in inputs])
        self.alignment_submissions = {i.model: i.dataset_outputs.submissions for i in inputs}
        self.targets_by_model = {i.model: i.target for i in inputs}
        self.model_distribution = {i.model: i.model_distribution for i in inputs}
        self.articles_path = self.data.articles_path
        self.failed_cells = [f"{i.model}/{f}" for i in inputs for f in i.dataset_outputs.failed]
        self.next(self.report)

    @card(type="blank", id="report")
    @step
    def report(self):
        """Training curves, accuracy table, each model's alignment figures; export to artifacts/NewsRecFlow/<run_id>/."""
        alignment = alignment_reports(self.results, self.category_mix, self.user_kl_hist, self.alignment_submissions, self.cfg.align)
        card_figures = {m: images(rep.figures) for m, (_, rep, _) in alignment.items()}
        parts = export_parts(self.train_metrics, self.training_curves, self.predictions, self.model_submission_files, alignment,
                             self.train_metrics_by_seed)
        self.export_dir = self.export(*parts, models={m: a.version for m, a in self.model_artifacts.items()},
                                      predictions={m: {"path": r.path, "sha256": r.sha256, "rows": r.shape[0]}
                                                   for m, r in self.predictions.items()})
        newsrec_card(self, card_figures)
        self.next(self.end)

    @step
    def end(self):
        """Print the accuracy table and where the results are."""
        print(self.train_metrics)
        print(self.results.select(["model", "distribution", "method", "selection", "lambda", "kl_at_n", "coverage_at_n", "auc"]))
        print(f"Exported to {self.export_dir}")


if __name__ == "__main__":
    NewsRecFlow()
