"""The one export of a run: tables, figures, files and a summary in a folder, written atomically.

Every flow's report step and ``recalign export`` write through :func:`export_run`; the folder
(local, or an ``s3://`` prefix staged locally first, see :func:`steps.storage.atomic_export`)
appears complete or not at all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Union

import polars as pl

from steps.figures import save
from steps.storage import FileRef, atomic_export, is_remote, link_or_copy, localize
from steps.tables import json_default, lists_as_text

#: A file to export: a FileRef (localised first), a local path (hard-linked or copied) or the bytes to write.
ExportFile = Union[FileRef, str, os.PathLike, bytes]


def export_run(
    export_dir: str | os.PathLike,
    tables: Mapping[str, pl.DataFrame],
    figures: Mapping[str, object],
    files: Mapping[str, ExportFile],
    summary: dict,
    work_dir: str | os.PathLike | None = None,
    summary_name: str = "summary.json",
) -> str:
    """Write a run's export to ``export_dir`` and return where it went (an absolute local path or the URI).

    ``tables``: ``name`` → ``<name>.csv`` (list columns written as text, see
    :func:`steps.tables.lists_as_text`), or ``<name>.parquet`` when the name ends so; ``figures``:
    file name → matplotlib Figure or its PNG bytes (:func:`steps.figures.png_bytes`); ``files``: relative path → :data:`ExportFile`;
    ``summary``: JSON in ``summary_name``, written last. Names may hold ``/`` (sub-folders).
    ``work_dir`` stages a remote export (default: a temporary folder).
    """
    with atomic_export(export_dir, work_dir, marker=summary_name) as tmp:
        for name, df in tables.items():
            path = _target(tmp, name if name.endswith(".parquet") else f"{name}.csv")
            if name.endswith(".parquet"):
                df.write_parquet(path)
            else:
                lists_as_text(df).write_csv(path)
        for name, fig in figures.items():
            save(fig, _target(tmp, name))
        for name, src in files.items():
            path = _target(tmp, name)
            if isinstance(src, bytes):
                path.write_bytes(src)
            else:
                link_or_copy(localize(src).path if isinstance(src, FileRef) else src, path)
        _target(tmp, summary_name).write_text(json.dumps(summary, indent=2, default=json_default))
    return str(export_dir) if is_remote(export_dir) else str(Path(export_dir).absolute())


def _target(root: Path, name: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
