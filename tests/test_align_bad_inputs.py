"""AlignFlow's loader against hostile inputs: every error names the file and the value, and after
any failure ``prepare_dump`` leaves no final-named output."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steps.align.data import FIELDS, prepare_dump
from steps.errors import InputError
from steps.storage import read_slice
from tests.badfiles import corrupt_page, symlink_loop
from tests.test_align_data import BA, GOOD, write_articles, write_dump


def _no_outputs(folder):
    """Nothing in the output folder (a staging folder that was removed leaves nothing either)."""
    return not folder.exists() or list(folder.iterdir()) == []


def _dump(path, imp, inview, scores, clicked=None, inview_type=pa.int32(), score_type=pa.float32(), imp_type=pa.uint32()):
    cols = {"impression_id": pa.array(imp, imp_type), "article_ids_inview": pa.array(inview, pa.list_(inview_type)),
            "scores": pa.array(scores, pa.list_(score_type))}
    if clicked is not None:
        cols["article_ids_clicked"] = pa.array(clicked, pa.list_(inview_type))
    pq.write_table(pa.table(cols), path)
    return path


@pytest.fixture
def art(tmp_path):
    return write_articles(tmp_path / "articles.parquet")


@pytest.mark.parametrize("imp, inview, scores, clicked, types, message", [
    # a repeated non-zero impression id (0 is the BA block's shared id)
    ([0, 11, 12, 11], [BA, [1, 2], [3, 5], [1, 6]], [[0.0] * 6, [0.1, 0.2], [0.1, 0.2], [0.1, 0.2]], [[], [1], [3], [6]], {},
     r"predictions.parquet: column 'impression_id' repeats impression_id 11 \(rows 1 and 3\)"),
    # a float64 score that is finite but infinite in float32 (checked after the cast)
    ([11], [[1, 2]], [[0.1, 1e300]], None, {"score_type": pa.float64()},
     r"row 0 \(impression_id 11\): column 'scores' holds 1e\+300 \(outside float32's range: stored as inf\) at position 1"),
    # article ids beyond int32 (an i64 list): refused before narrowing
    ([11], [[1, 2**32 + 1]], [[0.1, 0.2]], None, {"inview_type": pa.int64()},
     r"column 'article_ids_inview', row 0 \(impression_id 11\): value 4294967297 is outside the valid range \(article ids: 0 to 2147483647\)"),
    ([11], [[1, -2]], [[0.1, 0.2]], None, {},
     r"column 'article_ids_inview', row 0 \(impression_id 11\): value -2 is outside the valid range"),
    ([11], [[1, 2]], [[0.1, 0.2]], [[-1]], {},
     r"column 'article_ids_clicked', row 0 \(impression_id 11\): value -1 is outside the valid range"),
    # impression ids stored in a wider integer than u32
    ([11, 2**33], [[1, 2], [1, 2]], [[0.1, 0.2]] * 2, None, {"imp_type": pa.int64()},
     r"column 'impression_id', row 1: value 8589934592 is outside the valid range \(impression ids \(0: the beyond-accuracy rows\): 0 to 4294967295\)"),
    ([-1], [[1, 2]], [[0.1, 0.2]], None, {"imp_type": pa.int64()},
     r"column 'impression_id', row 0: value -1 is outside the valid range"),
])
def test_values_outside_their_range_are_refused(tmp_path, art, imp, inview, scores, clicked, types, message):
    dump = _dump(tmp_path / "predictions.parquet", imp, inview, scores, clicked, **types)
    with pytest.raises(InputError, match=message):
        prepare_dump(dump, art, tmp_path / "prepared", batch_rows=2)
    assert _no_outputs(tmp_path / "prepared")


def test_distinct_ids_equal_in_their_low_32_bits_are_not_a_repeat(tmp_path):
    """Article 5 and 2**32 + 5 must not collide in the repeated-article check ("appears twice"):
    the id beyond i32 is refused as out of range and never compared by its low bits."""
    art = tmp_path / "a.parquet"
    pq.write_table(pa.table({"article_id": pa.array([5, 6], pa.int64()), "category_str": ["sport", "krimi"]}), art)
    dump = _dump(tmp_path / "p.parquet", [11], [[5, 2**32 + 5]], [[0.1, 0.2]], inview_type=pa.int64())
    with pytest.raises(InputError, match="value 4294967301 is outside the valid range") as err:
        prepare_dump(dump, art, tmp_path / "out")
    assert "twice" not in str(err.value)


def test_more_than_32767_categories_do_not_wrap(tmp_path):
    """Category indices were int16: category 32,768 wrapped to a negative index."""
    n = 33_000
    art = tmp_path / "a.parquet"
    pq.write_table(pa.table({"article_id": pa.array(np.arange(1, n + 1), pa.int32()),
                             "category_str": [f"c{i:05d}" for i in range(n)]}), art)
    dump = _dump(tmp_path / "p.parquet", [11, 12], [[1, n], [n - 1, 2]], [[0.1, 0.2], [0.3, 0.4]], [[n], [2]])
    p = prepare_dump(dump, art, tmp_path / "out")
    idx = read_slice(p.category_index, 0, 4)
    assert idx.dtype == np.int32 and (idx >= 0).all()
    assert [p.categories[i] for i in idx] == [f"c{0:05d}", f"c{n - 1:05d}", f"c{n - 2:05d}", f"c{1:05d}"]


def test_negative_article_id_in_the_articles_file(tmp_path):
    art = tmp_path / "a.parquet"
    pq.write_table(pa.table({"article_id": pa.array([1, -7], pa.int32()), "category_str": ["sport", "krimi"]}), art)
    dump = _dump(tmp_path / "p.parquet", [11], [[1, 2]], [[0.1, 0.2]])
    with pytest.raises(InputError, match=r"a.parquet: column 'article_id', row 1: value -7 is outside the valid range"):
        prepare_dump(dump, art, tmp_path / "out")


def test_late_failures_leave_no_final_named_output(tmp_path, art):
    """Failures after every row was written ("every candidate excluded", "no rows") leave no
    final-named offsets.bin, category_index.bin ... behind."""
    out = tmp_path / "prepared"
    # every BA candidate excluded: found only after the whole file was read and written
    dump = write_dump(tmp_path / "p.parquet", GOOD)
    with pytest.raises(InputError, match="every beyond-accuracy candidate is in an excluded category"):
        prepare_dump(dump, art, out, exclude_categories=["NWS", "SPT", "CRM", "auto"])
    assert _no_outputs(out)
    # an empty file
    empty = _dump(tmp_path / "e.parquet", [], [], [])
    with pytest.raises(InputError, match="e.parquet: the file has no rows"):
        prepare_dump(empty, art, out)
    assert _no_outputs(out)
    # success: the files are there, where the refs say
    p = prepare_dump(dump, art, out)
    assert (out / "offsets.bin").exists() and p.offsets.path == str((out / "offsets.bin").absolute())
    assert not [f for f in out.iterdir() if f.name.startswith(".")]
    p.offsets.verify()


def test_damaged_page_behind_a_valid_footer(tmp_path, art):
    dump = tmp_path / "p.parquet"
    rows = [(0, BA, [0.1] * 6)] * 4 + [(20 + i, [1, 2], [0.1, 0.2], [1]) for i in range(4)]
    cols = {"impression_id": pa.array([r[0] for r in rows], pa.uint32()),
            "article_ids_inview": pa.array([r[1] for r in rows], pa.list_(pa.int32())),
            "scores": pa.array([r[2] for r in rows], pa.list_(pa.float32()))}
    pq.write_table(pa.table(cols), dump, row_group_size=4, compression="none")
    corrupt_page(dump, row_group=1, column=0)
    with pytest.raises(InputError, match=r"p.parquet: cannot read batch 2 \(rows 4 to 5\): the file is damaged or truncated"):
        prepare_dump(dump, art, tmp_path / "out", batch_rows=2)
    assert _no_outputs(tmp_path / "out")


def test_symlink_loop_is_not_reported_as_missing(tmp_path, art):
    loop = symlink_loop(tmp_path, "p.parquet")
    with pytest.raises(InputError, match="p.parquet: prediction file is a symbolic link loop"):
        prepare_dump(loop, art, tmp_path / "out")
    with pytest.raises(InputError, match="a.parquet: articles file is a symbolic link loop"):
        prepare_dump(write_dump(tmp_path / "ok.parquet", GOOD), symlink_loop(tmp_path, "a.parquet"), tmp_path / "out")


def test_flow_inputs_name_a_symlink_loop(tmp_path, art):
    from steps.align.pipeline import resolve_inputs
    from steps.align.synthetic import SyntheticDumpSpec

    loop = symlink_loop(tmp_path, "p.parquet")
    with pytest.raises(InputError, match="p.parquet: file is a symbolic link loop"):
        resolve_inputs(str(loop), str(art), SyntheticDumpSpec(), tmp_path)
    with pytest.raises(InputError, match="nope.parquet: file not found"):
        resolve_inputs(str(tmp_path / "nope.parquet"), str(art), SyntheticDumpSpec(), tmp_path)


def test_the_range_table_covers_every_stored_column():
    assert set(FIELDS) == {"impression_id", "article_ids_inview", "article_ids_clicked", "scores", "article_id"}
    assert FIELDS["impression_id"].bounds() == (0, 2**32 - 1)
    assert FIELDS["article_ids_inview"].bounds() == (0, 2**31 - 1)


def test_a_bad_row_fails_the_prepare_step_before_anything_is_written(tmp_path, art):
    """What AlignFlow's ``prepare`` step does with ``--predictions``/``--articles`` (in-process; the
    flow test of a failed run checks that a failed run exports nothing): the inputs resolve, the
    loader names the row, impression and position, and no prepared output is left."""
    from steps.align.pipeline import resolve_inputs
    from steps.align.synthetic import SyntheticDumpSpec

    dump = write_dump(tmp_path / "predictions.parquet", GOOD[:2] + [(21, [1, 2], [0.3, float("nan")], [1])])
    inputs = resolve_inputs(str(dump), str(art), SyntheticDumpSpec(), tmp_path / "data")
    assert not inputs.synthetic and inputs.predictions == str(dump.absolute())
    with pytest.raises(InputError, match=r"row 2 \(impression_id 21\): column 'scores' holds nan at position 1"):
        prepare_dump(inputs.predictions, inputs.articles, tmp_path / "data" / "prepared")
    assert _no_outputs(tmp_path / "data" / "prepared") and not (tmp_path / "data" / "synthetic").exists()
