"""newsrec data side: schema, loaders (real layout, bad inputs), tokeniser, sampler, plateau logic,
config, scoring arithmetic and the dump round trip. No TensorFlow here."""

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steps.errors import ConfigError, InputError
from steps.metrics import mean_ranking_metrics, ranking_metrics
from steps.newsrec import schema as S
from steps.newsrec.config import NewsRecConfig, parse_newsrec_config, seed_label
from steps.newsrec.ebnerd import (
    UNKNOWN,
    article_index,
    load_document_vectors,
    load_histories,
    load_split,
    read_behaviors,
)
from steps.newsrec.inference import evaluate_scores, score_impressions, select_rows, write_dump
from steps.newsrec.prepare import prepare_news_data, resolve_data_root
from steps.newsrec.sampler import sample_wu2019
from steps.newsrec.synthetic import BUNDLE, SyntheticEbnerdSpec, write_synthetic_ebnerd
from steps.newsrec.text import article_texts, build_vocabulary, tokenize

TINY = SyntheticEbnerdSpec(n_articles=200, n_topics=8, n_users=40, n_train_impressions=120, n_validation_impressions=40,
                           n_test_impressions=30, n_ba_rows=10, n_candidates=20, inview_max=10, seed=3)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ebnerd")
    write_synthetic_ebnerd(root, TINY)
    return root


def _rewrite(src: Path, dst: Path, fn) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(fn(pq.read_table(src)), dst)
    return dst


def _ids(bundle: Path) -> np.ndarray:
    return np.sort(pl.read_parquet(bundle / BUNDLE / "articles.parquet")["article_id"].to_numpy().astype(np.int64))


# --------------------------------------------------------------------------- the layout
def test_synthetic_files_have_the_published_names_and_dtypes(bundle):
    for split, want in (("train", S.BEHAVIORS_SCHEMA), ("validation", S.BEHAVIORS_SCHEMA)):
        assert pq.read_schema(S.split_dir(bundle, BUNDLE, split) / "behaviors.parquet").equals(want)
    test_schema = pq.read_schema(S.split_dir(bundle, BUNDLE, "test") / "behaviors.parquet")
    assert test_schema.names[: len(S.TEST_BEHAVIORS_SCHEMA)] == S.TEST_BEHAVIORS_SCHEMA.names
    for split in S.SPLITS:
        assert pq.read_schema(S.split_dir(bundle, BUNDLE, split) / "history.parquet").equals(S.HISTORY_SCHEMA)
    vec = pq.read_schema(bundle / S.DEFAULT_DOCUMENT_VECTORS)
    assert vec.field("article_id").type == pa.int32() and vec.field("contrastive_vector").type == pa.list_(pa.float32())
    # Polars names as the dataset documentation prints them
    assert S.polars_name(S.BEHAVIORS_SCHEMA.field("impression_time").type) == "datetime[us]"
    assert S.polars_name(S.HISTORY_SCHEMA.field("article_id_fixed").type) == "list[i32]"


def test_test_split_has_a_beyond_accuracy_block_sharing_one_candidate_list(bundle):
    df = pl.read_parquet(S.split_dir(bundle, BUNDLE, "test") / "behaviors.parquet")
    ba = df.filter(pl.col("impression_id") == 0)
    assert ba.height == TINY.n_ba_rows and ba["is_beyond_accuracy"].all()
    assert ba["article_ids_inview"].list.len().unique().to_list() == [TINY.n_candidates]
    assert ba["article_ids_inview"].n_unique() == 1
    assert not df.filter(pl.col("impression_id") > 0)["is_beyond_accuracy"].any()


def test_clicks_follow_the_users_preferences(bundle):
    """The data is learnable: a click's topic occurs in the user's history more often than a shown article's."""
    arts = pl.read_parquet(bundle / BUNDLE / "articles.parquet").select("article_id", pl.col("topics").list.first().alias("t"))
    hist = pl.read_parquet(S.split_dir(bundle, BUNDLE, "validation") / "history.parquet").explode("article_id_fixed")
    topic_share = (hist.join(arts, left_on="article_id_fixed", right_on="article_id").group_by("user_id", "t").len()
                   .with_columns(pl.col("len") / pl.col("len").sum().over("user_id")))
    beh = pl.read_parquet(S.split_dir(bundle, BUNDLE, "validation") / "behaviors.parquet")

    def mean_share(col):
        x = beh.select("user_id", col).explode(col).join(arts, left_on=col, right_on="article_id")
        return x.join(topic_share, on=["user_id", "t"], how="left")["len"].fill_null(0).mean()

    assert mean_share("article_ids_clicked") > 1.5 * mean_share("article_ids_inview")


