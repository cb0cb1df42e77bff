"""Training samples in the Wu et al. (2019) strategy: for every click of an impression, one sample
of ``1 + npratio`` candidates — the clicked article and ``npratio`` non-clicked articles of the
same impression (drawn without replacement when the impression has enough, with replacement
otherwise) — in random order, labelled with the position of the click.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from steps import ragged
from steps.errors import InputError


@dataclass(frozen=True)
class Samples:
    user_index: np.ndarray  # (S,) row in the split's history matrix
    candidates: np.ndarray  # (S, 1 + npratio) article indices
    label: np.ndarray  # (S,) position of the clicked article in ``candidates``
    impression: np.ndarray  # (S,) row of the impression the sample comes from

    def __len__(self) -> int:
        return len(self.label)


def sample_wu2019(
    offsets: np.ndarray,
    inview_index: np.ndarray,
    clicked: np.ndarray,
    user_index: np.ndarray,
    npratio: int,
    rng: np.random.Generator,
    impression_ids: np.ndarray | None = None,
) -> Samples:
    """One sample per clicked article; see the module docstring. Impressions without a click give
    no sample; an impression with a click but no non-clicked article is an :class:`InputError`."""
    if npratio < 1:
        raise ValueError(f"npratio must be >= 1, got {npratio}")
    offsets = np.asarray(offsets, dtype=np.int64)
    clicked = np.asarray(clicked, dtype=bool)
    n = len(offsets) - 1
    n_pos = ragged.segment_sum(offsets, clicked.astype(np.int64)) if n else np.zeros(0, np.int64)
    n_neg = ragged.lengths(offsets) - n_pos
    bad = (n_pos > 0) & (n_neg == 0)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        name = f"impression_id {impression_ids[r]}" if impression_ids is not None else f"impression row {r}"
        raise InputError(f"{name}: every in-view article is clicked, so there is no negative to sample")
    rows = ragged.row_ids(offsets)
    pos_flat = np.flatnonzero(clicked)
    pos_row = rows[pos_flat]
    neg_flat = np.flatnonzero(~clicked)
    neg_off = np.concatenate([[0], np.cumsum(n_neg)])
    # negatives of each sample: a random permutation of the impression's negatives (keys sorted),
    # first npratio taken; impressions with fewer negatives are topped up with replacement
    n_samples = len(pos_flat)
    chosen = np.empty((n_samples, npratio), dtype=np.int64)
    sample_neg_off = np.concatenate([[0], np.cumsum(n_neg[pos_row])])
    for sub, width in ragged.iter_buckets(sample_neg_off):
        idx, valid = ragged.padded_index(sample_neg_off, sub, width)
        keys = np.where(valid, rng.random(valid.shape), np.inf)
        order = np.argsort(keys, axis=1, kind="stable")[:, :npratio]
        k = min(npratio, width)
        local = np.zeros((len(sub), npratio), dtype=np.int64)
        local[:, :k] = order[:, :k]
        count = n_neg[pos_row[sub]]
        short = np.arange(npratio)[None, :] >= count[:, None]
        local = np.where(short, (rng.random((len(sub), npratio)) * count[:, None]).astype(np.int64), local)
        chosen[sub] = neg_off[pos_row[sub]][:, None] + local
    negatives = inview_index[neg_flat[chosen]] if n_samples else np.zeros((0, npratio), inview_index.dtype)
    cands = np.concatenate([inview_index[pos_flat][:, None], negatives], axis=1)
    # shuffle each row so that the click's position carries no signal
    perm = np.argsort(rng.random(cands.shape), axis=1)
    cands = np.take_along_axis(cands, perm, axis=1)
    label = np.argmin(perm, axis=1)  # where column 0 (the click) went
    return Samples(np.asarray(user_index)[pos_row].astype(np.int32), cands.astype(np.int32), label.astype(np.int32), pos_row)
