"""NRMS and NRMSDocVec in Keras 3: a news encoder, a user encoder, and the training model that
scores ``1 + npratio`` candidates per sample with **logits** (dot products, no sigmoid).

* NRMS news encoder: word embeddings → dropout → multi-head self-attention → dropout → additive
  attention (the title's tokens are masked where they are padding).
* NRMSDocVec news encoder: a document vector → ``units`` dense ReLU layers, each with L2, batch norm
  and dropout → a dense ReLU layer of ``head_num × head_dim``.
* User encoder (both): multi-head self-attention over the encoded history, additive attention;
  padded history slots are masked.

Every weight starts from its own seed stream (:func:`steps.newsrec.layers.weight_seed`, keyed by
encoder, layer and weight name under the run's seed), so no two weights start alike even where
their shapes coincide.

Inference encodes each article once and each user once, then scores impressions as batched dot
products (:mod:`steps.newsrec.inference`); the training model composes the same encoders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from steps.newsrec.config import ModelConfig  # noqa: E402
from steps.newsrec.layers import AdditiveAttention, MultiHeadSelfAttention, weight_seed  # noqa: E402


@dataclass
class Recommender:
    name: str
    news_encoder: keras.Model  # article features -> (d,)
    user_encoder: keras.Model  # [(H, d) history vectors, (H,) valid] -> (d,)
    train_model: keras.Model  # [(H, F) history features, (H,) valid, (K, F) candidates] -> (K,) logits
    _compiled: dict = field(default_factory=dict, repr=False)

    @property
    def dim(self) -> int:
        return int(self.news_encoder.output.shape[-1])

    def infer(self, part: str, *inputs):
        """Run the news or user encoder in inference mode through one ``tf.function`` per encoder,
        traced once for any batch size (the signature leaves the batch dimension open)."""
        if part not in self._compiled:
            import tensorflow as tf

            model = self.news_encoder if part == "news" else self.user_encoder
            signature = [tf.TensorSpec((None, *x.shape[1:]), x.dtype) for x in model.inputs]
            self._compiled[part] = (tf.function(lambda *x: model(list(x) if len(x) > 1 else x[0], training=False),
                                                input_signature=signature), [s.dtype.as_numpy_dtype for s in signature])
        fn, dtypes = self._compiled[part]
        return np.asarray(fn(*(np.asarray(x, dtype=d) for x, d in zip(inputs, dtypes, strict=True))))


def nrms_news_encoder(hp: ModelConfig, title_size: int, vocab_size: int, seed: int, embeddings: np.ndarray | None = None) -> keras.Model:
    tokens = keras.Input((title_size,), dtype="int32", name="tokens")
    valid = ops.greater(tokens, 0)
    if embeddings is not None:
        emb = keras.layers.Embedding(embeddings.shape[0], embeddings.shape[1], embeddings_initializer=keras.initializers.Constant(embeddings))
    else:
        init = keras.initializers.RandomUniform(-0.05, 0.05, seed=weight_seed(seed, "news", "embedding"))
        emb = keras.layers.Embedding(vocab_size, hp.word_emb_dim, embeddings_initializer=init)
    x = keras.layers.Dropout(hp.dropout, seed=weight_seed(seed, "news", "dropout", 0))(emb(tokens))
    x = MultiHeadSelfAttention(hp.head_num, hp.head_dim, seed=weight_seed(seed, "news", "self_attention"))([x, valid])
    x = keras.layers.Dropout(hp.dropout, seed=weight_seed(seed, "news", "dropout", 1))(x)
    out = AdditiveAttention(hp.attention_hidden_dim, seed=weight_seed(seed, "news", "additive_attention"))([x, valid])
    return keras.Model(tokens, out, name="news_encoder")


def docvec_news_encoder(hp: ModelConfig, vector_dim: int, seed: int) -> keras.Model:
    vec = keras.Input((vector_dim,), dtype="float32", name="document_vector")
    x = vec
    for i, units in enumerate(hp.units):
        x = keras.layers.Dense(units, activation="relu", kernel_regularizer=keras.regularizers.L2(hp.l2),
                               kernel_initializer=keras.initializers.GlorotUniform(seed=weight_seed(seed, "news", "dense", i)))(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Dropout(hp.dropout, seed=weight_seed(seed, "news", "dropout", i))(x)
    out = keras.layers.Dense(hp.head_num * hp.head_dim, activation="relu",
                             kernel_initializer=keras.initializers.GlorotUniform(seed=weight_seed(seed, "news", "dense", "out")))(x)
    return keras.Model(vec, out, name="news_encoder")


def user_encoder(hp: ModelConfig, history_size: int, dim: int, seed: int) -> keras.Model:
    hist = keras.Input((history_size, dim), dtype="float32", name="history_vectors")
    valid = keras.Input((history_size,), dtype="bool", name="history_valid")
    y = MultiHeadSelfAttention(hp.head_num, hp.head_dim, seed=weight_seed(seed, "user", "self_attention"))([hist, valid])
    out = AdditiveAttention(hp.attention_hidden_dim, seed=weight_seed(seed, "user", "additive_attention"))([y, valid])
    return keras.Model([hist, valid], out, name="user_encoder")


def _encode_each(news: keras.Model, x, n: int, feature_shape: tuple):
    """Apply the news encoder to every one of ``n`` articles per row: (B, n, *F) -> (B, n, d), as
    one flat batch (B·n, *F) rather than a per-slot loop."""
    flat = ops.reshape(x, (-1, *feature_shape))
    return ops.reshape(news(flat), (-1, n, int(news.output.shape[-1])))


def _compose(name: str, news: keras.Model, users: keras.Model, history_size: int, n_candidates: int, feature_shape: tuple,
             dtype: str) -> keras.Model:
    hist = keras.Input((history_size, *feature_shape), dtype=dtype, name="history")
    valid = keras.Input((history_size,), dtype="bool", name="history_valid")
    cand = keras.Input((n_candidates, *feature_shape), dtype=dtype, name="candidates")
    user = users([_encode_each(news, hist, history_size, feature_shape), valid])
    logits = ops.einsum("bkd,bd->bk", _encode_each(news, cand, n_candidates, feature_shape), user)
    return keras.Model([hist, valid, cand], logits, name=name)


def build_recommender(
    name: str, hp: ModelConfig, history_size: int, seed: int, *, n_candidates: int = 5, title_size: int = 0, vocab_size: int = 0,
    vector_dim: int = 0, embeddings: np.ndarray | None = None,
) -> Recommender:
    """``nrms`` (needs ``title_size`` and ``vocab_size`` or ``embeddings``) or ``nrms_docvec`` (``vector_dim``);
    the training model scores ``n_candidates`` (= 1 + npratio) candidates per sample."""
    if name == "nrms":
        news = nrms_news_encoder(hp, title_size, vocab_size, seed, embeddings)
        shape, dtype = (title_size,), "int32"
    elif name == "nrms_docvec":
        news = docvec_news_encoder(hp, vector_dim, seed)
        shape, dtype = (vector_dim,), "float32"
    else:
        raise ValueError(f"unknown model {name!r}")
    dim = int(news.output.shape[-1])
    users = user_encoder(hp, history_size, dim, seed)
    return Recommender(name, news, users, _compose(name, news, users, history_size, n_candidates, shape, dtype))