def _click_positions(offsets: np.ndarray, clicked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based in-view position of every click and the length of its in-view list."""
    from steps import ragged

    flat = np.flatnonzero(clicked)
    rows = ragged.row_ids(offsets)[flat]
    return flat - offsets[rows], np.diff(offsets)[rows]


def test_the_inview_order_carries_no_information_about_the_click(tmp_path):
    """In-view lists in popularity order, which the click model also rewards, would put the click
    early (mean relative position 0.42, first in 15 % against 8 % by chance). The position of the
    click is uniform: mean relative position 1/2, first as often as chance."""
    spec = SyntheticEbnerdSpec(n_articles=600, n_topics=12, n_users=400, n_train_impressions=20_000, n_validation_impressions=20,
                               n_test_impressions=10, n_ba_rows=2, n_candidates=20, seed=11)
    write_synthetic_ebnerd(tmp_path, spec)
    ids = _ids(tmp_path)
    d = S.split_dir(tmp_path, BUNDLE, "train")
    split = load_split(read_behaviors(d / "behaviors.parquet", "train", ids, load_histories(d / "history.parquet", ids, 5),
                                      tmp_path / "flat"))
    pos, length = _click_positions(split.offsets, split.clicked)
    assert len(pos) > 20_000
    rel = pos / (length - 1)
    se = rel.std() / np.sqrt(len(rel))  # about 0.002
    assert abs(rel.mean() - 0.5) < 5 * se, rel.mean()
    chance = np.mean(1.0 / length)  # about 0.095
    assert abs(np.mean(pos == 0) - chance) < 5 * np.sqrt(chance * (1 - chance) / len(pos))
    # and across the list: the share of clicks in its first, middle and last third is what chance gives
    third = np.minimum(3 * pos // length, 2)
    by_length = {n: np.bincount(np.minimum(3 * np.arange(n) // n, 2), minlength=3) / n for n in np.unique(length)}
    expected = np.mean([by_length[n] for n in length], axis=0)
    assert np.abs(np.bincount(third, minlength=3) / len(pos) - expected).max() < 0.02


def test_titles_vary_in_length_so_token_rows_are_padded(bundle):
    """NRMS's title masking has padding to mask: with the configs' title size 20 over title and
    subtitle, most articles' token rows end in padding, a few are full."""
    arts = pl.read_parquet(bundle / BUNDLE / "articles.parquet")
    words = arts["title"].str.split(" ").list.len().to_numpy()
    assert words.min() == TINY.title_words_min + 1 and words.max() == TINY.title_words + 1  # the category name first
    texts = article_texts(arts, ["title", "subtitle"])
    tokens = tokenize(texts, build_vocabulary(texts), 20)
    padded = (tokens == 0).any(axis=1)
    assert 0.7 < padded.mean() < 1.0, padded.mean()


# --------------------------------------------------------------------------- loaders
def test_history_is_truncated_to_the_last_clicks_and_left_padded(tmp_path):
    # user 5: clicks [101, 102, 103]; user 7: [102]; history_size 2; article 999 unknown
    hist = pa.table({"user_id": pa.array([7, 5], pa.uint32()),
                     "article_id_fixed": pa.array([[999], [101, 102, 103]], pa.list_(pa.int32()))})
    pq.write_table(hist, tmp_path / "history.parquet")
    h = load_histories(tmp_path / "history.parquet", np.array([101, 102, 103]), 2)
    assert h.user_ids.tolist() == [5, 7]
    # indices: 101 -> 2, 102 -> 3, 103 -> 4; unknown -> 1; padding 0
    assert h.matrix.tolist() == [[3, 4], [0, UNKNOWN]]
    assert h.user_index(np.array([7, 6, 5])).tolist() == [1, -1, 0]
    with pytest.raises(InputError, match="999, which is not in the articles file"):
        load_histories(tmp_path / "history.parquet", np.array([101, 102, 103]), 2, unknown_article="error")


def test_history_read_in_small_batches_equals_one_batch_and_names_the_file_row(tmp_path):
    # 7 users in batches of 2: the result must not depend on the batch size, and an error in a
    # later batch names the row of the file (not of the batch)
    users = [9, 3, 12, 1, 7, 4, 8]
    lists = [[101], [102, 103, 101], [103], [101, 102], [102, 102, 103, 101], [103, 101], [101, 103]]
    t = pa.table({"user_id": pa.array(users, pa.uint32()), "article_id_fixed": pa.array(lists, pa.list_(pa.int32()))})
    pq.write_table(t, tmp_path / "history.parquet")
    ids = np.array([101, 102, 103])
    whole = load_histories(tmp_path / "history.parquet", ids, 3)
    small = load_histories(tmp_path / "history.parquet", ids, 3, batch_rows=2)
    assert small.user_ids.tolist() == sorted(users) == whole.user_ids.tolist()
    assert np.array_equal(small.matrix, whole.matrix)
    # user 7 (row 4) keeps its last 3 clicks 102, 103, 101 -> indices 3, 4, 2
    assert small.matrix[small.user_index(np.array([7]))[0]].tolist() == [3, 4, 2]
    dup = t.set_column(0, "user_id", pa.array([9, 3, 12, 1, 7, 3, 8], pa.uint32()))
    pq.write_table(dup, tmp_path / "dup.parquet")
    with pytest.raises(InputError, match=r"dup.parquet: user_id 3 appears twice \(row 5\)"):
        load_histories(tmp_path / "dup.parquet", ids, 3, batch_rows=2)
    empty = t.set_column(1, "article_id_fixed", pa.array(lists[:5] + [[]] + lists[6:], pa.list_(pa.int32())))
    pq.write_table(empty, tmp_path / "empty.parquet")
    with pytest.raises(InputError, match=r"empty.parquet: row 5 \(user_id 4\): empty history"):
        load_histories(tmp_path / "empty.parquet", ids, 3, batch_rows=2)


def test_article_index_maps_unknown_ids_to_one():
    assert article_index(np.array([10, 20, 30]), np.array([30, 10, 15, 99])).tolist() == [4, 2, UNKNOWN, UNKNOWN]


def test_document_vectors_in_article_index_order(tmp_path):
    t = pa.table({"article_id": pa.array([20, 10], pa.int32()), "v": pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32()))})
    pq.write_table(t, tmp_path / "v.parquet")
    table = load_document_vectors(tmp_path / "v.parquet", np.array([10, 20, 30]))
    # rows: padding, unknown, 10, 20, 30 (no vector -> zeros)
    assert table.tolist() == [[0, 0], [0, 0], [3, 4], [1, 2], [0, 0]]
    pq.write_table(t.set_column(1, "v", pa.array([[1.0, 2.0], [3.0]], pa.list_(pa.float32()))), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match="row 1 .article_id 10. has a 1-dim vector"):
        load_document_vectors(tmp_path / "bad.parquet", np.array([10, 20]))


