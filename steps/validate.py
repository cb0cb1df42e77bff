"""Input checks shared by every loader: paths, field ranges, narrowing casts, parquet batches.

Each format keeps one small table of its fields' valid ranges next to its reader
(:class:`Field` rows: column, storage dtype, min, max); :func:`check_field` applies a row of it to
a whole column at once and raises an :class:`InputError` naming the file, the column, the row or
line and the value. :func:`narrow` is the only way a loader casts to a smaller dtype: it checks
the range *before* the cast and the finiteness *after* it (1e300 is a finite float64 and an
infinite float32). :func:`iter_parquet_batches` wraps pyarrow's batch reader so that a corrupt page
behind a valid footer names the file and the rows it was reading, not a thrift traceback.

Everything is vectorised: a check is one NumPy expression over the column, and only the first
offending element is looked at in Python, to write the message.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from steps.errors import InputError

RowLabel = Callable[[int], str]


def row_label(r: int) -> str:
    return f"row {r}"


# --------------------------------------------------------------------------- paths
def _stat_error(path: Path) -> OSError | None:
    try:
        os.stat(path)
    except OSError as exc:
        return exc
    return None


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` as a :class:`Path` if it is a readable regular file; otherwise an :class:`InputError`
    that says which: not found, a symlink loop, a folder, or unreadable."""
    path = Path(path)
    exc = _stat_error(path)
    if exc is not None:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{path}: {what} is a symbolic link loop (the link points, in the end, back to itself)")
        if exc.errno == errno.ENOENT and path.is_symlink():
            raise InputError(f"{path}: {what} is a broken symbolic link (its target {os.readlink(path)!r} does not exist)")
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise InputError(f"{path}: {what} not found")
        raise InputError(f"{path}: {what} cannot be opened ({exc.strerror})")
    if path.is_dir():
        raise InputError(f"{path}: {what} is a folder, expected a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: {what} is not readable (permission denied)")
    return path


def require_dir(path: str | os.PathLike, what: str = "folder") -> Path:
    """``path`` as a :class:`Path` if it is a folder; an :class:`InputError` otherwise (not found,
    a symlink loop, a file)."""
    path = Path(path)
    exc = _stat_error(path)
    if exc is not None:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{path}: {what} is a symbolic link loop (the link points, in the end, back to itself)")
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise InputError(f"{path}: {what} not found")
        raise InputError(f"{path}: {what} cannot be opened ({exc.strerror})")
    if not path.is_dir():
        raise InputError(f"{path}: {what} is a file, expected a folder")
    return path


def read_parquet_schema(path: str | os.PathLike, what: str = "file", required: Sequence[str] = ()):
    """The schema of a parquet file that must exist and hold the ``required`` columns; an
    :class:`InputError` names the file (and the missing column) otherwise. The one guard every
    parquet reader opens its input with (each then checks the dtypes of its own format)."""
    import pyarrow.parquet as pq

    path = require_file(path, what)
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises several types for a non-parquet file
        raise InputError(f"{path}: not a readable parquet file ({exc})") from exc
    for col in required:
        if col not in schema.names:
            raise InputError(f"{path}: missing column {col!r} (found: {', '.join(schema.names)})")
    return schema


def read_csv_text(path: Path, required: Sequence[str]):
    """A CSV file with a header as a Polars frame of text columns, holding the ``required`` columns;
    an :class:`InputError` names the file otherwise (``path`` already checked by :func:`require_file`)."""
    import polars as pl

    try:
        frame = pl.read_csv(path, infer_schema=False)
    except Exception as exc:  # polars raises several types for a malformed file
        raise InputError(f"{path}: not a readable CSV file ({exc})") from exc
    for col in required:
        if col not in frame.columns:
            raise InputError(f"{path}: missing column {col!r} (found: {', '.join(frame.columns)})")
    return frame


# --------------------------------------------------------------------------- ranges
@dataclass(frozen=True)
class Field:
    """One field of a format: its column name, the dtype it is stored in, and its valid range
    (inclusive; ``None`` = the dtype's own limit). ``what`` says what the value is, for messages."""

    column: str
    dtype: str
    lo: float | int | None = None
    hi: float | int | None = None
    what: str = ""

    def bounds(self) -> tuple[float | int, float | int]:
        dt = np.dtype(self.dtype)
        info = np.iinfo(dt) if dt.kind in "iu" else np.finfo(dt) if dt.kind == "f" else None
        lo = self.lo if self.lo is not None else (info.min if info is not None else -np.inf)
        hi = self.hi if self.hi is not None else (info.max if info is not None else np.inf)
        return lo, hi

    def describe(self) -> str:
        lo, hi = self.bounds()
        return f"{self.what + ': ' if self.what else ''}{_num(lo)} to {_num(hi)}"


def fields_table(fields: Sequence[Field]) -> dict[str, Field]:
    return {f.column: f for f in fields}


def _num(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):g}"
    return str(v)


def first_outside(values: np.ndarray, lo, hi) -> int | None:
    """Index of the first value outside ``[lo, hi]`` (or NaN), or ``None``."""
    v = np.asarray(values)
    if v.size == 0:
        return None
    if v.dtype.kind in "iu":
        # compare in the values' own integer type (no float rounding of ids near 2**63)
        info = np.iinfo(v.dtype)
        bad = np.zeros(v.shape, dtype=bool)
        if lo > info.max or hi < info.min:
            bad[:] = True
        else:
            if lo > info.min:
                bad |= v < v.dtype.type(int(np.ceil(lo)))
            if hi < info.max:
                bad |= v > v.dtype.type(int(np.floor(hi)))
    else:
        bad = ~((v >= lo) & (v <= hi))  # NaN compares False: caught
    if not bad.any():
        return None
    return int(np.flatnonzero(bad.ravel())[0])


