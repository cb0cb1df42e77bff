"""ExplainFlow: GRU4Rec (as in ReChorus) and event-level Shapley attributions of its top-K.

    python flows/explain_flow.py run                                       # synthetic data
    python flows/explain_flow.py --config config configs/explain_quick.yaml run
    python flows/explain_flow.py --config config configs/explain_ml1m.yaml run \
        --ml1m-ratings ml-1m/ratings.dat --ml1m-movies ml-1m/movies.dat
    python flows/explain_flow.py run --data-dir data/MovieLens_1M --checkpoint GRU4Rec.pt
    python flows/explain_flow.py resume --origin-run-id <RUN_ID>

start (data: ReChorus folder, ML-1M conversion or synthetic; validate) → foreach training seed
→ train (or load a checkpoint; HR/nDCG, GRU4Rec vs popularity) → join_seeds (metrics over seeds)
→ evaluate (the first seed's model: candidate bundle, pick users) → foreach user → explain
→ join → report (card, export) → end

``seeds`` (default ``[seed]``: one model, as before) retrains GRU4Rec per seed; ``model_metrics``
has a ``seed`` column and, with several seeds, ``model_metrics_by_seed`` its mean, sd and interval
over them. The attributions explain the first seed's model.
"""

from dataclasses import replace

from metaflow import Config, Parameter, card, step

from configs import config_path
from recalign.cards import explain_card, images
from recalign.flow import RecalignFlow, step_groups
from steps.explain.config import ExplainConfig
from steps.explain.data import user_consumed_items, user_histories
from steps.explain.attribute import explain_user, feature_codes
from steps.explain.model import check_checkpoint, save_checkpoint
from steps.explain.pipeline import (build_figures, check_settings_against_data, choose_users, efficiency_check,
                                     check_seeds_against_checkpoint, export_tables, fit_or_load, join_explanations,
                                     load_model, metrics_by_seed, recency_profile, resolve_dataset, store_dataset,
                                     with_seed)
from steps.explain.train import model_metrics
from steps.bundles import publish_bundle
from steps.explain.candidates import store_candidate_items, write_gru4rec_candidates
from steps.faults import failed_cells, maybe_fail
from steps.storage import map_refs
from steps.tables import concat

CARRIED = ["storage", "data", "data_summary", "model_file", "model_spec", "training_log", "model_metrics", "explain_user_ids",
           "candidates", "model_metrics_by_seed", "explained_seed"]


@step_groups({"start": "start retry timeout", "train": "train retry timeout", "evaluate": "train retry",
              "explain": "explain retry timeout cell", "report": "report"})
