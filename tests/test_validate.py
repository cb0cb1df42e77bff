"""steps.validate (ranges, narrowing casts, repeats, damaged parquet, paths) and storage.staged_dir."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steps import ragged
from steps.errors import InputError
from steps.storage import ArrayAppender, rebase_refs, staged_dir
from steps.validate import (
    Field,
    check_field,
    first_outside,
    first_repeat,
    iter_parquet_batches,
    narrow,
    require_dir,
    require_file,
    smallest_int_dtype,
)
from tests.badfiles import corrupt_page, symlink_loop


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-2**63, 2**63 - 1), max_size=30), st.integers(-2**40, 2**40), st.integers(0, 2**41))
def test_first_outside_matches_a_loop(values, lo, width):
    hi = lo + width
    want = next((i for i, v in enumerate(values) if not lo <= v <= hi), None)
    assert first_outside(np.array(values, dtype=np.int64), lo, hi) == want


def test_first_outside_by_hand():
    assert first_outside(np.array([1.0, np.nan, 9.0]), 0, 5) == 1  # NaN is outside every range
    assert first_outside(np.array([1.0, 2.0, np.inf]), 0, np.finfo(np.float64).max) == 2
    assert first_outside(np.array([0, 2**32], dtype=np.uint64), 0, 2**32 - 1) == 1
    assert first_outside(np.array([5, 6], dtype=np.uint8), 0, 300) is None  # bound beyond the dtype
    assert first_outside(np.array([5, 6], dtype=np.uint8), 300, 400) == 0
    assert first_outside(np.zeros(0), 0, 1) is None


def test_check_field_names_file_column_row_and_value():
    f = Field("rating", "float64", 0.5, 5.0, "ratings")
    check_field(np.array([0.5, 5.0]), f, "r.csv")
    with pytest.raises(InputError, match=r"r.csv: column 'rating', line 4: value 99 is outside the valid range \(ratings: 0.5 to 5\)"):
        check_field(np.array([1.0, 2.0, 99.0]), f, "r.csv", lambda r: f"line {r + 2}")
    ids = Field("article_ids_inview", "int32", 0, None, "article ids")
    offsets = np.array([0, 2, 5])
    with pytest.raises(InputError, match=r"row 1: value -3 is outside the valid range \(article ids: 0 to 2147483647\)"):
        check_field(np.array([1, 2, 3, -3, 4]), ids, "p", position=lambda i: int(np.searchsorted(offsets, i, side="right") - 1))


def test_narrow_checks_before_and_after_the_cast():
    assert narrow(np.array([1, 2**31 - 1]), np.int32, "f", "c").dtype == np.int32
    with pytest.raises(InputError, match=r"f: column 'c', row 1: value 2147483648 does not fit in int32"):
        narrow(np.array([1, 2**31]), np.int32, "f", "c")
    with pytest.raises(InputError, match=r"row 0: value -1 does not fit in uint32"):
        narrow(np.array([-1]), np.uint32, "f", "c")
    with np.errstate(over="ignore"):
        with pytest.raises(InputError, match=r"row 2: value 1e\+300 \(it becomes inf as float32\) is not a finite number"):
            narrow(np.array([0.0, 1.0, 1e300]), np.float32, "f", "c")
    with pytest.raises(InputError, match="row 0: value nan is not a finite number"):
        narrow(np.array([np.nan]), np.float32, "f", "c")


def test_smallest_int_dtype():
    assert smallest_int_dtype(32_767) == np.int16 and smallest_int_dtype(32_768) == np.int32
    assert smallest_int_dtype(2**40) == np.int64


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), max_size=20), st.sampled_from([None, 0]))
def test_first_repeat_matches_a_loop(values, ignore):
    want = None
    for j, v in enumerate(values):
        if v != ignore and v in values[:j]:
            want = (values.index(v), j)
            break
    assert first_repeat(np.array(values, dtype=np.int64), ignore) == want


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from([3, 7, 2**32 + 3, 2**40 + 7, -2**33]), max_size=5), max_size=6))
def test_first_repeat_in_rows_compares_whole_ids(rows):
    """Ids equal in their low 32 bits (3 and 2**32 + 3) are different articles, not a repeat."""
    want = None
    for r, row in enumerate(rows):
        for j, v in enumerate(row):
            if v in row[:j]:
                want = (r, row.index(v), j)
                break
        if want:
            break
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    values = np.array([v for r in rows for v in r], dtype=np.int64)
    assert ragged.first_repeat_in_rows(offsets, values) == want


def test_damaged_parquet_page_names_file_and_rows(tmp_path):
    t = pa.table({"a": pa.array(np.arange(100), pa.int64())})
    path = tmp_path / "d.parquet"
    pq.write_table(t, path, row_group_size=50, compression="none")
    corrupt_page(path, row_group=1)
    got = []
    with pytest.raises(InputError, match=r"d.parquet: cannot read batch 1 \(rows 30 to 59\): the file is damaged or truncated \(OSError"):
        for b in iter_parquet_batches(path, 30, ["a"]):
            got.append(b.num_rows)
    assert got == [30]
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="junk.parquet: not a readable parquet file"):
        list(iter_parquet_batches(tmp_path / "junk.parquet", 10))


def test_paths_say_what_is_wrong(tmp_path):
    loop = symlink_loop(tmp_path, "loop.csv")
    with pytest.raises(InputError, match="loop.csv: ratings file is a symbolic link loop"):
        require_file(loop, "ratings file")
    with pytest.raises(InputError, match="nope.csv: ratings file not found"):
        require_file(tmp_path / "nope.csv", "ratings file")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(InputError, match="dangling: file is a broken symbolic link"):
        require_file(tmp_path / "dangling")
    with pytest.raises(InputError, match="is a folder, expected a file"):
        require_file(tmp_path)
    with pytest.raises(InputError, match="is a symbolic link loop"):
        require_dir(loop)
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="f: folder is a file, expected a folder"):
        require_dir(tmp_path / "f")


def test_staged_dir_moves_outputs_only_on_success(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("not ours")
    with pytest.raises(RuntimeError):
        with staged_dir(out) as tmp:
            w = ArrayAppender(tmp / "offsets", np.int64)
            w.append(np.arange(3))
            w.close()
            raise RuntimeError("late failure")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # no final-named file, no staging folder
    with staged_dir(out) as tmp:
        (tmp / "sub").mkdir()
        w = ArrayAppender(tmp / "sub" / "offsets", np.int64)
        w.append(np.arange(3))
        ref = w.close()
    moved = rebase_refs({"a": [ref]}, tmp, out)["a"][0]
    assert moved.path == str(out / "sub" / "offsets.bin") and moved.sha256 == ref.sha256
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "sub"]
    np.testing.assert_array_equal(np.fromfile(moved.path, dtype=np.int64), [0, 1, 2])