def check_field(
    values: np.ndarray, field: Field, where: object, label: RowLabel = row_label, position: Callable[[int], int] | None = None
) -> None:
    """Refuse any value of ``values`` outside ``field``'s range (NaN and ±inf included for floats).

    ``where`` is the file; ``label(r)`` words the location of element ``r`` (``"line 7"``, ``"row 3
    (impression_id 9)"``); ``position`` maps a flat element index to the index ``label`` expects
    (for list columns: the row of a flat value)."""
    lo, hi = field.bounds()
    i = first_outside(values, lo, hi)
    if i is None:
        return
    v = np.asarray(values).ravel()[i]
    r = position(i) if position is not None else i
    raise InputError(
        f"{where}: column {field.column!r}, {label(r)}: value {_num(v.item() if hasattr(v, 'item') else v)} is outside "
        f"the valid range ({field.describe()})"
    )


def narrow(
    values: np.ndarray, dtype, where: object, column: str, label: RowLabel = row_label,
    position: Callable[[int], int] | None = None,
) -> np.ndarray:
    """``values`` cast to ``dtype``, checked before the cast (integers: the dtype's range) and after
    it (floats: still finite; a finite value that overflows becomes ±inf and is refused)."""
    dt = np.dtype(dtype)
    v = np.asarray(values)
    if dt.kind in "iu" and v.dtype.kind in "iuf":
        info = np.iinfo(dt)
        i = first_outside(v, info.min, info.max)
        if i is not None:
            r = position(i) if position is not None else i
            raise InputError(
                f"{where}: column {column!r}, {label(r)}: value {_num(v.ravel()[i].item())} does not fit in {dt.name} "
                f"({info.min} to {info.max})"
            )
        return v.astype(dt, copy=False)
    with np.errstate(over="ignore"):
        out = v.astype(dt, copy=False)
    if dt.kind == "f":
        bad = ~np.isfinite(out)
        if bad.any():
            i = int(np.flatnonzero(bad.ravel())[0])
            r = position(i) if position is not None else i
            before = v.ravel()[i].item()
            extra = f" (it becomes {out.ravel()[i]} as {dt.name})" if np.isfinite(before) else ""
            raise InputError(f"{where}: column {column!r}, {label(r)}: value {before}{extra} is not a finite number")
    return out


def smallest_int_dtype(n: int, candidates=(np.int16, np.int32, np.int64)) -> np.dtype:
    """The first of ``candidates`` that holds ``0..n``."""
    for c in candidates:
        if n <= np.iinfo(c).max:
            return np.dtype(c)
    raise InputError(f"{n} does not fit in any of {[np.dtype(c).name for c in candidates]}")


def first_repeat(values: np.ndarray, ignore=None) -> tuple[int, int] | None:
    """``(first row, later row)`` of the earliest repeated value (the later row as small as
    possible), ignoring ``ignore``; ``None`` if every value occurs once."""
    v = np.asarray(values)
    order = np.argsort(v, kind="stable")
    s = v[order]
    same = s[1:] == s[:-1]
    if ignore is not None:
        same &= s[1:] != ignore
    dup = np.flatnonzero(same)
    if not len(dup):
        return None
    later = order[dup + 1]
    row = int(later.min())
    first = int(np.flatnonzero(v == v[row])[0])
    return first, row


# --------------------------------------------------------------------------- parquet
def _damaged(path, first: int, last: int | None, batch: int, exc: BaseException) -> InputError:
    rows = f"rows {first} to {last}" if last is not None else f"rows from {first}"
    return InputError(f"{path}: cannot read batch {batch} ({rows}): the file is damaged or truncated ({type(exc).__name__}: {exc})")


def iter_parquet_batches(path: str | os.PathLike, batch_size: int, columns: Sequence[str] | None = None) -> Iterator:
    """``pyarrow`` record batches of ``path``; a read error names the file, the batch and its rows.

    ``pre_buffer=False``: with pre-buffering, pyarrow keeps every row group's buffers alive while
    iterating and the memory grows with the file; without it, it stays flat.
    """
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path, pre_buffer=False)
        total = pf.metadata.num_rows
    except Exception as exc:  # pyarrow raises OSError / ArrowInvalid for a damaged footer
        raise InputError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from exc
    it = pf.iter_batches(batch_size=batch_size, columns=list(columns) if columns is not None else None)
    row0 = batch = 0
    while True:
        try:
            b = next(it)
        except StopIteration:
            return
        except Exception as exc:  # OSError "Couldn't deserialize thrift", ArrowInvalid, ...
            raise _damaged(path, row0, min(row0 + batch_size, total) - 1 if total else None, batch, exc) from exc
        yield b
        row0 += b.num_rows
        batch += 1


def read_parquet_columns(path: str | os.PathLike, columns: Sequence[str]):
    """A whole parquet file's ``columns`` as a ``pyarrow.Table``; a read error names the file."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=list(columns))
    except Exception as exc:
        raise InputError(f"{path}: cannot read columns {list(columns)}: the file is damaged or truncated "
                         f"({type(exc).__name__}: {exc})") from exc
