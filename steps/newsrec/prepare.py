"""From an EB-NeRD data root (real or synthetic) to the arrays the models train and score on."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from steps.errors import InputError
from steps.newsrec import schema as S
from steps.newsrec.config import NewsRecConfig
from steps.newsrec.ebnerd import Histories, SplitArrays, load_document_vectors, load_histories, read_articles, read_behaviors
from steps.newsrec.synthetic import BUNDLE, write_synthetic_ebnerd
from steps.newsrec.text import article_texts, build_vocabulary, token_table, tokenize, transformers_tokens
from steps.storage import (FileRef, RunStorage, file_ref, link_or_copy, load_array, localize_tree, map_refs, rebase_refs,
                           save_array, staged_dir)
from steps.validate import require_dir
from steps.uncertainty import UNITS_DIGEST, units_digest

SPLIT_LABELS = {"train": "required", "validation": "required", "test": "optional"}


@dataclass(frozen=True)
class PreparedNewsData:
    """Everything the models need, as checksummed files (small fields are plain values)."""

    data_root: str
    bundle: str
    synthetic: bool
    articles_path: str  # the test bundle's articles, else the train bundle's (categories for the alignment grid)
    article_ids: FileRef  # (N,) int64 sorted: article index k + 2
    tokens: FileRef | None  # (N + 2, title_size) int32, for NRMS
    word_embeddings: FileRef | None  # (vocab, dim) float32 from a transformers model, or None
    vocab_size: int
    vectors: FileRef | None  # (N + 2, D) float32 document vectors, for NRMSDocVec
    history_users: dict[str, FileRef] = field(default_factory=dict)  # split -> (U,) int64
    history_matrix: dict[str, FileRef] = field(default_factory=dict)  # split -> (U, H) int32
    splits: dict[str, SplitArrays] = field(default_factory=dict)
    test_history: FileRef | None = None  # the test split's history.parquet (the BA users' full click histories)

    def histories(self, split: str) -> Histories:
        return Histories(np.asarray(load_array(self.history_users[split])), np.asarray(load_array(self.history_matrix[split])))

    def summary(self) -> dict:
        return {
            "data_root": self.data_root, "bundle": self.bundle, "synthetic": self.synthetic,
            "articles": int(self.article_ids.shape[0]), "vocab_size": self.vocab_size,
            **{f"{s}_impressions": a.n_impressions for s, a in self.splits.items()},
            **{f"{s}_beyond_accuracy_rows": a.n_ba_rows for s, a in self.splits.items()},
            **{f"{s}_dropped_without_negative": a.n_dropped_without_negative for s, a in self.splits.items()},
            **({"test_unlabelled_without_negative": self.splits["test"].n_unlabelled_without_negative} if "test" in self.splits else {}),
            **{f"{s}_users": int(self.history_users[s].shape[0]) for s in self.history_users},
            "test_has_labels": self.splits["test"].has_labels if "test" in self.splits else False,
            # the impressions of every split in order (recalign compare pairs two runs only on equal digests)
            UNITS_DIGEST: units_digest(*(load_array(a.impression_ids) for _, a in sorted(self.splits.items()))),
        }


def resolve_data_root(data_root: str, cfg: NewsRecConfig, synthetic_dir: str | os.PathLike, bundle: str = "") -> tuple[Path, str, bool]:
    """``(root, bundle, synthetic)``: the user's EB-NeRD root (a folder or an ``s3://`` prefix, then
    downloaded) and bundle (``bundle`` or the config's ``data.bundle``), or the synthetic bundle
    written to ``synthetic_dir`` when no root is given."""
    if data_root:
        root = Path(localize_tree(data_root))
        try:
            require_dir(root)
        except InputError as exc:
            raise InputError(f"--data-root {data_root}: {str(exc).split(': ', 1)[1]}") from None
        bundle = bundle or cfg.data.bundle
        if not (root / bundle).is_dir():
            raise InputError(f"--data-root {data_root}: no bundle folder {bundle!r} in it (choose it with --split)")
        return root.absolute(), bundle, False
    if bundle:
        raise InputError(f"--split {bundle} needs --data-root (the synthetic data has one bundle)")
    write_synthetic_ebnerd(synthetic_dir, cfg.synthetic)
    return Path(synthetic_dir).absolute(), BUNDLE, True


def _articles(root: Path, bundle: str, text_columns) -> tuple[pl.DataFrame, Path]:
    """Articles of the train/validation bundle and of the test set, one row per id (test wins), and
    the file the alignment grid reads categories from: the test set's, or the bundle's when the test
    set ships none."""
    paths = [S.articles_path(root, bundle, "test"), S.articles_path(root, bundle, "train")]
    found = [p for p in dict.fromkeys(paths) if p.exists() or p.is_symlink()]  # a broken link or loop is an error
    if not found:
        raise InputError(f"{paths[0]}: articles file not found (nor {paths[1]})")
    frames = [read_articles(p, text_columns) for p in found]
    merged = pl.concat(frames, how="vertical_relaxed").unique(S.ARTICLE_ID, keep="first", maintain_order=True).sort(S.ARTICLE_ID)
    return merged, found[0]


def prepare_news_data(root: Path, bundle: str, synthetic: bool, cfg: NewsRecConfig, out_dir: str | os.PathLike) -> PreparedNewsData:
    """Validate and convert the articles, vectors, histories and behaviors of every split.

    Everything is written into a temporary folder inside ``out_dir`` and moved into place only when
    every file has been validated: a failure (in any split) leaves no final-named file."""
    with staged_dir(out_dir) as tmp:
        data = _prepare_news_data(root, bundle, synthetic, cfg, tmp)
    return rebase_refs(data, tmp, out_dir)


def _prepare_news_data(root: Path, bundle: str, synthetic: bool, cfg: NewsRecConfig, out_dir: str | os.PathLike) -> PreparedNewsData:
    out = Path(out_dir)
    wants_tokens = "nrms" in cfg.models
    wants_vectors = "nrms_docvec" in cfg.models
    articles, articles_file = _articles(root, bundle, cfg.text.columns if wants_tokens else ())
    ids = articles[S.ARTICLE_ID].to_numpy()
    tokens_ref = emb_ref = vectors_ref = None
    vocab_size = 0
    if wants_tokens:
        texts = article_texts(articles, cfg.text.columns)
        if cfg.text.tokenizer == "transformers":
            toks, matrix = transformers_tokens(texts, cfg.text.transformers_path, cfg.text.title_size)
            emb_ref = save_array(out / "word_embeddings.npy", matrix)
            vocab_size = matrix.shape[0]
        else:
            vocab = build_vocabulary(texts, cfg.text.vocab_min_count, cfg.text.vocab_max_size)
            toks = tokenize(texts, vocab, cfg.text.title_size)
            vocab_size = vocab.size
        tokens_ref = save_array(out / "tokens.npy", token_table(toks))
    if wants_vectors:
        vec_path = root / cfg.data.document_vectors
        vectors_ref = save_array(out / "vectors.npy", load_document_vectors(vec_path, ids, cfg.data.vector_column))
    users, matrices, splits = {}, {}, {}
    for split in S.SPLITS:
        d = S.split_dir(root, bundle, split)
        hist = load_histories(d / "history.parquet", ids, cfg.training.history_size, cfg.data.unknown_article)
        users[split] = save_array(out / split / "history_users.npy", hist.user_ids)
        matrices[split] = save_array(out / split / "history_matrix.npy", hist.matrix)
        splits[split] = read_behaviors(
            d / "behaviors.parquet", split, ids, hist, out, cfg.data.unknown_article, SPLIT_LABELS[split],
            cfg.data.drop_without_negative, cfg.data.batch_rows,
        )
    link_or_copy(S.split_dir(root, bundle, "test") / "history.parquet", out / "test" / "history.parquet")
    return PreparedNewsData(
        data_root=str(root), bundle=bundle, synthetic=synthetic, articles_path=str(articles_file.absolute()),
        article_ids=save_array(out / "article_ids.npy", ids), tokens=tokens_ref, word_embeddings=emb_ref, vocab_size=vocab_size,
        vectors=vectors_ref, history_users=users, history_matrix=matrices, splits=splits,
        test_history=file_ref(out / "test" / "history.parquet"),
    )


def publish_news_data(data: PreparedNewsData, storage: RunStorage) -> PreparedNewsData:
    """Make the prepared inputs visible to every task: every array, and a copy of the
    ``articles.parquet`` that ``data.articles_path`` names (the alignment grid reads its categories)."""
    copy = storage.dir("prepared") / "articles.parquet"
    if Path(data.articles_path).absolute() != copy.absolute():
        link_or_copy(data.articles_path, copy)
    articles = storage.publish(file_ref(copy))
    return replace(map_refs(data, storage.publish), articles_path=articles.path)