class ExplainFlow(RecalignFlow):
    """Which past interactions made GRU4Rec recommend a user's top-K? Shapley attributions."""

    config = Config("config", default=config_path("explain_synthetic.yaml"), parser="steps.explain.config.parse_explain_config")
    parse_config = ExplainConfig.from_dict
    data_dir = Parameter("data-dir", default="", help="ReChorus dataset folder (train.csv, dev.csv, test.csv, item_meta.csv)")
    ml1m_ratings = Parameter("ml1m-ratings", default="", help="MovieLens-1M ratings.dat, converted to ReChorus format")
    ml1m_movies = Parameter("ml1m-movies", default="", help="MovieLens-1M movies.dat (item genres for feature-level attributions)")
    checkpoint = Parameter("checkpoint", default="", help="ReChorus GRU4Rec state_dict to load instead of training")

    @step
    def start(self):
        """Read (or convert, or synthesise) the data in ReChorus' format and validate every row."""
        cfg = self.cfg
        self.storage = self.new_storage()
        data = resolve_dataset(cfg, self.data_dir, self.ml1m_ratings, self.ml1m_movies, self.storage.dir("input"),
                               self.checkpoint)
        check_settings_against_data(data, cfg)
        check_checkpoint(self.checkpoint, data.n_items)  # a bad checkpoint fails here, not in train
        check_seeds_against_checkpoint(cfg, self.checkpoint)
        self.data = map_refs(store_dataset(data, self.storage.dir("data")), self.storage.publish)
        items = store_candidate_items(data, self.storage.dir("data"),
                                      self.storage.dir("input", "ml100k") if cfg.data.source == "ml100k" else None)
        self.candidate_items = self.storage.publish(items) if items is not None else None
        self.data_summary = data.summary()
        print(self.data_summary)
        self.seeds = list(cfg.seeds)
        self.next(self.train, foreach="seeds")

    @step
    def train(self):
        """Train GRU4Rec with one training seed (early stopping on dev nDCG@5), or load a ReChorus
        checkpoint; HR@K / nDCG@K of this model and of the popularity ranker."""
        cfg, self.seed = self.cfg, int(self.input)
        data = self.data.load()
        model, log = fit_or_load(data, replace(cfg, seed=self.seed), self.checkpoint)
        self.training_log = with_seed(log, self.seed)
        folder = self.storage.dir("model", f"seed{self.seed}") if cfg.several_seeds else self.storage.dir("model")
        self.model_file = self.storage.publish(save_checkpoint(model, folder / "gru4rec.pt"))
        self.model_spec = model.spec
        # the saved weights, as the later steps load them
        self.model_metrics = with_seed(model_metrics(load_model(self.model_file), data, cfg), self.seed)
        print(self.model_metrics)
        self.next(self.join_seeds)

    @step
    def join_seeds(self, inputs):
        """The metrics of every seed (and over seeds); the first seed's model goes on to be explained."""
        cfg = self.cfg
        self.merge_artifacts(inputs, include=["storage", "data", "data_summary", "candidate_items"])
        by_seed = {i.seed: i for i in inputs}
        ordered = [by_seed[s] for s in cfg.seeds]  # the config's seed order
        self.model_metrics = concat([i.model_metrics for i in ordered])
        self.training_log = concat([i.training_log for i in ordered])
        self.model_metrics_by_seed = metrics_by_seed(self.model_metrics) if cfg.several_seeds else None
        first = ordered[0]
        self.explained_seed, self.model_file, self.model_spec = first.seed, first.model_file, first.model_spec
        self.next(self.evaluate)

    @step
    def evaluate(self):
        """The explained (first seed's) model: its candidate bundle; choose the users to explain."""
        cfg, data = self.cfg, self.data.load()
        model = load_model(self.model_file)
        # GRU4Rec's top-M for the test rows, for AlignFlow: {"gru4rec": FileRef of manifest.json} (steps.bundles)
        manifest = write_gru4rec_candidates(model, data, cfg.history_max, cfg.candidates_top_m, self.candidate_items,
                                            self.storage.dir("candidates", "gru4rec"), cfg.eval_batch_size)
        self.candidates = {"gru4rec": publish_bundle(manifest, self.storage.publish)} if manifest else {}
        self.explain_user_ids = choose_users(data, cfg)
        self.next(self.explain, foreach="explain_user_ids")

    @step
    def explain(self):
        """One user: top-K from the unperturbed history, then every estimator's attributions."""
        cfg, user = self.cfg, int(self.input)
        maybe_fail("explain", str(user))
        data = self.data.load()
        history = user_histories(data, [user], cfg.history_max)[user]
        model = load_model(self.model_file, cfg.explain_dtype)
        self.explanation = explain_user(model, user, history, cfg, feature_codes(data), user_consumed_items(data, user), data.n_items)
        self.next(self.join)

    @step
    def join(self, inputs):
        """Collect the users' attributions."""
        self.merge_artifacts(inputs, include=CARRIED)
        self.failed_cells = failed_cells(inputs, lambda i: f"user {i.input}")
        joined = join_explanations([i.explanation for i in inputs if hasattr(i, "explanation")])
        self.attributions = joined.attributions
        self.explained_users = joined.users
        self.feature_attributions = joined.features
        self.next(self.report)

    @card(type="blank", id="report")
    @step
    def report(self):
        """Figures, tables, the card, and the export to artifacts/ExplainFlow/<run_id>/."""
        self.recency = recency_profile(self.attributions)
        self.efficiency = efficiency_check(self.attributions, self.explained_users)
        figures = build_figures(self.attributions, self.explained_users, self.recency)
        card_figures = images(figures)
        tables = {"attributions": self.attributions, "explained_users": self.explained_users,
                  "feature_attributions": self.feature_attributions, "model_metrics": self.model_metrics,
                  "training_log": self.training_log, "recency": self.recency}
        if self.model_metrics_by_seed is not None:
            tables["model_metrics_by_seed"] = self.model_metrics_by_seed
        self.export_dir = self.export(export_tables(tables), figures, {"gru4rec.pt": self.model_file},
                                      model=vars(self.model_spec), explained_users=self.explain_user_ids,
                                      seeds=list(self.cfg.seeds), explained_seed=self.explained_seed)

        explain_card(self, card_figures)
        self.next(self.end)

    @step
    def end(self):
        """Print where the results are."""
        print(self.model_metrics)
        print(self.efficiency.select(["user_id", "estimator", "f_x", "f_baseline", "sum_attribution", "n_events_kept", "seconds"]))
        print(f"Exported to {self.export_dir}")


if __name__ == "__main__":
    ExplainFlow()
