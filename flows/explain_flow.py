"""ExplainFlow: GRU4Rec (as in ReChorus) and event-level Shapley attributions of its top-K (details: README).

    python flows/explain_flow.py run                                       # synthetic data
    python flows/explain_flow.py --config config configs/explain_quick.yaml run
    python flows/explain_flow.py --config config configs/explain_ml1m.yaml run --ml1m-ratings ml-1m/ratings.dat --ml1m-movies ml-1m/movies.dat
    python flows/explain_flow.py run --data-dir data/MovieLens_1M --checkpoint GRU4Rec.pt
    python flows/explain_flow.py resume --origin-run-id <RUN_ID>

start → foreach training seed: train → join_seeds → evaluate → foreach user: explain → join → report → end
"""

from metaflow import Config, Parameter, card, step

from configs import config_path
from recalign.cards import explain_card, images
from recalign.flow import RecalignFlow, step_groups
from recalign.joins import seed_outputs
from steps.explain.config import ExplainConfig
from steps.explain.pipeline import (check_inputs, choose_users, explain_one, gru4rec_candidates, join_explanations, load_model,
                                    publish_data, report_parts, report_tables, resolve_dataset, run_model_metrics, seed_model_metrics,
                                    train_seed)
from steps.faults import failed_cells, maybe_fail

CARRIED = ["storage", "data", "data_summary", "model_file", "model_spec", "training_log", "model_metrics", "explain_user_ids",
           "candidates", "model_metrics_by_seed", "explained_seed", "replicates"]


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
        data = resolve_dataset(cfg, self.data_dir, self.ml1m_ratings, self.ml1m_movies, self.storage.dir("input"), self.checkpoint)
        check_inputs(data, cfg, self.checkpoint)  # a bad checkpoint fails here, not in train
        self.data, self.candidate_items = publish_data(data, cfg, self.storage)
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
        self.model_spec, self.training_log, self.model_file = train_seed(data, cfg, self.seed, self.checkpoint, self.storage)
        self.model_metrics = seed_model_metrics(self.model_file, data, cfg, self.seed)
        print(self.model_metrics)
        self.next(self.join_seeds)

    @step
    def join_seeds(self, inputs):
        """The metrics of every seed (and over seeds); the first seed's model goes on to be explained."""
        self.merge_artifacts(inputs, include=["storage", "data", "data_summary", "candidate_items"])
        per_seed, self.training_log, first = seed_outputs(inputs, self.cfg.seeds)  # the config's seed order
        self.model_metrics, self.model_metrics_by_seed, self.replicates = run_model_metrics(  # + Holm over the run
            per_seed, self.cfg.uncertainty, self.cfg.several_seeds)
        self.explained_seed, self.model_file, self.model_spec = first.seed, first.model_file, first.model_spec
        self.next(self.evaluate)

    @step
    def evaluate(self):
        """The explained (first seed's) model: its candidate bundle; choose the users to explain."""
        cfg, data = self.cfg, self.data.load()
        self.candidates = gru4rec_candidates(self.model_file, data, cfg, self.candidate_items, self.storage)  # for AlignFlow
        self.explain_user_ids = choose_users(data, cfg)
        self.next(self.explain, foreach="explain_user_ids")

    @step
    def explain(self):
        """One user: top-K from the unperturbed history, then every estimator's attributions."""
        cfg, user = self.cfg, int(self.input)
        maybe_fail("explain", str(user))
        data, model = self.data.load(), load_model(self.model_file, cfg.explain_dtype)
        self.explanation = explain_one(model, data, user, cfg)
        self.next(self.join)

    @step
    def join(self, inputs):
        """Collect the users' attributions."""
        self.merge_artifacts(inputs, include=CARRIED)
        self.failed_cells = failed_cells(inputs, lambda i: f"user {i.input}")
        joined = join_explanations([i.explanation for i in inputs if hasattr(i, "explanation")])
        self.attributions, self.explained_users, self.feature_attributions = joined.attributions, joined.users, joined.features
        self.next(self.report)

    @card(type="blank", id="report")
    @step
    def report(self):
        """Figures, tables, the card, and the export to artifacts/ExplainFlow/<run_id>/."""
        self.recency, self.efficiency, figures = report_parts(self.attributions, self.explained_users)
        tables = report_tables(self.attributions, self.explained_users, self.feature_attributions, self.model_metrics,
                               self.training_log, self.recency, self.model_metrics_by_seed)
        self.export_dir = self.export(tables, figures, {"gru4rec.pt": self.model_file},
                                      model=vars(self.model_spec), explained_users=self.explain_user_ids,
                                      seeds=list(self.cfg.seeds), explained_seed=self.explained_seed)
        explain_card(self, images(figures))  # the PNGs the export wrote (drawn once)
        self.next(self.end)

    @step
    def end(self):
        """Print where the results are."""
        efficiency = self.efficiency.select(["user_id", "estimator", "f_x", "f_baseline", "sum_attribution", "n_events_kept", "seconds"])
        print(self.model_metrics, efficiency, f"Exported to {self.export_dir}", sep="\n")


if __name__ == "__main__":
    ExplainFlow()
