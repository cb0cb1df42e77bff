"""Offline tokenisation of article texts for NRMS's word-level title encoder.

Default: a vocabulary built from the articles' own texts (lower-cased ``\\w+`` words; id 0 =
padding, 1 = out-of-vocabulary, then words by descending count, ties by the word). Option: a
``transformers`` tokenizer and its input-embedding matrix read from a local folder (never a hub
download). Both give a ``(N + 2, title_size)`` int32 token table in article-index order (rows 0
and 1 — padding and unknown articles — are all padding), and optionally an embedding matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from steps.errors import ConfigError, InputError

PAD_TOKEN = 0
OOV_TOKEN = 1
WORD_PATTERN = r"\w+"


@dataclass(frozen=True)
class Vocabulary:
    """Words in id order: ``words[i]`` has token id ``i + 2``."""

    words: tuple[str, ...]

    @property
    def size(self) -> int:
        """Number of token ids, padding and OOV included."""
        return len(self.words) + 2


def article_texts(articles: pl.DataFrame, columns: Sequence[str]) -> pl.Series:
    """The text columns of each article joined by a space (in the given order)."""
    if not columns:
        raise ConfigError("text.columns: expected at least one article text column")
    return articles.select(pl.concat_str([pl.col(c) for c in columns], separator=" ").alias("text"))["text"]


def _words(texts: pl.Series) -> pl.DataFrame:
    """One row per word: ``row`` (text index), ``pos`` (word position in the text), ``word``."""
    return (
        pl.DataFrame({"word": texts.str.to_lowercase().str.extract_all(WORD_PATTERN)})
        .with_row_index("row")
        .explode("word")
        .drop_nulls("word")
        .with_columns(pl.int_range(pl.len()).over("row").alias("pos"))
    )


def build_vocabulary(texts: pl.Series, min_count: int = 1, max_size: int | None = None) -> Vocabulary:
    """Words seen at least ``min_count`` times, most frequent first, at most ``max_size`` of them."""
    counts = (
        _words(texts).group_by("word").len("count").filter(pl.col("count") >= min_count).sort(["count", "word"], descending=[True, False])
    )
    if max_size is not None:
        counts = counts.head(max_size)
    if counts.is_empty():
        raise InputError("the article texts hold no words to build a vocabulary from")
    return Vocabulary(tuple(counts["word"].to_list()))


def tokenize(texts: pl.Series, vocab: Vocabulary, title_size: int) -> np.ndarray:
    """``(len(texts), title_size)`` int32 token ids: the first ``title_size`` words, then padding."""
    ids = pl.DataFrame({"word": list(vocab.words), "id": np.arange(2, vocab.size, dtype=np.int32)})
    words = _words(texts).filter(pl.col("pos") < title_size).join(ids, on="word", how="left")
    out = np.zeros((len(texts), title_size), dtype=np.int32)
    out[words["row"].to_numpy(), words["pos"].to_numpy()] = words["id"].fill_null(OOV_TOKEN).to_numpy()
    return out


def token_table(tokens: np.ndarray) -> np.ndarray:
    """Prepend the padding and unknown-article rows (all padding) to per-article tokens."""
    return np.concatenate([np.zeros((2, tokens.shape[1]), dtype=np.int32), tokens.astype(np.int32)], axis=0)


def transformers_tokens(texts: pl.Series, folder: str, title_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise with a ``transformers`` tokenizer saved in ``folder`` (loaded with
    ``local_files_only``) and return ``(tokens, embedding_matrix)``. Token ids are shifted by one so
    that 0 stays padding: our id ``i + 1`` is the tokenizer's id ``i``; row 0 of the matrix is zeros."""
    if not Path(folder).is_dir():
        raise ConfigError(f"text.transformers_path: {folder!r} is not a local folder")
    try:
        from transformers import AutoModel, AutoTokenizer  # optional dependency
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("text.tokenizer: transformers needs the 'transformers' package (pip install -e '.[text]')") from exc
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    enc = tok(texts.to_list(), max_length=title_size, truncation=True, padding="max_length", return_attention_mask=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    mask = np.asarray(enc["attention_mask"], dtype=bool)
    tokens = np.where(mask, ids + 1, PAD_TOKEN).astype(np.int32)
    weights = AutoModel.from_pretrained(folder, local_files_only=True).get_input_embeddings().weight.detach().numpy()
    matrix = np.concatenate([np.zeros((1, weights.shape[1]), np.float32), weights.astype(np.float32)], axis=0)
    return tokens, matrix