def test_document_vectors_reject_null_repeated_and_foreign_ids(tmp_path):
    vec = pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], pa.list_(pa.float32()))
    for name, ids, message in [
        ("null", [20, None, 10], r"null.parquet: column 'article_id' is null in row 1"),
        # article 20 in rows 0 and 2 (which vector would it get?)
        ("rep", [20, 10, 20], r"rep.parquet: column 'article_id' repeats article_id 20 \(rows 0 and 2\)"),
        # ids of another data set: no id is one of the articles 10, 20, 30 -> the table would be all zeros
        ("foreign", [7, 8, 9], r"foreign.parquet: column 'article_id' matches no article .*row 0 holds article_id 7"),
    ]:
        pq.write_table(pa.table({"article_id": pa.array(ids, pa.int32()), "v": vec}), tmp_path / f"{name}.parquet")
        with pytest.raises(InputError, match=message):
            load_document_vectors(tmp_path / f"{name}.parquet", np.array([10, 20, 30]))
    # one matching id is enough (other ids are articles of no split and are ignored)
    pq.write_table(pa.table({"article_id": pa.array([7, 30, 9], pa.int32()), "v": vec}), tmp_path / "one.parquet")
    assert load_document_vectors(tmp_path / "one.parquet", np.array([10, 20, 30]))[4].tolist() == [3.0, 4.0]


def test_read_behaviors_writes_flat_arrays(bundle, tmp_path):
    ids = _ids(bundle)
    d = S.split_dir(bundle, BUNDLE, "validation")
    hist = load_histories(d / "history.parquet", ids, 10)
    ref = read_behaviors(d / "behaviors.parquet", "validation", ids, hist, tmp_path)
    data = load_split(ref)
    df = pl.read_parquet(d / "behaviors.parquet")
    assert data.n == df.height == ref.n_impressions
    assert np.array_equal(np.diff(data.offsets), df["article_ids_inview"].list.len().to_numpy())
    assert np.array_equal(data.inview_ids, df["article_ids_inview"].explode().to_numpy())
    n_clicks = df["article_ids_clicked"].list.len().to_numpy()
    assert np.array_equal(np.add.reduceat(data.clicked.astype(int), data.offsets[:-1]), n_clicks)


@pytest.mark.parametrize(
    "split, mutate, message",
    [
        ("validation", lambda t: t.drop_columns(["article_ids_clicked"]), "missing column 'article_ids_clicked'"),
        ("validation", lambda t: t.set_column(t.schema.get_field_index("user_id"), "user_id", t["user_id"].cast(pa.int64())),
         "column 'user_id' has dtype i64, expected u32"),
        ("validation", lambda t: t.set_column(t.schema.get_field_index("article_ids_clicked"), "article_ids_clicked",
                                              pa.array([[1]] + t["article_ids_clicked"].to_pylist()[1:], pa.list_(pa.int32()))),
         r"row 0 \(impression_id \d+\): clicked article 1 is not in 'article_ids_inview'"),
        ("validation", lambda t: t.set_column(t.schema.get_field_index("article_ids_inview"), "article_ids_inview",
                                              pa.array([t["article_ids_clicked"].to_pylist()[0]] + t["article_ids_inview"].to_pylist()[1:],
                                                       pa.list_(pa.int32()))),
         r"row 0 \(impression_id \d+\): every in-view article is clicked"),
        ("validation", lambda t: t.set_column(t.schema.get_field_index("article_ids_inview"), "article_ids_inview",
                                              pa.array([[]] + t["article_ids_inview"].to_pylist()[1:], pa.list_(pa.int32()))),
         r"row 0 \(impression_id \d+\): empty 'article_ids_inview' list"),
        ("validation", lambda t: t.set_column(t.schema.get_field_index("user_id"), "user_id",
                                              pa.array([4_000_000_000] + t["user_id"].to_pylist()[1:], pa.uint32())),
         "user_id 4000000000 has no history"),
    ],
)
def test_bad_behaviors_give_clear_errors(bundle, tmp_path, split, mutate, message):
    ids = _ids(bundle)
    d = S.split_dir(bundle, BUNDLE, split)
    bad = _rewrite(d / "behaviors.parquet", tmp_path / "behaviors.parquet", mutate)
    hist = load_histories(d / "history.parquet", ids, 10)
    with pytest.raises(InputError, match=message) as err:
        read_behaviors(bad, split, ids, hist, tmp_path / "out")
    assert str(bad) in str(err.value)
    assert not list((tmp_path / "out").rglob("*.bin"))  # nothing half-written looks complete


def _set_list(t: pa.Table, column: str, row: int, value: list) -> pa.Table:
    rows = t[column].to_pylist()
    rows[row] = value
    return t.set_column(t.schema.get_field_index(column), column, pa.array(rows, t.schema.field(column).type))


def test_an_article_twice_in_one_inview_list_is_an_error_with_or_without_labels(bundle, tmp_path):
    ids = _ids(bundle)
    d = S.split_dir(bundle, BUNDLE, "validation")
    src = pq.read_table(d / "behaviors.parquet")
    inview3 = src["article_ids_inview"].to_pylist()[3]
    imp3 = src["impression_id"].to_pylist()[3]
    # row 3 lists its first article again at the end: positions 0 and len(inview3)
    twice = _set_list(src, "article_ids_inview", 3, inview3 + [inview3[0]])
    hist = load_histories(d / "history.parquet", ids, 10)
    message = (rf"row 3 \(impression_id {imp3}\): column 'article_ids_inview' lists article {inview3[0]} twice "
               rf"\(positions 0 and {len(inview3)}\)")
    pq.write_table(twice, tmp_path / "labelled.parquet")
    with pytest.raises(InputError, match=message):
        read_behaviors(tmp_path / "labelled.parquet", "validation", ids, hist, tmp_path / "o", batch_rows=2)
    pq.write_table(twice.drop_columns(["article_ids_clicked"]), tmp_path / "unlabelled.parquet")
    with pytest.raises(InputError, match="unlabelled.parquet: " + message):
        read_behaviors(tmp_path / "unlabelled.parquet", "test", ids, hist, tmp_path / "o", labels="optional")
    assert not list((tmp_path / "o").rglob("*.bin"))


