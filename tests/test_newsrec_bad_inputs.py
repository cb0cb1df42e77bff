"""NewsRec's EB-NeRD loaders against hostile inputs: ranges, nulls, damaged pages, symlink loops;
a failed ``prepare_news_data`` leaves no complete-looking ``train/*.bin``."""

import shutil
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steps.errors import InputError
from steps.newsrec import schema as S
from steps.newsrec.config import NewsRecConfig
from steps.newsrec.ebnerd import Histories, load_document_vectors, load_histories, read_articles, read_behaviors
from steps.newsrec.prepare import prepare_news_data
from steps.newsrec.synthetic import BUNDLE
from tests.badfiles import corrupt_page, symlink_loop
from tests.test_newsrec_data import _rewrite, _set_list, bundle  # noqa: F401  (bundle is a fixture)

IDS = np.array([101, 102, 103])
HIST = Histories(np.array([5, 7]), np.array([[2, 3], [3, 4]], dtype=np.int32))
T0 = datetime(2023, 5, 1)


def _behaviors(path, imp, users, inview, clicked, times=None):
    n = len(imp)
    pq.write_table(pa.table({
        "impression_id": pa.array(imp, pa.uint32()),
        "impression_time": pa.array(times if times is not None else [T0] * n, S.TS),
        "article_ids_inview": pa.array(inview, pa.list_(pa.int32())),
        "article_ids_clicked": pa.array(clicked, pa.list_(pa.int32())),
        "user_id": pa.array(users, pa.uint32()),
    }), path, row_group_size=2, compression="none")
    return path


GOOD = dict(imp=[1, 2, 3, 4], users=[5, 7, 5, 7], inview=[[101, 102], [102, 103], [103, 101], [101, 103]],
            clicked=[[101], [103], [101], [103]])


def test_good_file_reads(tmp_path):
    ref = read_behaviors(_behaviors(tmp_path / "b.parquet", **GOOD), "validation", IDS, HIST, tmp_path / "out")
    assert ref.n_impressions == 4


@pytest.mark.parametrize("change, message", [
    # a null impression_time was accepted
    (dict(times=[T0, None, T0, T0]), r"b.parquet: column 'impression_time' is null in row 1"),
    # a negative article id was zero-filled as "unknown"
    (dict(inview=[[101, 102], [102, 103], [103, -5], [101, 103]]),
     r"b.parquet: column 'article_ids_inview', row 2 \(impression_id 3\): value -5 is outside the valid range \(article ids: 0 to 2147483647\)"),
    (dict(clicked=[[101], [103], [101], [-103]]),
     r"column 'article_ids_clicked', row 3 \(impression_id 4\): value -103 is outside the valid range"),
    (dict(imp=[1, 2, 3, 2]), r"column 'impression_id' repeats impression_id 2 \(rows 1 and 3\)"),
])
def test_bad_behaviors(tmp_path, change, message):
    path = _behaviors(tmp_path / "b.parquet", **{**GOOD, **change})
    with pytest.raises(InputError, match=message):
        read_behaviors(path, "validation", IDS, HIST, tmp_path / "out", batch_rows=2)
    assert not list((tmp_path / "out").rglob("*.bin"))


def test_damaged_behaviors_and_history_pages(tmp_path):
    path = corrupt_page(_behaviors(tmp_path / "b.parquet", **GOOD), row_group=1, column=2)
    with pytest.raises(InputError, match=r"b.parquet: cannot read batch 1 \(rows 2 to 3\): the file is damaged or truncated"):
        read_behaviors(path, "validation", IDS, HIST, tmp_path / "out", batch_rows=2)
    assert not list((tmp_path / "out").rglob("*.bin"))
    hist = tmp_path / "history.parquet"
    pq.write_table(pa.table({"user_id": pa.array([5, 7, 9], pa.uint32()),
                             "article_id_fixed": pa.array([[101], [102], [103]], pa.list_(pa.int32()))}),
                   hist, row_group_size=1, compression="none")
    corrupt_page(hist, row_group=2, column=1)
    with pytest.raises(InputError, match=r"history.parquet: cannot read batch 2 \(rows 2 to 2\)"):
        load_histories(hist, IDS, 2, batch_rows=1)


def test_negative_ids_in_history_articles_and_vectors(tmp_path):
    pq.write_table(pa.table({"user_id": pa.array([5, 7], pa.uint32()),
                             "article_id_fixed": pa.array([[101], [102, -1]], pa.list_(pa.int32()))}), tmp_path / "h.parquet")
    with pytest.raises(InputError, match=r"h.parquet: column 'article_id_fixed', row 1 \(user_id 7\): value -1 is outside"):
        load_histories(tmp_path / "h.parquet", IDS, 2)
    pq.write_table(pa.table({"article_id": pa.array([101, -2], pa.int32()), "category_str": ["a", "b"]}), tmp_path / "a.parquet")
    with pytest.raises(InputError, match=r"a.parquet: column 'article_id', row 1: value -2 is outside the valid range"):
        read_articles(tmp_path / "a.parquet")


def test_document_vectors_checked_after_the_float32_cast(tmp_path):
    vec = pa.array([[1.0, 2.0], [3.0, 1e300]], pa.list_(pa.float64()))
    pq.write_table(pa.table({"article_id": pa.array([101, 102], pa.int32()), "v": vec}), tmp_path / "v.parquet")
    with pytest.raises(InputError, match=r"v.parquet: row 1 \(article_id 102\) holds a NaN or infinite value \(or one outside float32's range\)"):
        load_document_vectors(tmp_path / "v.parquet", IDS)


def test_symlink_loop_is_named(tmp_path):
    with pytest.raises(InputError, match="b.parquet: validation behaviors file is a symbolic link loop"):
        read_behaviors(symlink_loop(tmp_path, "b.parquet"), "validation", IDS, HIST, tmp_path / "out")


def test_test_set_articles_that_are_a_loop_are_not_skipped(bundle, tmp_path):  # noqa: F811
    """The test set's articles.parquet is optional (the bundle's is used without it), but a symlink
    loop there is an error, not a silent fall-back."""
    root = tmp_path / "root"
    shutil.copytree(bundle, root)
    (root / "ebnerd_testset" / "articles.parquet").unlink()
    symlink_loop(root / "ebnerd_testset", "articles.parquet")
    cfg = NewsRecConfig.from_dict({"models": {"nrms_docvec": {}}, "training": {"history_size": 4}})
    with pytest.raises(InputError, match="ebnerd_testset/articles.parquet: articles file is a symbolic link loop"):
        prepare_news_data(root, BUNDLE, True, cfg, tmp_path / "prepared")


def test_failed_prepare_leaves_no_complete_looking_split(bundle, tmp_path):  # noqa: F811
    """A bad test split fails after train/ and validation/ were written: none of it may stay."""
    root = tmp_path / "root"
    shutil.copytree(bundle, root)
    f = S.split_dir(root, BUNDLE, "test") / "behaviors.parquet"
    _rewrite(f, f, lambda t: _set_list(t, "article_ids_inview", 1, [-9] + t["article_ids_inview"].to_pylist()[1][1:]))
    cfg = NewsRecConfig.from_dict({"models": {"nrms_docvec": {}}, "training": {"history_size": 4}})
    out = tmp_path / "prepared"
    with pytest.raises(InputError, match=r"test/behaviors.parquet: column 'article_ids_inview', row 1 .*value -9"):
        prepare_news_data(root, BUNDLE, True, cfg, out)
    assert list(out.rglob("*")) == []
