"""The attention layers of NRMS (Wu et al., EMNLP 2019), in Keras 3 (``keras.ops`` only).

* :class:`MultiHeadSelfAttention` — per head h: ``softmax(Q_h K_hᵀ / √d_h) V_h`` with
  ``Q = X W_Q, K = X W_K, V = X W_V`` (no biases); heads concatenated.
* :class:`AdditiveAttention` — ``a_i = softmax_i(qᵀ tanh(W x_i + b))``, output ``Σ_i a_i x_i``.

Both take ``[x, valid]`` where ``valid`` (batch, length) marks real positions: padded positions get
weight exactly 0, weights over the real positions sum to 1, and a row with no real position gives
all-zero weights (so a fully padded title or history encodes to the zero vector).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
from keras import ops  # noqa: E402

from steps.seeding import rng_for  # noqa: E402

NEG_INF = -1e9


def masked_softmax(logits, valid, axis: int = -1):
    """Softmax over ``axis`` restricted to ``valid`` positions (zeros elsewhere and for empty rows)."""
    valid = ops.cast(valid, logits.dtype)
    w = ops.softmax(logits + (1.0 - valid) * NEG_INF, axis=axis) * valid
    return w / ops.maximum(ops.sum(w, axis=axis, keepdims=True), 1e-12)


def weight_seed(seed: int | None, *key: object) -> int | None:
    """The seed of one weight (or layer): a 31-bit draw from ``rng_for(seed, *key)``, so every
    distinct key names its own stream. (A seeded Keras 3 initialiser returns the same values on
    every call: two weights of one shape sharing a seed would start equal.)"""
    return None if seed is None else int(rng_for(seed, *key).integers(0, 2**31 - 1))


def glorot(seed: int | None, *key: object) -> keras.initializers.Initializer:
    """Glorot-uniform initialiser of the weight named ``key`` of a layer seeded ``seed``."""
    return keras.initializers.GlorotUniform(seed=weight_seed(seed, *key))


@keras.saving.register_keras_serializable(package="recalign")
class AdditiveAttention(keras.layers.Layer):
    """NRMS's additive attention pooling (``AttLayer2`` of the reference implementation)."""

    def __init__(self, hidden_dim: int, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.seed = seed

    def build(self, input_shape):
        dim = input_shape[0][-1]
        self.w = self.add_weight(shape=(dim, self.hidden_dim), initializer=glorot(self.seed, "additive_attention", "w"), name="w")
        self.b = self.add_weight(shape=(self.hidden_dim,), initializer="zeros", name="b")
        self.q = self.add_weight(shape=(self.hidden_dim, 1), initializer=glorot(self.seed, "additive_attention", "q"), name="q")

    def attention_weights(self, x, valid):
        """(batch, length) weights."""
        scores = ops.squeeze(ops.matmul(ops.tanh(ops.matmul(x, self.w) + self.b), self.q), axis=-1)
        return masked_softmax(scores, valid)

    def call(self, inputs):
        x, valid = inputs
        return ops.sum(x * ops.expand_dims(self.attention_weights(x, valid), -1), axis=-2)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], input_shape[0][-1])

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim, "seed": self.seed}


@keras.saving.register_keras_serializable(package="recalign")
class MultiHeadSelfAttention(keras.layers.Layer):
    """NRMS's multi-head self-attention (``SelfAttention`` of the reference implementation)."""

    def __init__(self, head_num: int, head_dim: int, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.head_num = head_num
        self.head_dim = head_dim
        self.seed = seed

    def build(self, input_shape):
        dim = input_shape[0][-1]
        out = self.head_num * self.head_dim
        self.wq = self.add_weight(shape=(dim, out), initializer=glorot(self.seed, "self_attention", "wq"), name="wq")
        self.wk = self.add_weight(shape=(dim, out), initializer=glorot(self.seed, "self_attention", "wk"), name="wk")
        self.wv = self.add_weight(shape=(dim, out), initializer=glorot(self.seed, "self_attention", "wv"), name="wv")

    def _heads(self, x, w):
        b, n = ops.shape(x)[0], ops.shape(x)[1]
        return ops.transpose(ops.reshape(ops.matmul(x, w), (b, n, self.head_num, self.head_dim)), (0, 2, 1, 3))

    def attention_weights(self, x, valid):
        """(batch, heads, length, length) weights of each query over the keys."""
        q, k = self._heads(x, self.wq), self._heads(x, self.wk)
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / (self.head_dim**0.5)
        return masked_softmax(scores, ops.expand_dims(ops.expand_dims(valid, 1), 1))

    def call(self, inputs):
        x, valid = inputs
        v = self._heads(x, self.wv)
        out = ops.matmul(self.attention_weights(x, valid), v)  # (b, h, n, dh)
        b, n = ops.shape(x)[0], ops.shape(x)[1]
        return ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (b, n, self.head_num * self.head_dim))

    def compute_output_shape(self, input_shape):
        return (*input_shape[0][:-1], self.head_num * self.head_dim)

    def get_config(self):
        return {**super().get_config(), "head_num": self.head_num, "head_dim": self.head_dim, "seed": self.seed}
