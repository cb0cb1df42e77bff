"""ReChorus data IO, the MovieLens-1M converter, the leave-one-out split and history windows."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from polars.testing import assert_frame_equal

from steps.errors import ConfigError, InputError
from steps.explain.config import ExplainConfig, parse_explain_config
from steps.explain.data import (
    build_instances,
    convert_ml1m,
    leave_one_out,
    read_rechorus,
    sample_negatives,
    user_consumed_items,
    user_histories,
    where_item_is_named,
    write_rechorus,
)
from steps.explain.model import GRU4Rec
from steps.explain.attribute import feature_codes
from steps.explain.pipeline import store_dataset, with_checkpoint_catalogue
from steps.explain.synthetic import SyntheticSeqSpec, synthetic_dataset
from steps.seeding import rng_for

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write_folder(tmp_path: Path, train: str, dev: str, test: str, meta: str | None = None) -> Path:
    d = tmp_path / "ds"
    d.mkdir(parents=True)
    (d / "train.csv").write_text(train)
    (d / "dev.csv").write_text(dev)
    (d / "test.csv").write_text(test)
    if meta is not None:
        (d / "item_meta.csv").write_text(meta)
    return d


TRAIN = "user_id\titem_id\ttime\n1\t2\t20\n1\t1\t10\n1\t3\t30\n2\t4\t5\n2\t5\t6\n"
DEV = "user_id\titem_id\ttime\tneg_items\n1\t4\t40\t[5, 6]\n2\t1\t7\t[2, 3]\n"
TEST = "user_id\titem_id\ttime\tneg_items\n1\t5\t50\t[2,6]\n2\t6\t8\t[3, 2]\n"


def test_read_a_hand_written_folder(tmp_path):
    d = read_rechorus(write_folder(tmp_path, TRAIN, DEV, TEST, "item_id\ti_genre\n1\tDrama\n6\tComedy\n"))
    u1 = d.interactions.filter(pl.col("user_id") == 1)
    # train rows sorted by time (1@10, 2@20, 3@30), then dev, then test
    assert u1["item_id"].to_list() == [1, 2, 3, 4, 5]
    assert u1["split"].to_list() == ["train", "train", "train", "dev", "test"]
    assert u1["neg_items"].to_list()[3:] == [[5, 6], [2, 6]]
    assert d.n_items == 7 and d.n_users == 2 and d.feature_name == "i_genre"
    assert d.item_features.sort("item_id")["feature"].to_list() == ["Drama", "Comedy"]
    # windows of 2: user 1's dev row sees [2, 3], test row [3, 4]; user 2's test row [5, 1]
    test = build_instances(d, "test", 2)
    assert test.histories.tolist() == [[3, 4], [5, 1]] and test.targets.tolist() == [5, 6]
    assert test.negatives.tolist() == [[2, 6], [3, 2]]
    train = build_instances(d, "train", 2)
    # train rows with a history: user 1 items 2 (after [1]) and 3 (after [1, 2]); user 2 item 5 (after [4])
    assert train.targets.tolist() == [2, 3, 5]
    assert train.histories.tolist() == [[1, 0], [1, 2], [4, 0]] and train.lengths.tolist() == [1, 2, 1]
    hist = user_histories(d, [2, 1], history_max=3)
    assert hist[1].tolist() == [2, 3, 4] and hist[2].tolist() == [4, 5, 1]


@pytest.mark.parametrize(
    "train, dev, meta, message",
    [
        ("user_id\titem\ttime\n1\t2\t3\n", DEV, None, "train.csv: missing column 'item_id'"),
        ("user_id,item_id,time\n1,2,3\n", DEV, None, "missing column 'user_id'.*tab-separated"),
        ("user_id\titem_id\ttime\n1\tx2\t20\n", DEV, None, r"train.csv: column 'item_id', row 0 \(line 2\): expected an integer, got 'x2'"),
        ("user_id\titem_id\ttime\n1\t0\t20\n", DEV, None, r"row 0 \(line 2\): 0 is not a valid id"),
        (TRAIN, DEV.replace("[2, 3]", "2 3"), None, r"dev.csv: column 'neg_items', row 1 \(line 3\): expected a list of item ids"),
        (TRAIN, DEV.replace("[2, 3]", "[2]"), None, r"row 1 \(line 3\): 1 negatives, but row 0 has 2"),
        (TRAIN, DEV.replace("[2, 3]", "[1, 3]"), None, "negatives contain the positive item 1"),
        (TRAIN, DEV + "3\t1\t1\t[2, 3]\n", None, "user 3 has an empty history"),
        (TRAIN, DEV, "item_id\ti_genre\n7\tDrama\n7\tComedy\n", r"item_meta.csv: column 'item_id', row 1 .*item id 7 appears more than once"),
        (TRAIN, DEV, "item_id\tgenre\n1\tDrama\n", "no item feature column"),
        ("", DEV, None, "train.csv: not a readable tab-separated file"),
    ],
)
def test_malformed_files_get_clear_errors(tmp_path, train, dev, meta, message):
    with pytest.raises(InputError, match=message):
        read_rechorus(write_folder(tmp_path, train, dev, TEST, meta))


def test_catalogue_is_every_id_the_folder_names(tmp_path):
    """A folder whose rows stop short of the largest item id loads when the negatives or
    item_meta.csv name it (neither is an 'unknown item id'); a checkpoint extends
    the catalogue to its item count and is refused when it cannot score an id the folder names."""
    d = read_rechorus(write_folder(tmp_path / "a", TRAIN, DEV.replace("[2, 3]", "[2, 99]"), TEST))
    assert d.n_items == 100 and d.interactions["item_id"].max() == 6
    assert where_item_is_named(d, 99) == "dev.csv (user 2, column 'neg_items')"
    assert where_item_is_named(d, 6) == "test.csv (user 2, column 'item_id')"
    m = read_rechorus(write_folder(tmp_path / "b", TRAIN, DEV, TEST, "item_id\ti_genre\n77\tDrama\n"))
    assert m.n_items == 78 and where_item_is_named(m, 77) == "item_meta.csv"
    plain = read_rechorus(write_folder(tmp_path / "c", TRAIN, DEV, TEST))
    assert plain.n_items == 7  # largest id named: 6 (test positives and negatives)
    torch.save(GRU4Rec(60, 4, 4, seed=0).state_dict(), tmp_path / "ckpt.pt")
    assert with_checkpoint_catalogue(plain, tmp_path / "ckpt.pt").n_items == 60
    assert with_checkpoint_catalogue(m, "") is m
    with pytest.raises(InputError, match=r"ckpt.pt: the checkpoint has 60 item embeddings \(ids 0..59\), but .* names item "
                       r"id 99 in dev.csv \(user 2, column 'neg_items'\): the data and the checkpoint disagree"):
        with_checkpoint_catalogue(d, tmp_path / "ckpt.pt")


META = ("item_id\ti_Action\ti_Comedy\ti_year\n"
        "1\t1\t0\t13\n2\t1\t1\t13\n3\t0\t1\t9\n4\t0\t0\t9\n8\t0\t1\t2\n")


def test_multi_hot_item_meta_is_one_multi_valued_feature(tmp_path):
    """ReChorus writes a film's genres as 0/1 columns: they form one feature with several values
    per item (not the first column alone, whose every value would be '0' or '1')."""
    d = read_rechorus(write_folder(tmp_path, TRAIN, DEV, TEST, META))
    assert d.multi_hot and d.feature_columns == ("i_Action", "i_Comedy") and d.feature_name == "i_Action|i_Comedy"
    sets = dict(d.item_features.group_by("item_id").agg(pl.col("feature").drop_nulls().sort()).iter_rows())
    assert sets == {1: ["Action"], 2: ["Action", "Comedy"], 3: ["Comedy"], 4: [], 8: ["Comedy"]}
    assert d.n_items == 9  # item 8 is named only by item_meta.csv
    assert d.summary()["item_feature_columns"] == ["i_Action", "i_Comedy"]
    # written back as 0/1 columns and read again: the same feature, the same catalogue
    write_rechorus(tmp_path / "back", d)
    back = read_rechorus(tmp_path / "back")
    assert_frame_equal(back.item_features, d.item_features)
    assert (back.n_items, back.feature_columns, back.multi_hot) == (9, d.feature_columns, True)
    stored = store_dataset(d, tmp_path / "stored").load()  # what the flow's steps read
    assert (stored.feature_columns, stored.multi_hot) == (d.feature_columns, True)
    member, names = feature_codes(stored)
    assert names == ["Action", "Comedy"] and member[[1, 2, 3, 4, 8]].tolist() == [
        [True, False], [True, True], [False, True], [False, False], [False, True]]
    # a named column is categorical
    year = read_rechorus(write_folder(tmp_path / "y", TRAIN, DEV, TEST, META), item_feature="i_year")
    assert not year.multi_hot and year.feature_columns == ("i_year",)
    assert dict(year.item_features.iter_rows()) == {1: "13", 2: "13", 3: "9", 4: "9", 8: "2"}
    with pytest.raises(InputError, match=r"item_feature 'i_genre' is not a column \(i_\* columns: i_Action, i_Comedy, i_year\)"):
        read_rechorus(write_folder(tmp_path / "g", TRAIN, DEV, TEST, META), item_feature="i_genre")
    with pytest.raises(InputError, match="item_feature 'i_year' is set but the folder has no item_meta.csv"):
        read_rechorus(write_folder(tmp_path / "n", TRAIN, DEV, TEST), item_feature="i_year")


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="data folder not found"):
        read_rechorus(tmp_path / "nope")


def test_leave_one_out_by_hand():
    events = pl.DataFrame({
        "user_id": [1, 1, 1, 1, 2, 2, 3, 3, 3],
        "item_id": [5, 6, 7, 8, 5, 9, 1, 2, 3],
        "time": [4, 3, 2, 1, 1, 2, 1, 1, 1],  # user 1 in reverse order; user 3 all at one time
    })
    d = leave_one_out(events, n_neg=3, seed=1)
    u1 = d.interactions.filter(pl.col("user_id") == 1)
    assert u1["item_id"].to_list() == [8, 7, 6, 5] and u1["split"].to_list() == ["train", "train", "dev", "test"]
    assert d.interactions.filter(pl.col("user_id") == 2)["split"].to_list() == ["train", "train"]  # < 3 events
    u3 = d.interactions.filter(pl.col("user_id") == 3)  # equal times keep the given order
    assert u3["item_id"].to_list() == [1, 2, 3] and u3["split"].to_list() == ["train", "dev", "test"]
    evals = d.interactions.filter(pl.col("split") != "train")
    for user, negs in zip(evals["user_id"], evals["neg_items"]):
        seen = set(events.filter(pl.col("user_id") == user)["item_id"])
        assert len(set(negs)) == 3 and not set(negs) & seen and all(1 <= n <= 9 for n in negs)
    assert_frame_equal(leave_one_out(events, 3, seed=1).interactions, d.interactions)
    assert not leave_one_out(events, 3, seed=2).interactions.equals(d.interactions)


def test_leave_one_out_needs_room_for_negatives():
    events = pl.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [1, 2, 3, 4], "time": [1, 2, 3, 1]})
    with pytest.raises(InputError, match="user 1 interacted with 3 of the 4 items: fewer than 2"):
        leave_one_out(events, n_neg=2, seed=0)


def test_sample_negatives_avoids_clicked_items():
    keys = np.array([1 * 10 + i for i in range(1, 8)])  # user 1 clicked items 1..7 of 1..9
    negs = sample_negatives(rng_for(0, "n"), np.array([1] * 50), 2, keys, 10)
    assert set(np.unique(negs)) == {8, 9}
    assert np.all(negs[:, 0] != negs[:, 1])


def test_synthetic_round_trips_through_rechorus_files(tmp_path):
    d = synthetic_dataset(SyntheticSeqSpec(n_users=30, n_items=40, n_genres=4, min_len=5, max_len=9), n_neg=10)
    write_rechorus(tmp_path, d)
    back = read_rechorus(tmp_path)
    assert_frame_equal(back.interactions, d.interactions)
    assert_frame_equal(back.item_features, d.item_features)
    assert back.n_items == d.n_items and d.summary()["test_rows"] == 30


def test_ml1m_converter(tmp_path):
    ratings = tmp_path / "ratings.dat"
    rows = [(10, 100, 5, 3), (10, 300, 4, 1), (10, 200, 3, 2), (20, 300, 5, 7), (20, 100, 4, 8), (20, 400, 1, 9)]
    ratings.write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
    movies = tmp_path / "movies.dat"
    movies.write_bytes("100::Toy Story (1995)::Animation|Children's\n200::Am\xe9lie::Comedy|Romance\n300::X::Drama\n400::Y::Horror\n".encode("latin-1"))
    d = convert_ml1m(ratings, tmp_path / "out", n_neg=1, seed=0, movies_path=movies)
    # users 10, 20 → 1, 2; movies 100, 200, 300, 400 → 1, 2, 3, 4; user 10 by time: 300, 200, 100
    u1 = d.interactions.filter(pl.col("user_id") == 1)
    assert u1["item_id"].to_list() == [3, 2, 1] and u1["split"].to_list() == ["train", "dev", "test"]
    assert u1["neg_items"].to_list()[1:] == [[4], [4]]  # the only item user 10 never rated
    assert dict(d.item_features.iter_rows()) == {1: "Animation", 2: "Comedy", 3: "Drama", 4: "Horror"}
    back = read_rechorus(tmp_path / "out")
    assert_frame_equal(back.interactions, d.interactions)
    assert pl.read_csv(tmp_path / "out" / "item_map.csv", separator="\t")["original_item_id"].to_list() == [100, 200, 300, 400]


def test_ml1m_malformed_line(tmp_path):
    ratings = tmp_path / "ratings.dat"
    ratings.write_text("1::2::3::4\n1::2::3\n")
    with pytest.raises(InputError, match=r"ratings.dat: line 2: expected UserID::MovieID::Rating::Timestamp"):
        convert_ml1m(ratings, tmp_path / "o", 1, 0)
    ratings.write_text("1::2::3::4\n1::two::3::4\n")
    with pytest.raises(InputError, match=r"line 2: field 'movie' is not an integer"):
        convert_ml1m(ratings, tmp_path / "o", 1, 0)


def test_dev_or_test_before_train_in_time_is_an_error(tmp_path):
    # user 2's dev row (time 7) comes before their train row at time 9: its history would hold a
    # future event
    train = TRAIN + "2\t3\t9\n"
    with pytest.raises(InputError, match=r"user 2: dev.csv has an interaction \(item 1\) at time 7, before their "
                       r"train.csv interaction at time 9"):
        read_rechorus(write_folder(tmp_path, train, DEV, TEST))
    equal_time = TRAIN + "2\t3\t7\n"  # the same time is fine (file order breaks ties)
    (tmp_path / "ok").mkdir()
    read_rechorus(write_folder(tmp_path / "ok", equal_time, DEV, TEST))


def test_consumed_items_are_train_and_dev(tmp_path):
    d = read_rechorus(write_folder(tmp_path, TRAIN, DEV, TEST))
    assert user_consumed_items(d, 1).tolist() == [1, 2, 3, 4]  # train 2, 1, 3 and dev 4; not test 5
    assert user_consumed_items(d, 2).tolist() == [1, 4, 5]


def test_unknown_user_and_empty_history(tmp_path):
    d = read_rechorus(write_folder(tmp_path, TRAIN, DEV, TEST))
    with pytest.raises(InputError, match="user 9 is not in the data"):
        user_histories(d, [9], 20)


def test_config_seeds_default_to_seed_and_are_checked():
    from dataclasses import replace

    assert ExplainConfig.from_dict({}).seeds == (2024,) and ExplainConfig.from_dict({"seed": 3}).seeds == (3,)
    cfg = ExplainConfig.from_dict({"seeds": [5, 1]})
    assert cfg.seeds == (5, 1) and cfg.several_seeds and cfg.seed == 2024
    assert ExplainConfig.from_dict(cfg.as_dict()) == cfg and replace(cfg, seed=5).seeds == (5, 1)
    for bad, message in [([], r"seeds: expected a non-empty list of distinct integers >= 0 \(training seeds\), got \[\]"),
                         ([2, 2], r"seeds: \[2, 2\] repeats \[2\]; the training seeds must be distinct"),
                         ([1, -3], r"seeds\[1\]: expected an integer >= 0, got -3"), ("7", "seeds: expected a non-empty list")]:
        with pytest.raises(ConfigError, match=message):
            ExplainConfig.from_dict({"seeds": bad})


def test_model_metrics_over_seeds_hand_checked():
    from steps.explain.pipeline import check_seeds_against_checkpoint, metrics_by_seed, with_seed

    def one(seed, hr):
        return with_seed(pl.DataFrame({"model": ["GRU4Rec", "POP"], "split": ["test", "test"], "protocol": ["sampled"] * 2,
                                       "rows": [10, 10], "hr_at_5": [hr, 0.3]}), seed)

    mm = pl.concat([one(1, 0.5), one(2, 0.7)])
    assert mm.columns[-1] == "seed" and mm["seed"].to_list() == [1, 1, 2, 2]
    agg = metrics_by_seed(mm)
    assert agg.columns == ["model", "split", "protocol", "n_seeds", "hr_at_5_mean", "hr_at_5_sd", "hr_at_5_seed_lo", "hr_at_5_seed_hi"]
    gru, pop = agg.rows(named=True)
    half = 12.706204736174707 * np.sqrt(0.02) / np.sqrt(2)  # t_{1, 0.975} · sd / √2
    assert gru["hr_at_5_mean"] == pytest.approx(0.6) and gru["hr_at_5_seed_hi"] == pytest.approx(0.6 + half)
    assert pop["hr_at_5_sd"] == pytest.approx(0.0) and pop["n_seeds"] == 2
    assert with_seed(pl.DataFrame(), 3).width == 0  # a loaded checkpoint's (empty) training log
    check_seeds_against_checkpoint(ExplainConfig.from_dict({}), "m.pt")
    with pytest.raises(ConfigError, match=r"seeds: \[1, 2\] asks for one GRU4Rec per training seed, but --checkpoint m.pt"):
        check_seeds_against_checkpoint(ExplainConfig.from_dict({"seeds": [1, 2]}), "m.pt")


def test_configs_validate():
    for path in CONFIGS.glob("explain_*.yaml"):
        parse_explain_config(path.read_text())
    assert ExplainConfig.from_dict({"baseline": "3507"}).baseline == 3507
    for bad, message in [
        ({"estimators": ["exact", "lime"]}, "estimators: unknown value 'lime'"),
        ({"baseline": "zero"}, "baseline: expected 'padding', 'removal' or an item id"),
        ({"top_k": 0}, "top_k: expected an integer >= 1, got 0"),
        ({"history_max": 30}, "history_max: 30 events is too many"),
        ({"lr": -1}, "lr: -1 is out of range"),
        ({"colour": 1}, r"unknown key\(s\) \['colour'\]"),
        ({"synthetic": {"n_items": 50}}, "synthetic.n_items: 50 items leave too few negatives"),
        ({"synthetic": {"n_user": 5}}, r"synthetic: unknown key\(s\) \['n_user'\]"),
        ({"synthetic": {"p_last": 0.6, "p_second": 0.3, "p_third": 0.2}}, r"synthetic.p_last \+ p_second \+ p_third = 0.6 \+ 0.3 \+ 0.2 = 1.1 > 1"),
        ({"synthetic": {"n_users": 5.0}}, "synthetic.n_users: expected an integer >= 2, got 5.0"),
        ({"synthetic": {"seed": True}}, "synthetic.seed: expected an integer >= 0, got True"),
        ({"explain_users": 0}, "explain_users: 0 users to explain and no explain_user_ids"),
        ({"value_scale": "sum"}, r"value_scale: unknown value 'sum'; choose from \['mean', 'notebook'\]"),
        ({"item_feature": "genre"}, "item_feature: expected 'auto' or an item_meta.csv column name starting with 'i_', got 'genre'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            ExplainConfig.from_dict(bad)
    # the synthetic data's room for negatives is checked only where synthetic data is used
    assert ExplainConfig.from_dict({"n_neg": 500}).n_neg == 500
    assert ExplainConfig.from_dict({"explain_users": 0, "explain_user_ids": [3]}).explain_user_ids == (3,)
