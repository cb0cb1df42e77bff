"""EB-NeRD submission files: ``predictions.txt`` lines ``impression_id [rank,rank,...]``, zipped.

Ranks are 1-based and listed in the order of the impression's ``article_ids_inview`` (rank 1 =
shown first), as the RecSys '24 Challenge and the ebnerd-benchmark expect. Files are written in
batches straight into the zip, under a temporary name that becomes the final one on ``close()``.
"""

from __future__ import annotations

import os
import uuid
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from steps.errors import InputError
from steps.storage import FileRef, file_ref

MEMBER = "predictions.txt"


def submission_lines(impression_ids: np.ndarray, offsets: np.ndarray, ranks: np.ndarray) -> str:
    """The text of a batch: one ``impression_id [r1,r2,...]`` line per impression."""
    lists = pa.ListArray.from_arrays(pa.array(np.asarray(offsets, dtype=np.int32)), pa.array(np.asarray(ranks, dtype=np.int32)))
    df = pl.DataFrame({"id": pl.Series(np.asarray(impression_ids, dtype=np.int64)), "r": pl.Series(lists)})
    line = pl.format("{} [{}]", pl.col("id"), pl.col("r").cast(pl.List(pl.String)).list.join(","))
    text = df.select(line.str.join("\n")).item()
    return text + "\n" if text else ""


class SubmissionWriter:
    """Stream batches of ranks into ``<path>`` (a zip holding ``predictions.txt``)."""

    def __init__(self, path: str | os.PathLike, compresslevel: int = 1) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        self._zip = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=compresslevel)
        self._stream = self._zip.open(MEMBER, "w", force_zip64=True)
        self.n_lines = 0

    def write(self, impression_ids: np.ndarray, offsets: np.ndarray, ranks: np.ndarray) -> None:
        self._stream.write(submission_lines(impression_ids, offsets, ranks).encode("ascii"))
        self.n_lines += len(impression_ids)

    def close(self) -> FileRef:
        self._stream.close()
        self._zip.close()
        os.replace(self._tmp, self.path)
        return file_ref(self.path, shape=(self.n_lines,))

    def abort(self) -> None:
        try:
            self._stream.close()
            self._zip.close()
        finally:
            if self._tmp.exists():
                self._tmp.unlink()


def read_submission(path: str | os.PathLike) -> tuple[np.ndarray, list[np.ndarray]]:
    """Parse a submission zip (or plain ``predictions.txt``) into impression ids and rank arrays."""
    path = Path(path)
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            text = zf.read(MEMBER).decode("ascii")
    else:
        text = path.read_text()
    ids, ranks = [], []
    for i, line in enumerate(text.splitlines()):
        try:
            imp, rest = line.split(" ", 1)
            ids.append(int(imp))
            ranks.append(np.array([int(x) for x in rest.strip()[1:-1].split(",") if x], dtype=np.int64))
        except ValueError as exc:
            raise InputError(f"{path}: line {i + 1} is not 'impression_id [rank,...]': {line[:80]!r}") from exc
    return np.array(ids, dtype=np.int64), ranks
