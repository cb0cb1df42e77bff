"""steps.ragged: CSR helpers shared by the loaders."""

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from steps import ragged
from steps.errors import InputError


def test_first_repeat_in_rows_by_hand():
    offsets = np.array([0, 3, 3, 7])
    # row 0 [5, 6, 7] distinct; row 1 empty; row 2 [9, 4, 4, 9]: 4 at 1 and 2 repeats first
    assert ragged.first_repeat_in_rows(offsets, np.array([5, 6, 7, 9, 4, 4, 9])) == (2, 1, 2)
    assert ragged.first_repeat_in_rows(offsets, np.array([5, 6, 7, 9, 4, 8, 1])) is None
    # the same value in two different rows is not a repeat
    assert ragged.first_repeat_in_rows(np.array([0, 1, 2]), np.array([3, 3])) is None


@given(st.lists(st.lists(st.integers(0, 6), max_size=6), min_size=1, max_size=6))
def test_first_repeat_matches_a_row_by_row_scan(rows):
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    values = np.array([v for r in rows for v in r], dtype=np.int64)
    expected = None
    for i, r in enumerate(rows):
        seen = {}
        for j, v in enumerate(r):
            if v in seen:
                expected = (i, seen[v], j)
                break
            seen[v] = j
        if expected:
            break
    assert ragged.first_repeat_in_rows(offsets, values) == expected


def test_arrow_list_parts_rebases_offsets_and_names_null_rows():
    arr = pa.array([[1, 2], [3], [4, 5, 6]], pa.list_(pa.int32())).slice(1)  # offsets start at 2
    offsets, values = ragged.arrow_list_parts(arr, "ids", "f.parquet")
    assert offsets.tolist() == [0, 1, 4] and values.to_pylist() == [3, 4, 5, 6]
    keys = np.array([10, 11, 12])
    with pytest.raises(InputError, match=r"f.parquet: row 101 \(impression_id 11\): column 'ids' is null"):
        ragged.arrow_list_parts(pa.array([[1], None, [2]], pa.list_(pa.int32())), "ids", "f.parquet", 100, "impression_id", keys)
    with pytest.raises(InputError, match=r"f.parquet: row 2: column 'ids' holds a null value"):
        ragged.arrow_list_parts(pa.array([[1], [], [2, None]], pa.list_(pa.int32())), "ids", "f.parquet")
