"""Matplotlib for the reports, headless: the one place that selects the Agg backend.

Import ``plt`` from here (``from steps.figures import plt``) so that no figure module chooses a
backend on its own; :func:`save` writes a figure as PNG and closes it.

``plt`` is loaded on first use, not on import: every Metaflow task imports its flow file (and so
the report modules), and only the report steps draw. Importing matplotlib.pyplot costs about a
second per task on the 2-core machines, which adds up over a fan-out of dozens of tasks.
"""

from __future__ import annotations

import os

__all__ = ["plt", "save"]


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


def save(fig, path: str | os.PathLike) -> None:
    """``fig`` (a matplotlib Figure) as a PNG at ``path`` (110 dpi, tight), then closed."""
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
