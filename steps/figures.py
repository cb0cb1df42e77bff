"""Matplotlib for the reports, headless: the one place that selects the Agg backend.

Import ``plt`` from here (``from steps.figures import plt``) so that no figure module chooses a
backend on its own; :func:`save` writes a figure as PNG and closes it.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt", "save"]


def save(fig: plt.Figure, path: str | os.PathLike) -> None:
    """``fig`` as a PNG at ``path`` (110 dpi, tight), then closed."""
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
