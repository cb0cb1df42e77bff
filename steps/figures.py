"""Matplotlib for the reports, headless: the one place that selects the Agg backend.

Import ``plt`` from here (``from steps.figures import plt``) so that no figure module chooses a
backend on its own; :func:`png_bytes` renders a finished figure as PNG once (the export and
the card both use those bytes) and :func:`save` writes them to a file.

``plt`` is loaded on first use, not on import: every Metaflow task imports its flow file (and so
the report modules), and only the report steps draw. Importing matplotlib.pyplot costs about a
second per task on the 2-core machines, which adds up over a fan-out of dozens of tasks.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

__all__ = ["plt", "png_bytes", "save", "interval_bounds", "error_lengths"]


class _Pyplot:
    """``matplotlib.pyplot`` with the Agg backend, imported when an attribute is first read."""

    _module = None

    def __getattr__(self, name: str):
        if _Pyplot._module is None:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as pyplot

            _Pyplot._module = pyplot
        return getattr(_Pyplot._module, name)


plt = _Pyplot()


#: The attribute of a rendered Figure that holds its PNG (a figure handed to a report is final).
_PNG = "_recalign_png"


def png_bytes(fig) -> bytes:
    """``fig`` (a matplotlib Figure, or PNG bytes already) as PNG bytes (110 dpi, tight).

    The figure is drawn once and closed; the bytes are kept on it, so the exported file and the
    card's image are the same picture and a report step draws each figure once, not twice
    (drawing is most of a report step's time).
    """
    if isinstance(fig, (bytes, bytearray)):
        return bytes(fig)
    cached = getattr(fig, _PNG, None)
    if cached is None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        cached = buf.getvalue()
        setattr(fig, _PNG, cached)
    return cached


def save(fig, path: str | os.PathLike) -> None:
    """``fig`` (a Figure or PNG bytes, see :func:`png_bytes`) as a PNG file at ``path``."""
    Path(path).write_bytes(png_bytes(fig))


def interval_bounds(grp, col: str):
    """``(lo, hi)`` of ``col`` of a polars table (its ``<col>_lo`` / ``<col>_hi``) as float arrays (NaN where null), or None when the table has no
    finite interval of it."""
    import polars as pl

    lo, hi = f"{col}_lo", f"{col}_hi"
    if lo not in grp.columns or hi not in grp.columns:
        return None
    a = grp[lo].cast(pl.Float64).fill_null(np.nan).to_numpy()
    b = grp[hi].cast(pl.Float64).fill_null(np.nan).to_numpy()
    return (a, b) if np.isfinite(a).any() and np.isfinite(b).any() else None


def error_lengths(est, bounds):
    """Asymmetric error-bar lengths (2, n) from interval bounds (0 where null), for ``errorbar``."""
    if bounds is None:
        return None
    lo, hi = bounds
    err = np.vstack([est - lo, hi - est])
    return np.clip(np.nan_to_num(err, nan=0.0), 0.0, None)
