"""Scoring without re-encoding: each article is encoded once, each user once (EB-NeRD histories are
fixed within a split), and every impression is scored as batched dot products of the two.

Also: evaluation with the project's ranking metrics, the prediction dump in the NAILS layout
(``impression_id``, ``article_ids_inview``, ``scores`` as logits, ``article_ids_clicked`` where
known), written in batches as parquet, and the EB-NeRD submission file.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from steps import ragged
from steps.align.data import PREDICTION_SCHEMA, PREDICTION_SCHEMA_NO_LABELS
from steps.align.submission import SubmissionWriter
from steps.metrics import DEFAULT_TIES, check_ties, mean_ranking_metrics, ragged_tie_ranks, ranking_metrics
from steps.newsrec.ebnerd import SplitData
from steps.storage import FileRef, file_ref

if TYPE_CHECKING:  # TensorFlow is imported only where a model is used
    from steps.newsrec.models import Recommender

def encode_articles(rec: Recommender, table: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """``(N + 2, d)`` article vectors (row 0, padding, is never used)."""
    out = [rec.infer("news", table[i : i + batch_size]) for i in range(0, len(table), batch_size)]
    return np.concatenate(out).astype(np.float32)


def encode_users(rec: Recommender, article_vectors: np.ndarray, history: np.ndarray, users: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """``(U, d)`` user vectors for the rows ``users`` of the history matrix (other rows stay zero)."""
    out = np.zeros((len(history), article_vectors.shape[1]), dtype=np.float32)
    for i in range(0, len(users), batch_size):
        rows = users[i : i + batch_size]
        h = history[rows]
        out[rows] = rec.infer("user", article_vectors[h], h > 0)
    return out


def score_impressions(article_vectors: np.ndarray, user_vectors: np.ndarray, split: SplitData, chunk: int = 1_000_000) -> np.ndarray:
    """Logit of every in-view article: ``<user vector, article vector>`` (flat, float32)."""
    rows = ragged.row_ids(split.offsets)
    scores = np.empty(len(split.inview_index), dtype=np.float32)
    for lo in range(0, len(scores), chunk):
        sl = slice(lo, lo + chunk)
        users = split.user_index[rows[sl]]
        scores[sl] = np.einsum("nd,nd->n", article_vectors[split.inview_index[sl]], user_vectors[users])
    return scores


def score_split(rec: Recommender, table: np.ndarray, history: np.ndarray, split: SplitData, batch_users: int = 4096,
                chunk: int = 1_000_000) -> np.ndarray:
    """Encode the articles and the split's users once, then score every impression."""
    articles = encode_articles(rec, table)
    users = encode_users(rec, articles, history, np.unique(split.user_index), batch_users)
    return score_impressions(articles, users, split, chunk)


def select_rows(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and flat element indices of a subset of ragged rows."""
    lens = ragged.lengths(offsets)[rows]
    sub = np.concatenate([[0], np.cumsum(lens)])
    flat = np.repeat(offsets[rows] - sub[:-1], lens) + np.arange(int(sub[-1]))
    return sub, flat


def labelled_rows(split: SplitData) -> np.ndarray:
    """Ordinary impressions (``impression_id > 0``) with at least one click."""
    if not split.has_labels or split.n == 0:
        return np.zeros(0, dtype=np.int64)
    n_pos = ragged.segment_sum(split.offsets, split.clicked.astype(np.int64))
    return np.flatnonzero((np.asarray(split.impression_ids) > 0) & (n_pos > 0))


def evaluate_scores(split: SplitData, scores: np.ndarray, ties: str = DEFAULT_TIES) -> dict[str, float] | None:
    """Mean AUC, MRR, nDCG@5, nDCG@10 over the labelled impressions (None if there are none);
    MRR and nDCG rank equal scores by ``ties`` (:data:`steps.metrics.TIE_RULES`)."""
    rows = labelled_rows(split)
    if len(rows) == 0:
        return None
    sub, flat = select_rows(split.offsets, rows)
    out = mean_ranking_metrics(ranking_metrics(sub, scores[flat], split.clicked[flat], ties=ties))
    out["impressions"] = len(rows)
    return out


def _list(offsets: np.ndarray, values: np.ndarray, typ: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=typ))


def write_dump(split: SplitData, scores: np.ndarray, path: str | os.PathLike, submission_path: str | os.PathLike | None = None,
               batch_rows: int = 100_000, ties: str = DEFAULT_TIES) -> tuple[FileRef, FileRef | None]:
    """Write the prediction dump (and the EB-NeRD submission zip) in batches; both appear only when
    complete. Returns their :class:`FileRef` (the dump's ``shape`` is its row count). The
    submission ranks equal scores by ``ties`` (``mean``: in in-view order, as a ranking must pick one)."""
    check_ties(ties)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = PREDICTION_SCHEMA if split.has_labels else PREDICTION_SCHEMA_NO_LABELS
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    sub = SubmissionWriter(submission_path) if submission_path else None
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for start in range(0, split.n, batch_rows):
                stop = min(start + batch_rows, split.n)
                lo, hi = int(split.offsets[start]), int(split.offsets[stop])
                off = np.asarray(split.offsets[start : stop + 1]) - lo
                sc = np.asarray(scores[lo:hi], dtype=np.float32)
                ids = np.asarray(split.inview_ids[lo:hi])
                cols = {
                    "impression_id": pa.array(np.asarray(split.impression_ids[start:stop], dtype=np.uint32)),
                    "article_ids_inview": _list(off, ids, pa.int32()),
                    "scores": _list(off, sc, pa.float32()),
                }
                if split.has_labels:
                    clicked = np.asarray(split.clicked[lo:hi])
                    click_off = np.concatenate([[0], np.cumsum(ragged.segment_sum(off, clicked.astype(np.int64)))])
                    cols["article_ids_clicked"] = _list(click_off, ids[clicked], pa.int32())
                writer.write_table(pa.table(cols, schema=schema))
                if sub is not None:
                    positions = ragged_tie_ranks(off, sc).ordered(ties)
                    sub.write(np.asarray(split.impression_ids[start:stop]), off, positions + 1)
        os.replace(tmp, path)
    except BaseException:
        if sub is not None:
            sub.abort()
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    sub_ref = sub.close() if sub is not None else None
    ref = file_ref(path, shape=(split.n,), dtype="parquet")
    return ref, sub_ref
