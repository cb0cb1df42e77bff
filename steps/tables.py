"""Small table helpers shared by the flows: concatenation, JSON summaries, card table rows."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import polars as pl


def concat(frames: Sequence[pl.DataFrame | None]) -> pl.DataFrame:
    """Stack tables (missing columns filled with nulls, compatible dtypes widened), skipping None
    and empty tables; when every table is empty, the first one (its schema kept)."""
    frames = [f for f in frames if f is not None]
    non_empty = [f for f in frames if not f.is_empty()]
    if non_empty:
        return pl.concat(non_empty, how="diagonal_relaxed")
    return frames[0].clear() if frames else pl.DataFrame()


def json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def table_rows(results: pl.DataFrame, columns: Sequence[str] | None = None, digits: int = 4) -> list[list[str]]:
    """Rows of strings for a card table."""
    cols = list(columns or results.columns)
    out = []
    for row in results.select(cols).iter_rows():
        out.append([f"{v:.{digits}f}" if isinstance(v, float) else ("–" if v is None else str(v)) for v in row])
    return out


def lists_as_text(df: pl.DataFrame, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """``df`` with its list columns (or the given ones) written as text like ``[3, 17]``, as CSV
    needs (Polars' CSV writer rejects nested columns); other columns are unchanged."""
    names = [c for c, t in df.schema.items() if isinstance(t, pl.List)] if columns is None else list(columns)
    return df.with_columns(pl.format("[{}]", pl.col(c).cast(pl.List(pl.String)).list.join(", ")).alias(c) for c in names)