@pytest.mark.parametrize("batch_rows", [100, 2])  # rows 1 and 5: in one batch, and in batches 0 and 2
def test_a_repeated_impression_id_is_an_error_naming_both_rows(bundle, tmp_path, batch_rows):
    ids = _ids(bundle)
    d = S.split_dir(bundle, BUNDLE, "validation")
    src = pq.read_table(d / "behaviors.parquet")
    imp = src["impression_id"].to_pylist()
    imp[5] = imp[1]
    bad = src.set_column(0, "impression_id", pa.array(imp, pa.uint32()))
    pq.write_table(bad, tmp_path / "b.parquet")
    hist = load_histories(d / "history.parquet", ids, 10)
    with pytest.raises(InputError, match=rf"b.parquet: column 'impression_id' repeats impression_id {imp[1]} \(rows 1 and 5\)"):
        read_behaviors(tmp_path / "b.parquet", "validation", ids, hist, tmp_path / "o", batch_rows=batch_rows)
    assert not list((tmp_path / "o").rglob("*.bin"))


def test_impressions_without_negatives_can_be_dropped(bundle, tmp_path):
    ids = _ids(bundle)
    d = S.split_dir(bundle, BUNDLE, "validation")

    def all_clicked(t):
        rows = t["article_ids_inview"].to_pylist()
        return t.set_column(t.schema.get_field_index("article_ids_clicked"), "article_ids_clicked",
                            pa.array([rows[0]] + t["article_ids_clicked"].to_pylist()[1:], pa.list_(pa.int32())))

    bad = _rewrite(d / "behaviors.parquet", tmp_path / "b.parquet", all_clicked)
    ref = read_behaviors(bad, "validation", ids, load_histories(d / "history.parquet", ids, 10), tmp_path / "o", drop_without_negative=True)
    assert ref.n_dropped_without_negative == 1 and ref.n_impressions == TINY.n_validation_impressions - 1


def test_test_impressions_without_negatives_are_kept_unlabelled(bundle, tmp_path):
    """The submission must rank every test impression: with drop_without_negative the test split
    keeps such impressions, without their clicks (scored and dumped, left out of the metrics)."""
    from steps.align.data import prepare_dump

    ids = _ids(bundle)
    d = S.split_dir(bundle, BUNDLE, "test")
    src = pq.read_table(d / "behaviors.parquet")
    assert src["impression_id"][0].as_py() > 0  # row 0 is an ordinary impression
    # row 0 shows only its clicked articles: no negative
    bad = _rewrite(d / "behaviors.parquet", tmp_path / "b.parquet",
                   lambda t: _set_list(t, "article_ids_inview", 0, t["article_ids_clicked"].to_pylist()[0]))
    hist = load_histories(d / "history.parquet", ids, 5)
    with pytest.raises(InputError, match=r"row 0 \(impression_id \d+\): every in-view article is clicked.*keep such test "
                                         "impressions without their labels"):
        read_behaviors(bad, "test", ids, hist, tmp_path / "x", labels="optional")
    ref = read_behaviors(bad, "test", ids, hist, tmp_path / "o", labels="optional", drop_without_negative=True)
    assert ref.n_impressions == TINY.n_test_impressions + TINY.n_ba_rows  # nothing dropped
    assert ref.n_dropped_without_negative == 0 and ref.n_unlabelled_without_negative == 1
    split = load_split(ref)
    n0 = len(src["article_ids_clicked"].to_pylist()[0])
    assert split.offsets[1] == n0 and not split.clicked[:n0].any()  # row 0: its articles, no click left
    n_clicks = np.array([len(c) for c in src["article_ids_clicked"].to_pylist()[1:]])
    assert np.array_equal(np.add.reduceat(split.clicked.astype(int), split.offsets[:-1])[1:], n_clicks)  # others unchanged
    scores = np.linspace(-1, 1, len(split.inview_index)).astype(np.float32)
    metrics = evaluate_scores(split, scores)
    assert metrics["impressions"] == TINY.n_test_impressions - 1 and np.isfinite(metrics["auc"])
    dump, sub = write_dump(split, scores, tmp_path / "dump.parquet", tmp_path / "sub.zip")
    assert dump.shape == sub.shape == (TINY.n_test_impressions + TINY.n_ba_rows,)
    prepared = prepare_dump(dump.path, bundle / "ebnerd_testset" / "articles.parquet", tmp_path / "prep")
    assert prepared.n_impressions == TINY.n_test_impressions and prepared.n_labelled == TINY.n_test_impressions - 1


