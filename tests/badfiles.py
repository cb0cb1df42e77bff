"""Hostile inputs shared by the bad-input tests: damaged parquet pages, symlink loops."""

from pathlib import Path

import pyarrow.parquet as pq


def corrupt_page(path: Path, row_group: int = 1, column: int = 0) -> Path:
    """Overwrite the first page header of one column chunk with garbage; the footer stays valid, so
    the schema reads and the damage shows only when that row group is read."""
    chunk = pq.ParquetFile(path).metadata.row_group(row_group).column(column)
    offset = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    return path


def symlink_loop(folder: Path, name: str) -> Path:
    """``folder/name`` -> ``folder/name.b`` -> ``folder/name``."""
    a, b = folder / name, folder / f"{name}.b"
    a.symlink_to(b)
    b.symlink_to(a)
    return a
