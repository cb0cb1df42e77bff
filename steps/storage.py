"""One small storage helper for large intermediate tables and for exports.

Large arrays and tables (prediction dumps, probability matrices) are written as ``.npy`` /
parquet files in a run folder; flows keep only a :class:`FileRef` (path, checksum, shape) as a
Metaflow artifact. Exports to ``artifacts/`` are atomic: a crashed step leaves no half-written
folder that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from steps.errors import InputError

DEFAULT_STORAGE_ROOT = ".recalign"
STORAGE_ROOT_ENV = "RECALIGN_STORAGE_ROOT"


@dataclass(frozen=True)
class FileRef:
    """A file written by a step: where it is, what it holds, and a checksum to verify it."""

    path: str
    sha256: str
    nbytes: int
    shape: tuple[int, ...] = ()
    dtype: str = ""

    def verify(self) -> None:
        """Raise :class:`InputError` if the file is missing or its checksum changed."""
        p = Path(self.path)
        if not p.exists():
            raise InputError(f"{self.path}: file is missing (it was written by an earlier step)")
        actual = sha256_file(p)
        if actual != self.sha256:
            raise InputError(
                f"{self.path}: checksum mismatch (expected {self.sha256[:12]}…, found {actual[:12]}…); "
                "the file was modified after it was written"
            )


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def storage_root(root: str | os.PathLike | None = None) -> Path:
    """The folder under which runs write their large files (``$RECALIGN_STORAGE_ROOT`` or ``.recalign``)."""
    return Path(root or os.environ.get(STORAGE_ROOT_ENV) or DEFAULT_STORAGE_ROOT).absolute()


def run_dir(flow_name: str, run_id: str, *parts: str, root: str | os.PathLike | None = None) -> Path:
    """``<root>/<flow>/<run_id>/<parts...>``, created if needed."""
    d = storage_root(root).joinpath(flow_name, str(run_id), *parts)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_array(path: str | os.PathLike, array: np.ndarray) -> FileRef:
    """Write ``array`` as ``.npy`` atomically and return its :class:`FileRef`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)

    _atomic_write(path, write)
    return FileRef(str(path), sha256_file(path), path.stat().st_size, tuple(array.shape), str(array.dtype))


def load_array(ref: FileRef, mmap: bool = True, verify: bool = False) -> np.ndarray:
    """Load an array written by :func:`save_array` or :class:`ArrayAppender` (memory-mapped by default)."""
    if verify:
        ref.verify()
    elif not Path(ref.path).exists():
        raise InputError(f"{ref.path}: file is missing (it was written by an earlier step)")
    if ref.path.endswith(".bin"):
        if int(np.prod(ref.shape)) == 0:
            return np.zeros(ref.shape, dtype=ref.dtype)
        arr = np.memmap(ref.path, dtype=ref.dtype, mode="r", shape=ref.shape)
        return arr if mmap else np.array(arr)
    return np.load(ref.path, mmap_mode="r" if mmap else None, allow_pickle=False)


def read_slice(ref: FileRef, start: int, stop: int) -> np.ndarray:
    """Elements ``start:stop`` (first axis) of an array file, read into fresh memory.

    Unlike slicing a memory map, the pages read are not kept mapped, so streaming through a
    large file keeps the resident set flat.
    """
    if not Path(ref.path).exists():
        raise InputError(f"{ref.path}: file is missing (it was written by an earlier step)")
    if ref.path.endswith(".bin"):
        dtype = np.dtype(ref.dtype)
        stop = min(stop, ref.shape[0])
        count = max(stop - start, 0)
        if count == 0:
            return np.zeros(0, dtype=dtype)
        return np.fromfile(ref.path, dtype=dtype, count=count, offset=start * dtype.itemsize)
    arr = np.load(ref.path, mmap_mode="r", allow_pickle=False)
    return np.array(arr[start:stop])


class ArrayAppender:
    """Write a 1-D array to disk piece by piece (raw ``.bin``), without holding it in memory.

    ``close()`` renames the finished file into place and returns its :class:`FileRef`; a file
    that was never closed keeps its temporary name and is not mistaken for a finished one.
    """

    def __init__(self, path: str | os.PathLike, dtype) -> None:
        self.path = Path(path).with_suffix(".bin")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        self._file = open(self._tmp, "wb")
        self._hash = hashlib.sha256()
        self.length = 0

    def append(self, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, dtype=self.dtype).tobytes()
        self._file.write(data)
        self._hash.update(data)
        self.length += len(values)

    def close(self) -> FileRef:
        self._file.close()
        os.replace(self._tmp, self.path)
        return FileRef(str(self.path), self._hash.hexdigest(), self.path.stat().st_size, (self.length,), self.dtype.str)

    def abort(self) -> None:
        self._file.close()
        if self._tmp.exists():
            self._tmp.unlink()


def file_ref(path: str | os.PathLike, shape: tuple[int, ...] = (), dtype: str = "") -> FileRef:
    """A :class:`FileRef` for a file written by other means (parquet, zip)."""
    p = Path(path)
    return FileRef(str(p.absolute()), sha256_file(p), p.stat().st_size, shape, dtype)


@contextlib.contextmanager
def atomic_export_dir(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``final_dir`` in one rename.

    On an exception the temporary folder is removed and ``final_dir`` is left untouched, so a
    crashed export never looks complete.
    """
    final = Path(final_dir).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.partial")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Hard-link ``src`` to ``dst`` (same file system) or copy it."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