def test_bad_history_and_missing_files(bundle, tmp_path):
    ids = _ids(bundle)
    d = S.split_dir(bundle, BUNDLE, "train")
    empty = _rewrite(d / "history.parquet", tmp_path / "h.parquet", lambda t: t.set_column(
        t.schema.get_field_index("article_id_fixed"), "article_id_fixed",
        pa.array([[]] + t["article_id_fixed"].to_pylist()[1:], pa.list_(pa.int32()))))
    with pytest.raises(InputError, match=r"h.parquet: row 0 \(user_id \d+\): empty history"):
        load_histories(empty, ids, 5)
    with pytest.raises(InputError, match="history file not found"):
        load_histories(tmp_path / "nope.parquet", ids, 5)
    wrong = _rewrite(d / "history.parquet", tmp_path / "w.parquet", lambda t: t.set_column(
        t.schema.get_field_index("article_id_fixed"), "article_id_fixed", t["article_id_fixed"].cast(pa.list_(pa.int64()))))
    with pytest.raises(InputError, match="column 'article_id_fixed' has dtype list.i64., expected list.i32."):
        load_histories(wrong, ids, 5)


def test_prepare_news_data_on_the_synthetic_bundle(bundle, tmp_path):
    cfg = NewsRecConfig.from_dict({"training": {"history_size": 6}, "text": {"title_size": 8}})
    data = prepare_news_data(bundle, BUNDLE, True, cfg, tmp_path)
    s = data.summary()
    assert s["articles"] == TINY.n_articles and s["test_beyond_accuracy_rows"] == TINY.n_ba_rows
    assert data.tokens.shape == (TINY.n_articles + 2, 8) and data.vectors.shape == (TINY.n_articles + 2, TINY.vector_dim)
    assert data.histories("train").matrix.shape == (TINY.n_users, 6)
    assert data.splits["test"].has_labels
    assert s["train_dropped_without_negative"] == s["validation_dropped_without_negative"] == 0
    assert s["test_dropped_without_negative"] == s["test_unlabelled_without_negative"] == 0
    assert data.articles_path == str((bundle / "ebnerd_testset" / "articles.parquet").absolute())


def test_prepare_without_test_articles_reads_the_bundles_and_counts_impressions_without_negatives(bundle, tmp_path):
    import shutil

    from steps.newsrec.prepare import publish_news_data
    from steps.storage import RunStorage

    root = tmp_path / "root"
    shutil.copytree(bundle, root)
    (root / "ebnerd_testset" / "articles.parquet").unlink()  # the grid then reads the bundle's articles
    for split in ("validation", "test"):  # row 0 of each: no negative
        f = S.split_dir(root, BUNDLE, split) / "behaviors.parquet"
        _rewrite(f, f, lambda t: _set_list(t, "article_ids_inview", 0, t["article_ids_clicked"].to_pylist()[0]))
    cfg = NewsRecConfig.from_dict({"models": {"nrms_docvec": {}}, "training": {"history_size": 4},
                                   "data": {"drop_without_negative": True}})
    data = prepare_news_data(root, BUNDLE, True, cfg, tmp_path / "prepared")
    assert data.articles_path == str((root / BUNDLE / "articles.parquet").absolute())
    s = data.summary()
    assert s["validation_dropped_without_negative"] == 1 and s["validation_impressions"] == TINY.n_validation_impressions - 1
    assert s["test_unlabelled_without_negative"] == 1 and s["test_dropped_without_negative"] == 0
    assert s["test_impressions"] == TINY.n_test_impressions + TINY.n_ba_rows
    assert s["train_dropped_without_negative"] == 0
    published = publish_news_data(data, RunStorage(str(tmp_path / "store"), "NewsRecFlow", "1"))
    assert pl.read_parquet(published.articles_path).equals(pl.read_parquet(root / BUNDLE / "articles.parquet"))


def test_resolve_data_root_checks_the_folder(bundle, tmp_path):
    with pytest.raises(InputError, match="folder not found"):
        resolve_data_root(str(tmp_path / "missing"), NewsRecConfig(), tmp_path)
    with pytest.raises(InputError, match="no bundle folder 'ebnerd_small'"):
        resolve_data_root(str(bundle), NewsRecConfig(), tmp_path)
    assert resolve_data_root(str(bundle), NewsRecConfig(), tmp_path, BUNDLE) == (bundle.absolute(), BUNDLE, False)
    with pytest.raises(InputError, match="--split ebnerd_demo needs --data-root"):
        resolve_data_root("", NewsRecConfig(), tmp_path, "ebnerd_demo")


# --------------------------------------------------------------------------- text
def test_vocabulary_and_tokens_by_hand():
    texts = pl.Series(["Fodbold: kamp og kamp", "Ny skat", None]).fill_null("")
    vocab = build_vocabulary(texts)
    # counts: kamp 2, then fodbold, ny, og, skat (1 each, alphabetical) -> ids 2..6
    assert vocab.words == ("kamp", "fodbold", "ny", "og", "skat")
    assert tokenize(texts, vocab, 3).tolist() == [[3, 2, 5], [4, 6, 0], [0, 0, 0]]
    small = build_vocabulary(texts, min_count=2)
    assert tokenize(pl.Series(["ny kamp"]), small, 3).tolist() == [[1, 2, 0]]  # 1 = out of vocabulary


# --------------------------------------------------------------------------- sampler
@st.composite
def impressions(draw):
    n = draw(st.integers(1, 12))
    lens = draw(st.lists(st.integers(2, 9), min_size=n, max_size=n))
    offsets = np.concatenate([[0], np.cumsum(lens)])
    clicked = np.zeros(offsets[-1], bool)
    for r, length in enumerate(lens):
        k = draw(st.integers(0, length - 1))
        clicked[offsets[r] + np.array(draw(st.permutations(range(length)))[:k], dtype=int)] = True
    return offsets, clicked


