"""NRMS layers and models (TensorFlow): attention weights, masking, shapes, the encode-once scoring
path equal to the training model, deterministic training, and the optional transformers tokenizer."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from steps.errors import ConfigError
from steps.newsrec.config import ModelConfig, NewsRecConfig
from steps.newsrec.layers import AdditiveAttention, MultiHeadSelfAttention, masked_softmax
from steps.newsrec.models import build_recommender
from steps.storage import load_array

HP = ModelConfig(head_num=2, head_dim=3, attention_hidden_dim=5, word_emb_dim=4, units=(8,), dropout=0.2)


def _valid(rows):
    return np.array(rows, dtype=bool)


def test_masked_softmax_by_hand():
    w = np.asarray(masked_softmax(np.array([[0.0, np.log(3.0), 5.0]], np.float32), _valid([[1, 1, 0]])))
    # exp(0) : exp(log 3) = 1 : 3 over the two real positions; the padded one gets exactly 0
    assert w.tolist()[0][2] == 0.0
    assert w[0, :2] == pytest.approx([0.25, 0.75], abs=1e-6)
    assert np.asarray(masked_softmax(np.ones((1, 3), np.float32), _valid([[0, 0, 0]]))).tolist() == [[0.0, 0.0, 0.0]]


def test_additive_attention_weights_sum_to_one_and_skip_padding():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 6)).astype(np.float32)
    valid = _valid([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
    layer = AdditiveAttention(5, seed=1)
    out = np.asarray(layer([x, valid]))
    w = np.asarray(layer.attention_weights(x, valid))
    assert out.shape == (3, 6)
    assert w[:2].sum(axis=1) == pytest.approx([1.0, 1.0], abs=1e-6)
    assert (w[1, 2:] == 0).all() and (w[2] == 0).all() and (out[2] == 0).all()
    assert np.allclose(out[1], (w[1, :, None] * x[1]).sum(axis=0), atol=1e-6)


def test_self_attention_shapes_weights_and_masked_keys():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 6)).astype(np.float32)
    valid = _valid([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    layer = MultiHeadSelfAttention(2, 3, seed=1)
    out = np.asarray(layer([x, valid]))
    w = np.asarray(layer.attention_weights(x, valid))
    assert out.shape == (2, 5, 6) and w.shape == (2, 2, 5, 5)
    assert np.allclose(w.sum(axis=-1), 1.0, atol=1e-6)
    assert (w[0, :, :, 3:] == 0).all()  # no query attends to a padded key
    x2 = x.copy()
    x2[0, 3:] = 99.0  # changing padded positions leaves the real positions' outputs unchanged
    assert np.allclose(np.asarray(layer([x2, valid]))[0, :3], out[0, :3], atol=1e-5)


def test_projection_weights_start_different_and_reproducible():
    """Each weight of a seeded layer gets its own initial values (a shared seeded initialiser would
    start W_Q = W_K = W_V), and the same seed gives the same start."""
    x, valid = np.ones((1, 4, 6), np.float32), _valid([[1, 1, 1, 1]])
    a, b = MultiHeadSelfAttention(2, 3, seed=4), MultiHeadSelfAttention(2, 3, seed=4)
    a([x, valid]), b([x, valid])
    wq, wk, wv = (np.asarray(w) for w in (a.wq, a.wk, a.wv))
    assert not np.array_equal(wq, wk) and not np.array_equal(wq, wv) and not np.array_equal(wk, wv)
    assert all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(a.weights, b.weights))


def test_user_encoder_ignores_padded_history_slots():
    rec = build_recommender("nrms_docvec", HP, 4, seed=3, vector_dim=7)
    d = rec.dim
    hist = np.random.default_rng(2).normal(size=(1, 4, d)).astype(np.float32)
    valid = _valid([[0, 0, 1, 1]])
    u1 = rec.infer("user", hist, valid)
    hist[0, :2] = 123.0
    assert np.allclose(rec.infer("user", hist, valid), u1, atol=1e-5)
    assert u1.shape == (1, d)


def test_nrms_news_encoder_shapes_and_all_padding_title():
    rec = build_recommender("nrms", HP, 3, seed=0, title_size=5, vocab_size=20)
    tokens = np.array([[3, 4, 5, 0, 0], [0, 0, 0, 0, 0]], np.int32)
    vec = rec.infer("news", tokens)
    assert vec.shape == (2, HP.head_num * HP.head_dim)
    assert (vec[1] == 0).all()  # unknown / padding articles encode to the zero vector


@pytest.mark.parametrize("model", ["nrms", "nrms_docvec"])
def test_training_logits_equal_the_encode_once_scores(model):
    rng = np.random.default_rng(4)
    rec = build_recommender(model, HP, 3, seed=5, n_candidates=5, title_size=4, vocab_size=30, vector_dim=6)
    if model == "nrms":
        table = rng.integers(0, 30, size=(12, 4)).astype(np.int32)
    else:
        table = rng.normal(size=(12, 6)).astype(np.float32)
    table[0] = 0
    hist = np.array([[0, 3, 4], [5, 6, 7]])
    cand = np.array([[2, 3, 8, 9, 10], [11, 2, 4, 5, 6]])
    logits = np.asarray(rec.train_model([table[hist], hist > 0, table[cand]], training=False))
    assert logits.shape == (2, 5)
    articles = rec.infer("news", table)
    users = rec.infer("user", articles[hist], hist > 0)
    assert np.allclose(logits, np.einsum("bkd,bd->bk", articles[cand], users), atol=1e-4)


def test_training_is_deterministic(tmp_path):
    from steps.newsrec.ebnerd import load_split
    from steps.newsrec.prepare import prepare_news_data, resolve_data_root
    from steps.newsrec.train import build_for, configure_determinism, fit

    cfg = NewsRecConfig.from_dict({
        "models": {"nrms_docvec": {"units": [8], "head_num": 2, "head_dim": 4, "attention_hidden_dim": 8}},
        "training": {"history_size": 5, "epochs": 2, "batch_size": 32, "learning_rate": 0.003},
        "synthetic": {"n_articles": 200, "n_topics": 8, "n_users": 60, "n_train_impressions": 300,
                      "n_validation_impressions": 60, "n_test_impressions": 20, "n_ba_rows": 5, "n_candidates": 20, "inview_max": 10},
    })
    root, bundle, synthetic = resolve_data_root("", cfg, tmp_path / "data")
    data = prepare_news_data(root, bundle, synthetic, cfg, tmp_path / "prepared")
    runs = []
    for _ in range(2):
        configure_determinism(cfg.seed)
        rec = build_for(data, "nrms_docvec", cfg.models["nrms_docvec"], cfg.training, cfg.seed)
        out = fit(rec, data, cfg.training, cfg.seed, train_fraction=0.5, log=lambda s: None)
        runs.append((out.curves, rec.train_model.get_weights()))
    train_clicks = int(load_split(data.splits["train"]).clicked.sum())
    assert 0.3 * train_clicks < out.samples_per_epoch[0] < 0.7 * train_clicks  # one sample per click of half the impressions
    assert runs[0][0].equals(runs[1][0])
    assert all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    assert runs[0][0].height == 2 and runs[0][0]["best"].sum() == 1


@pytest.fixture(scope="module")
def local_transformers_folder(tmp_path_factory) -> Path:
    """A real ``transformers`` tokenizer and a tiny BERT saved to a local folder, built here from a
    WordPiece vocabulary trained on a few Danish titles (nothing is downloaded)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("bert_tiny")
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    titles = ["politiet efterforsker sagen", "sport i dag", "nyheder om penge og forbrug", "musik og underholdning"]
    wordpiece.train_from_iterator(titles, trainers.WordPieceTrainer(vocab_size=80, special_tokens=["[PAD]", "[UNK]"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(folder)
    return folder


def test_transformers_option_shifts_ids_so_zero_stays_padding(local_transformers_folder, tmp_path):
    """The optional transformers tokenizer and its input-embedding matrix, read from a local folder."""
    from transformers import AutoModel, AutoTokenizer

    from steps.newsrec.text import transformers_tokens

    texts = ["Sport i dag", "politiet efterforsker sagen om penge og musik"]
    tokens, matrix = transformers_tokens(pl.Series(texts), str(local_transformers_folder), 6)
    reference = AutoTokenizer.from_pretrained(local_transformers_folder, local_files_only=True)
    weights = AutoModel.from_pretrained(local_transformers_folder, local_files_only=True).get_input_embeddings().weight
    short = reference(texts[0])["input_ids"]
    assert 0 < len(short) < 6 and reference.pad_token_id == 0
    # tokenizer id i -> our id i + 1; padding (the tokenizer's id 0) -> our 0
    assert tokens[0].tolist() == [i + 1 for i in short] + [0] * (6 - len(short))
    assert tokens[1].tolist() == [i + 1 for i in reference(texts[1])["input_ids"][:6]]  # truncated to title_size
    assert matrix.shape == (len(reference) + 1, 8) and not matrix[0].any()
    assert np.array_equal(matrix[1:], weights.detach().numpy())
    with pytest.raises(ConfigError, match="not a local folder"):
        transformers_tokens(pl.Series(["a"]), str(tmp_path / "missing"), 4)


def test_prepare_with_a_transformers_tokenizer_feeds_its_embeddings_to_nrms(local_transformers_folder, tmp_path):
    from steps.newsrec.prepare import prepare_news_data
    from steps.newsrec.synthetic import BUNDLE, SyntheticEbnerdSpec, write_synthetic_ebnerd
    from steps.newsrec.train import build_for

    spec = SyntheticEbnerdSpec(n_articles=120, n_topics=6, n_users=30, n_train_impressions=60, n_validation_impressions=20,
                               n_test_impressions=10, n_ba_rows=4, n_candidates=12, inview_max=8, seed=5)
    write_synthetic_ebnerd(tmp_path / "data", spec)

    cfg = NewsRecConfig.from_dict({
        "models": {"nrms": {"head_num": 2, "head_dim": 4, "attention_hidden_dim": 8}},
        "training": {"history_size": 4},
        "text": {"tokenizer": "transformers", "transformers_path": str(local_transformers_folder), "title_size": 8},
    })
    data = prepare_news_data(tmp_path / "data", BUNDLE, True, cfg, tmp_path / "prepared")
    matrix = np.asarray(load_array(data.word_embeddings))
    tokens = np.asarray(load_array(data.tokens))
    assert data.vocab_size == matrix.shape[0] and matrix.shape[1] == 8
    assert tokens.shape == (spec.n_articles + 2, 8) and tokens.max() < matrix.shape[0] and (tokens[2:, 0] > 0).all()
    rec = build_for(data, "nrms", cfg.models["nrms"], cfg.training, cfg.seed)
    embedding = next(w for w in rec.train_model.weights if tuple(w.shape) == matrix.shape)
    assert np.array_equal(np.asarray(embedding), matrix)


@pytest.mark.parametrize("model", ["nrms", "nrms_docvec"])
def test_no_two_weight_tensors_of_a_model_start_equal(model):
    """Every randomly initialised weight gets its own seed stream, also where shapes coincide
    (head_num × head_dim == attention_hidden_dim == word_emb_dim, as in the quick and demo configs:
    a shared seed started the query projection and the additive attention's W equal)."""
    hp = ModelConfig(head_num=4, head_dim=12, attention_hidden_dim=48, word_emb_dim=48, units=(48, 48), dropout=0.2)
    rec = build_recommender(model, hp, 4, seed=42, n_candidates=5, title_size=6, vocab_size=48, vector_dim=48)
    named = [(w.path, np.asarray(w).ravel().astype(np.float64)) for w in rec.train_model.weights]
    random = [(n, v) for n, v in named if np.unique(v).size > 1]  # constant starts (biases, batch norm) are alike by design
    # nrms: embedding + 3 + 2 (news) + 3 + 2 (user); nrms_docvec: 3 dense kernels + 3 + 2 (user)
    assert len(random) == (11 if model == "nrms" else 8), [n for n, _ in named]
    for i, (na, a) in enumerate(random):
        for nb, b in random[i + 1:]:
            m = min(a.size, b.size)
            # not equal, and not one stream rescaled (Glorot's limit depends on the shape): the
            # overlapping leading values are uncorrelated
            assert abs(np.corrcoef(a[:m], b[:m])[0, 1]) < 0.5, (na, nb)
    again = build_recommender(model, hp, 4, seed=42, n_candidates=5, title_size=6, vocab_size=48, vector_dim=48)
    assert all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(rec.train_model.weights, again.train_model.weights))
