"""Training NRMS / NRMSDocVec: Wu et al. (2019) samples, softmax cross-entropy over ``1 + npratio``
logits, Adam, early stopping on validation AUC and learning-rate reduction on plateau, best
weights kept (and saved as a versioned, checksummed artifact).

Validation AUC is the project's own per-impression AUC over every labelled validation impression
(articles and users encoded once, :mod:`steps.newsrec.inference`), not a sampled proxy.
Determinism: :func:`configure_determinism` seeds Python, NumPy and TensorFlow and turns on
TensorFlow's deterministic ops, so the same config gives the same weights on CPU.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from steps.faults import maybe_fail  # noqa: E402
from steps.metrics import DEFAULT_TIES  # noqa: E402
from steps.newsrec.artifacts import ModelArtifact  # noqa: E402
from steps.newsrec.config import ModelConfig, TrainConfig  # noqa: E402
from steps.newsrec.ebnerd import SplitData, load_split  # noqa: E402
from steps.newsrec.inference import evaluate_scores, score_split, select_rows  # noqa: E402
from steps.newsrec.models import Recommender, build_recommender  # noqa: E402
from steps.newsrec.prepare import PreparedNewsData  # noqa: E402
from steps.newsrec.sampler import Samples, sample_wu2019  # noqa: E402
from steps.seeding import rng_for  # noqa: E402
from steps.storage import file_ref, load_array, localize  # noqa: E402

METRICS = ("auc", "mrr", "ndcg_at_5", "ndcg_at_10")
CURVE_SCHEMA = {"model": pl.String, "epoch": pl.Int64, "loss": pl.Float64, "learning_rate": pl.Float64,
                **{f"val_{m}": pl.Float64 for m in METRICS}, "best": pl.Boolean}


def configure_determinism(seed: int) -> None:
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


# --------------------------------------------------------------------------- plateau logic
@dataclass
class Plateau:
    """Keras' ``EarlyStopping`` + ``ReduceLROnPlateau`` (mode max, min_delta 0) as plain state.

    After each epoch :meth:`update` gets the monitored value: a strictly larger value than the best
    so far is an improvement (both wait counters reset); otherwise both counters grow, the learning
    rate becomes ``max(lr · factor, min_lr)`` when the LR counter reaches ``lr_patience`` (and that
    counter resets) — only while it is above ``min_lr``, so a reduction never raises it — and
    training stops when the stop counter reaches ``stop_patience``.
    """

    lr: float
    factor: float = 0.2
    lr_patience: int = 2
    min_lr: float = 1e-6
    stop_patience: int = 3
    best: float = -math.inf
    best_epoch: int = 0
    lr_wait: int = 0
    stop_wait: int = 0

    def update(self, epoch: int, value: float) -> tuple[bool, bool]:
        """Returns ``(improved, stop)``; ``self.lr`` holds the learning rate for the next epoch."""
        if value > self.best:
            self.best, self.best_epoch, self.lr_wait, self.stop_wait = value, epoch, 0, 0
            return True, False
        self.lr_wait += 1
        self.stop_wait += 1
        if self.lr_wait >= self.lr_patience:
            if self.lr > self.min_lr:
                self.lr = max(self.lr * self.factor, self.min_lr)
            self.lr_wait = 0
        return False, self.stop_wait >= self.stop_patience


# --------------------------------------------------------------------------- batches
class SampleBatches(keras.utils.PyDataset):
    """Batches ``([history features, history valid, candidate features], label)`` gathered from the
    article feature table on the fly (memory stays proportional to a batch)."""

    def __init__(self, samples: Samples, table: np.ndarray, history: np.ndarray, batch_size: int, order: np.ndarray):
        super().__init__(workers=1, use_multiprocessing=False)
        self.samples, self.table, self.history, self.batch_size, self.order = samples, table, history, batch_size, order

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __getitem__(self, i: int):
        idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        hist = self.history[self.samples.user_index[idx]]
        return (self.table[hist], hist > 0, self.table[self.samples.candidates[idx]]), self.samples.label[idx]


# --------------------------------------------------------------------------- building
def feature_table(prepared: PreparedNewsData, model: str) -> np.ndarray:
    ref = prepared.tokens if model == "nrms" else prepared.vectors
    return np.asarray(load_array(ref))


def build_for(prepared: PreparedNewsData, model: str, hp: ModelConfig, training: TrainConfig, seed: int) -> Recommender:
    """The model sized for the prepared data, compiled with Adam and softmax cross-entropy on logits."""
    emb = np.asarray(load_array(prepared.word_embeddings)) if (model == "nrms" and prepared.word_embeddings) else None
    rec = build_recommender(
        model, hp, training.history_size, seed, n_candidates=1 + training.npratio,
        title_size=prepared.tokens.shape[1] if prepared.tokens else 0, vocab_size=prepared.vocab_size,
        vector_dim=prepared.vectors.shape[1] if prepared.vectors else 0, embeddings=emb,
    )
    rec.train_model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=training.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    return rec


# --------------------------------------------------------------------------- training
@dataclass
class TrainOutcome:
    curves: pl.DataFrame  # one row per epoch
    best_epoch: int
    best_validation: dict[str, float]
    samples_per_epoch: list[int] = field(default_factory=list)
    train_seconds: float = 0.0


def _train_subset(split: SplitData, fraction: float, rng: np.random.Generator) -> SplitData:
    if fraction >= 1.0:
        return split
    rows = np.sort(rng.choice(split.n, max(1, int(round(fraction * split.n))), replace=False))
    sub, flat = select_rows(split.offsets, rows)
    return SplitData(split.impression_ids[rows], split.user_index[rows], sub, split.inview_ids[flat], split.inview_index[flat],
                     split.clicked[flat], split.has_labels)


def fit(rec: Recommender, prepared: PreparedNewsData, training: TrainConfig, seed: int, train_fraction: float = 1.0,
        log=print, ties: str = DEFAULT_TIES) -> TrainOutcome:
    """Train ``rec`` on the train split, monitor validation AUC, keep the best weights (set on
    ``rec`` on return). Each epoch draws fresh negatives (``rng_for(seed, model, "samples", epoch)``).
    The validation MRR/nDCG of the curves rank equal scores by ``ties`` (AUC counts them ½)."""
    table = feature_table(prepared, rec.name)
    train_hist = prepared.histories("train").matrix
    val_hist = prepared.histories("validation").matrix
    train = _train_subset(load_split(prepared.splits["train"]), train_fraction, rng_for(seed, rec.name, "train-subset"))
    val = load_split(prepared.splits["validation"])
    plateau = Plateau(training.learning_rate, training.lr_factor, training.lr_patience, training.min_lr, training.early_stopping_patience)
    rows, best_weights, best_val, n_samples = [], None, {}, []
    t0 = time.perf_counter()
    for epoch in range(1, training.epochs + 1):
        rng = rng_for(seed, rec.name, "samples", epoch)
        samples = sample_wu2019(train.offsets, train.inview_index, train.clicked, train.user_index, training.npratio, rng,
                                train.impression_ids)
        order = rng.permutation(len(samples))
        lr = plateau.lr
        rec.train_model.optimizer.learning_rate.assign(lr)
        hist = rec.train_model.fit(SampleBatches(samples, table, train_hist, training.batch_size, order), epochs=1, verbose=0, shuffle=False)
        loss = float(hist.history["loss"][-1])
        metrics = evaluate_scores(val, score_split(rec, table, val_hist, val, training.eval_batch_users, training.score_chunk), ties)
        if metrics is None:
            raise ValueError("the validation split has no labelled impression to monitor")
        improved, stop = plateau.update(epoch, metrics["auc"])
        if improved:
            best_weights, best_val = rec.train_model.get_weights(), metrics
        rows.append({"model": rec.name, "epoch": epoch, "loss": loss, "learning_rate": lr,
                     **{f"val_{m}": metrics[m] for m in METRICS}, "best": improved})
        n_samples.append(len(samples))
        log(f"{rec.name} epoch {epoch}: loss {loss:.4f}, lr {lr:.2e}, validation AUC {metrics['auc']:.4f}{' (best)' if improved else ''}")
        maybe_fail("train_epoch", f"{rec.name}/{epoch}")
        if stop:
            break
    rec.train_model.set_weights(best_weights)
    curves = pl.DataFrame(rows, schema=CURVE_SCHEMA).with_columns((pl.col("epoch") == plateau.best_epoch).alias("best"))
    return TrainOutcome(curves, plateau.best_epoch, best_val, n_samples, time.perf_counter() - t0)


# --------------------------------------------------------------------------- versioned weights
def save_best(rec: Recommender, out_dir: str | os.PathLike, best_epoch: int, hp: ModelConfig, training: TrainConfig, seed: int) -> ModelArtifact:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"{rec.name}.weights.h5"
    tmp = out / f".{uuid.uuid4().hex}.tmp.weights.h5"
    rec.train_model.save_weights(tmp)
    os.replace(tmp, final)
    ref = file_ref(final)
    return ModelArtifact(rec.name, f"{rec.name}-e{best_epoch}-{ref.sha256[:12]}", ref, best_epoch, asdict(hp),
                         training.history_size, seed, keras.__version__)


def load_best(prepared: PreparedNewsData, artifact: ModelArtifact, training: TrainConfig) -> Recommender:
    """The model of ``artifact`` with its saved weights; a published (``s3://``) weights file is
    downloaded first, and the local copy's checksum is verified before loading."""
    weights = localize(artifact.weights)
    weights.verify()
    rec = build_for(prepared, artifact.model, ModelConfig(**{**artifact.hparams, "units": tuple(artifact.hparams["units"])}),
                    training, artifact.seed)
    rec.train_model.load_weights(weights.path)
    return rec