@settings(max_examples=60, deadline=None)
@given(impressions(), st.integers(1, 6), st.integers(0, 10_000))
def test_sampler_one_positive_and_negatives_from_the_same_impression(imp, npratio, seed):
    offsets, clicked = imp
    inview = np.arange(len(clicked)) + 100  # every article id is unique: its row is known
    s = sample_wu2019(offsets, inview, clicked, np.arange(len(offsets) - 1) * 10, npratio, np.random.default_rng(seed))
    assert len(s) == clicked.sum()
    assert s.candidates.shape == (len(s), 1 + npratio)
    flat = s.candidates - 100
    is_click = clicked[flat]
    assert (is_click.sum(axis=1) == 1).all()  # exactly one positive ...
    assert is_click[np.arange(len(s)), s.label].all()  # ... at the labelled position
    row_of = np.searchsorted(offsets, flat, side="right") - 1
    assert (row_of == s.impression[:, None]).all()  # negatives from the same impression
    assert (s.user_index == s.impression * 10).all()
    n_neg = np.diff(offsets)[s.impression] - np.add.reduceat(clicked, offsets[:-1])[s.impression]
    distinct = np.array([len(set(r[~c])) for r, c in zip(flat, is_click)])
    assert (distinct == np.minimum(n_neg, npratio)).all()  # without replacement when possible


def test_sampler_rejects_an_impression_without_negatives():
    with pytest.raises(InputError, match="impression_id 77: every in-view article is clicked"):
        sample_wu2019(np.array([0, 2]), np.array([1, 2]), np.array([True, True]), np.array([0]), 4,
                      np.random.default_rng(0), impression_ids=np.array([77]))


# --------------------------------------------------------------------------- plateau
def test_plateau_reduces_the_rate_then_stops():
    from steps.newsrec.train import Plateau  # imports TensorFlow; the logic itself is plain Python

    p = Plateau(lr=1e-3, factor=0.2, lr_patience=2, min_lr=1e-5, stop_patience=3)
    # AUC per epoch: .6 (best), .7 (best), .69, .68 (2 bad -> lr 2e-4), .65 (3 bad -> stop)
    steps = [p.update(e, v) for e, v in enumerate([0.6, 0.7, 0.69, 0.68, 0.65], start=1)]
    assert steps == [(True, False), (True, False), (False, False), (False, False), (False, True)]
    assert p.best_epoch == 2 and p.best == 0.7 and p.lr == pytest.approx(2e-4)
    q = Plateau(lr=1e-5, factor=0.2, lr_patience=1, min_lr=1e-5, stop_patience=9)
    q.update(1, 0.5)
    q.update(2, 0.4)
    assert q.lr == 1e-5  # never below min_lr
    r = Plateau(lr=1e-6, factor=0.2, lr_patience=1, min_lr=1e-5, stop_patience=9)  # already below the floor
    r.update(1, 0.5)
    r.update(2, 0.4)  # a plateau: a reduction is due, but max(2e-7, 1e-5) would raise the rate to 1e-5
    assert r.lr == 1e-6


# --------------------------------------------------------------------------- config
def test_config_rejects_bad_values_with_key_and_value():
    assert NewsRecConfig.from_dict({}).model_names == ["nrms", "nrms_docvec"]
    for raw, msg in [
        ({"modles": {}}, r"unknown key\(s\) \['modles'\]"),
        ({"models": {"lstur": {}}}, "unknown model 'lstur'"),
        ({"models": {"nrms": {"head_num": 0}}}, r"models.nrms.head_num: 0 is out of range"),
        ({"models": {"nrms_docvec": {"units": [512, "x"]}}}, "models.nrms_docvec.units: expected a non-empty list of int"),
        ({"training": {"npratio": 1.5}}, "training.npratio: expected int, got 1.5"),
        ({"training": {"lr_factor": 1.0}}, "training.lr_factor: 1.0 is out of range"),
        ({"training": {"learning_rate": 1e-4, "min_lr": 1e-3}},
         r"training.min_lr: 0.001 is above training.learning_rate 0.0001"),
        ({"data": {"unknown_article": "drop"}}, "data.unknown_article: expected one of"),
        ({"text": {"tokenizer": "transformers"}}, "text.transformers_path: required"),
        ({"synthetic": {"n_users": "many"}}, "synthetic.n_users: expected a int"),
        ({"align": {"top_n": 0}}, "align: top_n: expected an integer >= 1"),
        ({"ties": "first"}, r"ties: unknown value 'first'; choose from \['inview', 'ebrec', 'mean'\]"),
        ({"ties": "mean", "align": {"ties": "inview"}}, "align.ties: 'inview' differs from ties 'mean'"),
        ({"align": ["nails"]}, r"align: expected a mapping \(an AlignFlow config\), got \['nails'\]"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            NewsRecConfig.from_dict(raw)
    for name in ("newsrec_quick", "newsrec_demo", "newsrec_nrms_ebnerd_small", "newsrec_nrms_docvec_ebnerd_small"):
        parsed = parse_newsrec_config((Path(__file__).parent.parent / "configs" / f"{name}.yaml").read_text())
        assert parsed["ties"] == parsed["align"]["ties"] == "ebrec"  # the benchmark EB-NeRD users compare with
        assert NewsRecConfig.from_dict(parsed).as_dict() == parsed
    # one tie rule per run: the alignment takes the top-level one
    assert NewsRecConfig.from_dict({"ties": "mean"}).align.ties == "mean"
    assert NewsRecConfig.from_dict({"ties": "inview", "align": {"ties": "inview", "top_n": 5}}).align.top_n == 5


def test_config_seeds_default_to_seed_and_are_checked():
    assert NewsRecConfig.from_dict({}).seeds == (42,) and NewsRecConfig().seeds == (42,)
    one = NewsRecConfig.from_dict({"seed": 5, "models": {"nrms": {}}})
    assert one.seeds == (5,) and not one.several_seeds and one.train_cells == [("nrms", 5)]
    several = NewsRecConfig.from_dict({"seeds": [7, 3], "models": {"nrms": {}, "nrms_docvec": {}}})
    assert several.several_seeds and several.seed == 42  # seed still drives the data, seeds the training
    assert several.train_cells == [("nrms", 7), ("nrms", 3), ("nrms_docvec", 7), ("nrms_docvec", 3)]
    assert NewsRecConfig.from_dict(several.as_dict()) == several
    assert seed_label("nrms", 7, False) == "nrms" and seed_label("nrms", 7, True) == "nrms@7"
    for bad, msg in [([], r"seeds: expected a non-empty list of distinct integers >= 0 \(training seeds\), got \[\]"),
                     ([1, 1], r"seeds: \[1, 1\] repeats \[1\]; the training seeds must be distinct"), ([3, -1], r"seeds\[1\]: expected an integer >= 0, got -1"),
                     (7, "seeds: expected a non-empty list of distinct integers >= 0 .*got 7"),
                     ([True], r"seeds\[0\]: expected an integer >= 0, got True")]:
        with pytest.raises(ConfigError, match=msg):
            NewsRecConfig.from_dict({"seeds": bad})


def test_train_metrics_over_seeds_hand_checked():
    from steps.newsrec.report import train_metrics_by_seed, train_metrics_rows, with_model

    m = {"auc": 0.6, "mrr": 0.3, "ndcg_at_5": 0.2, "ndcg_at_10": 0.25, "impressions": 10}
    rows = [train_metrics_rows("nrms", 2, {"validation": {**m, "auc": auc}, "test": None}, seed)
            for seed, auc in ((1, 0.6), (2, 0.7), (3, 0.8))]
    tm = pl.concat(rows)
    assert tm.columns[:7] == ["model", "split", "epoch", "auc", "mrr", "ndcg_at_5", "ndcg_at_10"] and tm["seed"].to_list() == [1, 2, 3]
    agg = train_metrics_by_seed(tm).row(0, named=True)
    assert (agg["model"], agg["split"], agg["n_seeds"]) == ("nrms", "validation", 3)
    assert agg["auc_mean"] == pytest.approx(0.7) and agg["auc_sd"] == pytest.approx(0.1)
    half = 4.302652729911275 * 0.1 / np.sqrt(3)  # t_{2, 0.975}
    assert (agg["auc_seed_lo"], agg["auc_seed_hi"]) == pytest.approx((0.7 - half, 0.7 + half))
    assert agg["mrr_sd"] == pytest.approx(0.0)
    res = with_model(pl.DataFrame({"method": ["nails"], "kl_at_n": [0.1]}), "nrms@3", 3)
    assert res.columns == ["model", "seed", "method", "kl_at_n"] and res.row(0) == ("nrms@3", 3, "nails", 0.1)
    assert with_model(pl.DataFrame({"x": [1]}), "nrms").columns == ["model", "x"]


# --------------------------------------------------------------------------- scoring and the dump
def test_scores_are_dot_products_of_user_and_article_vectors():
    from steps.newsrec.ebnerd import SplitData

    art = np.array([[0, 0], [0, 0], [1, 2], [3, -1]], np.float32)  # padding, unknown, a, b
    users = np.array([[1, 1], [2, 0]], np.float32)
    split = SplitData(np.array([5, 6], np.uint32), np.array([1, 0], np.int32), np.array([0, 2, 3]),
                      np.array([10, 11, 11], np.int32), np.array([2, 3, 3], np.int32), np.array([1, 0, 1], bool), True)
    # impression 5 (user 1 = [2,0]): a -> 2, b -> 6; impression 6 (user 0 = [1,1]): b -> 2
    assert score_impressions(art, users, split, chunk=2).tolist() == [2.0, 6.0, 2.0]
    sub, flat = select_rows(np.array([0, 2, 3, 7]), np.array([0, 2]))
    assert sub.tolist() == [0, 2, 6] and flat.tolist() == [0, 1, 3, 4, 5, 6]


def test_dump_round_trip_reproduces_the_metrics(bundle, tmp_path):
    ids = _ids(bundle)
    d = S.split_dir(bundle, BUNDLE, "test")
    ref = read_behaviors(d / "behaviors.parquet", "test", ids, load_histories(d / "history.parquet", ids, 5), tmp_path, labels="optional")
    split = load_split(ref)
    scores = np.random.default_rng(0).normal(size=len(split.inview_index)).astype(np.float32)
    expected = evaluate_scores(split, scores)
    dump, sub = write_dump(split, scores, tmp_path / "dump.parquet", tmp_path / "sub.zip", batch_rows=7)
    assert dump.shape == (TINY.n_test_impressions + TINY.n_ba_rows,) and sub.shape == dump.shape
    df = pl.read_parquet(dump.path)
    assert df.schema == pl.Schema({"impression_id": pl.UInt32, "article_ids_inview": pl.List(pl.Int32),
                                   "scores": pl.List(pl.Float32), "article_ids_clicked": pl.List(pl.Int32)})
    ordinary = df.filter(pl.col("impression_id") > 0)
    offsets = np.concatenate([[0], np.cumsum(ordinary["scores"].list.len().to_numpy().astype(np.int64))])
    clicked = np.concatenate([np.isin(v, c) for v, c in zip(ordinary["article_ids_inview"].to_list(),
                                                             ordinary["article_ids_clicked"].to_list())])
    again = mean_ranking_metrics(ranking_metrics(offsets, ordinary["scores"].explode().to_numpy(), clicked))
    for k in ("auc", "mrr", "ndcg_at_5", "ndcg_at_10"):
        assert again[k] == expected[k]


def test_predictions_from_spec_and_dump_choice(tmp_path):
    from steps.align.pipeline import dump_label, dump_of_run, parse_predictions_from
    from steps.storage import file_ref

    assert parse_predictions_from("NewsRecFlow/123") == ("NewsRecFlow/123", None)
    assert parse_predictions_from("NewsRecFlow/123/nrms") == ("NewsRecFlow/123", "nrms")
    with pytest.raises(InputError, match="expected <Flow>/<run_id>"):
        parse_predictions_from("NewsRecFlow")
    for name in ("a", "b"):
        (tmp_path / f"{name}.parquet").write_text(name)
    refs = {"nrms": file_ref(tmp_path / "a.parquet"), "nrms_docvec": file_ref(tmp_path / "b.parquet")}
    assert dump_of_run("X/1", refs, "art.parquet", None) == (refs["nrms_docvec"].path, "art.parquet")  # the paper's model
    assert dump_of_run("X/1", refs, "art.parquet", "nrms")[0] == refs["nrms"].path
    with pytest.raises(InputError, match="no dump for model 'lstur'; the run has nrms, nrms_docvec"):
        dump_of_run("X/1", refs, "art.parquet", "lstur")
    # several training seeds: dumps labelled <model>@<seed>; a bare model name takes its first seed
    seeded = {"nrms@7": refs["nrms"], "nrms_docvec@7": refs["nrms_docvec"], "nrms_docvec@8": refs["nrms"]}
    assert dump_label(seeded, None) == "nrms_docvec@7" and dump_label(seeded, "nrms") == "nrms@7"
    assert dump_label(seeded, "nrms_docvec@8") == "nrms_docvec@8" and dump_label(seeded, "lstur") is None
    assert dump_label({"ease": refs["nrms"]}, None) == "ease"  # no NRMSDocVec: the first dump
    assert dump_of_run("X/1", seeded, "art.parquet", None)[0] == refs["nrms_docvec"].path
    (tmp_path / "a.parquet").write_text("changed")
    with pytest.raises(InputError, match="checksum mismatch"):
        dump_of_run("X/1", refs, "art.parquet", "nrms")


def test_unlabelled_test_split_gives_a_dump_without_clicks_that_alignflow_reads(tmp_path):
    """The real test set has no ``article_ids_clicked``: no test metrics, a three-column dump."""
    from steps.align.data import prepare_dump

    spec = SyntheticEbnerdSpec(**{**TINY.as_dict(), "test_labels": False})
    write_synthetic_ebnerd(tmp_path, spec)
    ids = _ids(tmp_path)
    d = S.split_dir(tmp_path, BUNDLE, "test")
    assert "article_ids_clicked" not in pq.read_schema(d / "behaviors.parquet").names
    with pytest.raises(InputError, match="missing column 'article_ids_clicked'"):
        read_behaviors(d / "behaviors.parquet", "test", ids, load_histories(d / "history.parquet", ids, 5), tmp_path / "x")
    ref = read_behaviors(d / "behaviors.parquet", "test", ids, load_histories(d / "history.parquet", ids, 5), tmp_path / "o",
                         labels="optional")
    split = load_split(ref)
    assert not split.has_labels and ref.n_ba_rows == spec.n_ba_rows
    scores = np.linspace(-1, 1, len(split.inview_index)).astype(np.float32)
    assert evaluate_scores(split, scores) is None
    dump, _ = write_dump(split, scores, tmp_path / "dump.parquet")
    assert pq.read_schema(dump.path).names == ["impression_id", "article_ids_inview", "scores"]
    prepared = prepare_dump(dump.path, tmp_path / "ebnerd_testset" / "articles.parquet", tmp_path / "prep")
    assert prepared.n_ba_rows == spec.n_ba_rows and prepared.n_labelled == 0


def test_tied_scores_follow_the_tie_rule_in_metrics_and_submission(bundle, tmp_path):
    from steps.align.submission import read_submission
    from steps.metrics import TIE_RULES

    ids = _ids(bundle)
    d = S.split_dir(bundle, BUNDLE, "test")
    ref = read_behaviors(d / "behaviors.parquet", "test", ids, load_histories(d / "history.parquet", ids, 5), tmp_path, labels="optional")
    split = load_split(ref)
    scores = np.round(np.random.default_rng(1).normal(size=len(split.inview_index)), 0).astype(np.float32)  # many ties
    scores[: split.offsets[1]] = 0.5
    got = {t: evaluate_scores(split, scores, t) for t in TIE_RULES}
    assert got["inview"]["auc"] == got["ebrec"]["auc"] == got["mean"]["auc"]
    assert got["inview"]["mrr"] != got["ebrec"]["mrr"]
    ranks = {}
    for ties in ("inview", "ebrec"):
        _, sub = write_dump(split, scores, tmp_path / f"{ties}.parquet", tmp_path / f"{ties}.zip", ties=ties)
        ranks[ties] = read_submission(sub.path)[1]
    # row 0, all tied: in-view order 1..n, and its reverse under ebrec
    n0 = int(split.offsets[1])
    assert ranks["inview"][0].tolist() == list(range(1, n0 + 1)) and ranks["ebrec"][0].tolist() == list(range(n0, 0, -1))
    # in general: equal ranks where the row has no tie, the same tie groups reversed where it has
    for row in range(split.n):
        lo, hi = split.offsets[row], split.offsets[row + 1]
        a, b = ranks["inview"][row], ranks["ebrec"][row]
        assert sorted(a.tolist()) == sorted(b.tolist()) == list(range(1, hi - lo + 1))
        for v in np.unique(scores[lo:hi]):
            members = np.flatnonzero(scores[lo:hi] == v)
            assert b[members].tolist() == a[members][::-1].tolist()
