"""Loaders, the strong-generalisation split, the synthetic data and the cache (steps/tail/data.py)."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from steps.errors import ConfigError, InputError
from steps.tail.config import DatasetSpec, Protocol, SyntheticSpec, TailConfig, parse_tail_config
from steps.tail.data import prepare_dataset, read_ml20m, read_msd, read_netflix, split_strong_generalisation
from steps.tail.synthetic import item_truth, iter_synthetic_ratings, write_synthetic_ratings
from tests.flowrun import CONFIGS


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- loaders
def test_ml20m_reader(tmp_path):
    p = _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,5\n1,11,3.5,6\n2,10,5.0,7\n")
    df = read_ml20m(p)
    assert df.to_dict(as_series=False) == {"user": [1, 1, 2], "item": [10, 11, 10], "rating": [4.0, 3.5, 5.0]}


def test_ml20m_missing_column(tmp_path):
    p = _write(tmp_path / "ratings.csv", "userId,itemId,rating\n1,10,4.0\n")
    with pytest.raises(InputError, match=r"ratings.csv: missing column 'movieId'"):
        read_ml20m(p)


def test_ml20m_non_numeric_rating_names_line_and_value(tmp_path):
    p = _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,5\n2,11,good,6\n")
    with pytest.raises(InputError, match=r"column 'rating' holds a non-numeric value 'good' on line 3"):
        read_ml20m(p)
    p = _write(tmp_path / "nan.csv", "userId,movieId,rating\n1,10,nan\n")
    with pytest.raises(InputError, match=r"'rating' holds a non-numeric value 'nan' on line 2"):
        read_ml20m(p)


def test_ml20m_missing_file(tmp_path):
    with pytest.raises(InputError, match="ratings file not found"):
        read_ml20m(tmp_path / "nope.csv")


def test_netflix_folder_and_combined_files(tmp_path):
    folder = tmp_path / "training_set"
    _write(folder / "mv_0000001.txt", "1:\n10,4,2005-01-01\n11,3,2005-01-02\n")
    _write(folder / "mv_0000002.txt", "2:\n10,5,2005-01-01\n")
    df = read_netflix(folder).sort("item", "user")
    assert df.to_dict(as_series=False) == {"user": [10, 11, 10], "item": [1, 1, 2], "rating": [4.0, 3.0, 5.0]}
    combined = _write(tmp_path / "combined_data_1.txt", "3:\n10,5,2005-01-01\n12,1,2005-01-02\n4:\n11,4,2005-02-01\n")
    df = read_netflix(combined)
    assert df.to_dict(as_series=False) == {"user": [10, 12, 11], "item": [3, 3, 4], "rating": [5.0, 1.0, 4.0]}


def test_netflix_errors(tmp_path):
    bad = _write(tmp_path / "a" / "mv_0000001.txt", "1:\n10,4,2005\n11,x,2005\n")
    with pytest.raises(InputError, match=r"mv_0000001.txt: column 'Rating' holds a non-numeric value 'x' on line 3"):
        read_netflix(bad.parent)
    no_header = _write(tmp_path / "b" / "combined_data_1.txt", "10,4,2005\n")
    with pytest.raises(InputError, match="line 1 must be a 'MovieID:' header"):
        read_netflix(no_header)
    short = _write(tmp_path / "c" / "combined_data_1.txt", "1:\n10\n")
    with pytest.raises(InputError, match="line 2 has no Rating column"):
        read_netflix(short)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no mv_"):
        read_netflix(tmp_path / "empty")


def test_netflix_extra_fields_are_errors(tmp_path):
    extra = _write(tmp_path / "a" / "combined_data_1.txt", "1:\n10,4,2005-01-01\n11,3,2005-01-02,oops\n")
    with pytest.raises(InputError, match=r"combined_data_1.txt: line 3 has an extra field 'oops' \(expected CustomerID,Rating,Date\)"):
        read_netflix(extra)
    header = _write(tmp_path / "b" / "combined_data_1.txt", "1:\n10,4,2005-01-01\n2:,7\n12,5,2005-01-03\n")
    with pytest.raises(InputError, match=r"combined_data_1.txt: line 3 has an extra field '7' \(expected 'MovieID:' alone\)"):
        read_netflix(header)


def test_msd_reader_and_errors(tmp_path):
    p = _write(tmp_path / "train_triplets.txt", "uA\tsX\t3\nuB\tsX\t1\nuA\tsY\t2\n")
    df = read_msd(p)
    assert df["rating"].to_list() == [3.0, 1.0, 2.0]
    assert df["user"].to_list() == [0, 1, 0] and df["item"].to_list() == [0, 0, 1]
    bad = _write(tmp_path / "bad.txt", "uA\tsX\t3\nuB\tsX\tmany\n")
    with pytest.raises(InputError, match=r"'plays' holds a non-numeric value 'many' on line 2"):
        read_msd(bad)


# --------------------------------------------------------------------------- protocol
def _ratings(n_users=60, n_items=30, per_user=12, seed=0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    ratings = rng.choice([2.0, 4.0, 5.0], len(users), p=[0.2, 0.4, 0.4])
    return pl.DataFrame({"user": users, "item": items, "rating": ratings})


def test_split_properties():
    df = _ratings()
    protocol = Protocol(heldout_users=10)
    s = split_strong_generalisation(df, protocol, seed=3)
    pos = df.filter(pl.col("rating") >= 4)
    kept_users = pos.group_by("user").len().filter(pl.col("len") >= 5).height
    assert s.train.shape[0] + 20 == kept_users
    assert s.valid_tr.shape == s.test_tr.shape == (10, len(s.item_ids))
    # catalogue = items of the training users; every held-out interaction is on those items
    assert (np.diff(s.train.tocsc().indptr) > 0).all()
    for tr, te in ((s.valid_tr, s.valid_te), (s.test_tr, s.test_te)):
        assert tr.multiply(te).nnz == 0  # fold-in and evaluation sets are disjoint
        n = np.diff((tr + te).indptr)
        n_te = np.diff(te.indptr)
        # users with >= 5 items evaluate on int(0.2 n) of them; others keep everything as fold-in
        np.testing.assert_array_equal(n_te, np.where(n >= 5, (0.2 * n).astype(int), 0))
    total = s.train.nnz + sum(m.nnz for m in (s.valid_tr, s.valid_te, s.test_tr, s.test_te))
    assert total <= pos.height
    again = split_strong_generalisation(df, protocol, seed=3)
    assert (again.test_te != s.test_te).nnz == 0
    other = split_strong_generalisation(df, protocol, seed=4)
    assert (other.test_te != s.test_te).nnz > 0 or other.test_te.shape != s.test_te.shape


def test_split_item_filter_then_user_filter():
    df = _ratings()
    # item 99 is held by one user only (500), who holds 5 items
    extra = pl.DataFrame({"user": [500] * 5, "item": [99, 0, 1, 2, 3], "rating": [5.0] * 5})
    s = split_strong_generalisation(pl.concat([df, extra]), Protocol(min_item_users=2, heldout_users=5), seed=0)
    assert 99 not in s.item_ids.tolist()
    # item filter first: user 500 falls to 4 items and is dropped by min_user_items = 5
    kept = s.train.shape[0] + 10
    s2 = split_strong_generalisation(pl.concat([df, extra]), Protocol(min_item_users=1, heldout_users=5), seed=0)
    assert s2.train.shape[0] + 10 == kept + 1


def test_vanishing_users_and_empty_heldout_are_errors():
    df = _ratings(n_users=15)
    with pytest.raises(InputError, match=r"ratings.csv: only 15 users remain after filtering .* protocol.heldout_users=10 needs more than 20"):
        split_strong_generalisation(df, Protocol(heldout_users=10), seed=0, source="ratings.csv")
    with pytest.raises(InputError, match="no item has >= 1000 users"):
        split_strong_generalisation(df, Protocol(min_item_users=1000), seed=0)
    with pytest.raises(InputError, match=r"no interaction has rating >= 6"):
        split_strong_generalisation(df, Protocol(min_rating=6), seed=0)
    # every held-out user has < min_items_to_split items -> nothing to evaluate
    with pytest.raises(InputError, match="every valid user has an empty held-out set"):
        split_strong_generalisation(_ratings(), Protocol(heldout_users=10, min_items_to_split=50), seed=0)


def test_split_does_not_depend_on_numpy_print_options():
    # the fold-in draws are keyed by the dataset name; the test users' key once hashed repr() of an array
    df = _ratings()
    a = split_strong_generalisation(df, Protocol(heldout_users=10), seed=3, key="syn")
    old = np.get_printoptions()
    try:
        np.set_printoptions(precision=3)
        b = split_strong_generalisation(df, Protocol(heldout_users=10), seed=3, key="syn")
    finally:
        np.set_printoptions(**old)
    for name in ("train", "valid_tr", "valid_te", "test_tr", "test_te"):
        assert (getattr(a, name) != getattr(b, name)).nnz == 0, name


# --------------------------------------------------------------------------- synthetic + cache
def test_synthetic_has_long_tail_and_clusters(tmp_path):
    spec = SyntheticSpec(n_users=800, n_items=200, n_clusters=5, mean_items_per_user=20, popularity_weight=1.0)
    p = write_synthetic_ratings(tmp_path / "ratings.csv", spec)
    df = read_ml20m(p)
    assert set(df["rating"].unique().to_list()) <= {1.0, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0}
    pos = df.filter(pl.col("rating") >= 4)
    counts = np.sort(pos.group_by("item").len()["len"].to_numpy())[::-1]
    # long tail: the top 10 % of items hold far more than 10 % of the positives
    assert counts[: len(counts) // 10].sum() > 0.3 * counts.sum()
    # clusters: a user's positives concentrate on few clusters
    truth = item_truth(spec)
    cluster_of = dict(zip(truth.movie_ids.tolist(), truth.cluster.tolist()))
    top2 = (pos.with_columns(pl.col("item").replace_strict(cluster_of).alias("c"))
            .group_by("user", "c").len().sort("len", descending=True).group_by("user").agg(pl.col("len").head(2).sum() / pl.col("len").sum()))
    assert top2["len"].mean() > 0.6  # 2 of 5 clusters would hold 0.4 by chance
    # same spec, same data
    again = pl.concat(list(iter_synthetic_ratings(spec)))
    assert again.select("userId", "movieId", "rating").equals(pl.read_csv(p).select("userId", "movieId", "rating"))


def test_prepare_dataset_caches_and_verifies(tmp_path):
    spec = DatasetSpec(name="syn", synthetic=SyntheticSpec(n_users=600, n_items=120, mean_items_per_user=15),
                       protocol=Protocol(heldout_users=50))
    a = prepare_dataset(spec, 1, tmp_path)
    b = prepare_dataset(spec, 1, tmp_path)
    assert a.cache_dir == b.cache_dir and a.files == b.files
    assert a.load("train").shape == (a.n_train_users, a.n_items)
    assert a.item_counts.sum() == a.load("train").nnz
    c = prepare_dataset(spec, 2, tmp_path)
    assert c.cache_dir != a.cache_dir
    # the split depends on the seed and dataset name, not on where the files live
    d = prepare_dataset(spec, 1, tmp_path / "elsewhere")
    assert (d.load("test_te") != b.load("test_te")).nnz == 0 and (d.load("train") != b.load("train")).nnz == 0
    Path(a.files["test_te"].path).write_bytes(b"tampered")
    with pytest.raises(InputError, match="checksum mismatch"):
        a.load("test_te")


def test_real_dataset_path_errors(tmp_path):
    cfg = {"datasets": [{"name": "ml", "source": "ml20m"}], "methods": {"ease": {}}}
    with pytest.raises(ConfigError, match=r"datasets\[0\].path: a ml20m dataset needs the path"):
        TailConfig.from_dict(cfg)
    cfg = {"datasets": [{"name": "ml20m", "path": "data/ml-20m/ratings.csv"}], "methods": {"ease": {}}}
    with pytest.raises(ConfigError, match=r"datasets\[0\].path: 'data/ml-20m/ratings.csv' is set but source is 'synthetic'; "
                                          r"set datasets\[0\].source to ml20m, netflix or msd"):
        TailConfig.from_dict(cfg)
    spec = DatasetSpec(name="ml", source="ml20m", path=str(tmp_path / "missing.csv"))
    with pytest.raises(InputError, match="missing.csv: ml20m file not found"):
        prepare_dataset(spec, 0, tmp_path)


# --------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", ["tail_quick.yaml", "tail_ml20m.yaml", "tail_netflix.yaml", "tail_msd.yaml"])
def test_shipped_configs_parse(name):
    parsed = parse_tail_config((CONFIGS / name).read_text())
    assert TailConfig.from_dict(parsed).as_dict() == parsed


@pytest.mark.parametrize("name, lr", [("tail_ml20m.yaml", 0.05), ("tail_netflix.yaml", 0.05), ("tail_msd.yaml", 0.08)])
def test_paper_configs_run_what_the_reference_code_runs(name, lr):
    """The reference's main() overwrites every learner lr with 5e-2 (ML-20M, Netflix) or 8e-2 (MSD);
    its CVaR η moves 1e-9·∂L/∂η per step without momentum; its loader drops the last partial batch."""
    cfg = TailConfig.from_dict(parse_tail_config((CONFIGS / name).read_text()))
    for m in cfg.methods:
        if m.trained:
            assert (m.training.lr, m.training.optimizer, m.training.drop_last) == (lr, "sgd", True), m.name
    tail = cfg.method("tail_opt")
    assert (tail.eta_lr, tail.eta_momentum, tail.lam, tail.beta) == (1e-9, 0.0, 10.0, 0.5)
    assert cfg.training.select_epoch == "best"  # recalign's default; `last` is documented as the paper's protocol


@pytest.mark.parametrize("change, message", [
    ({"methods": {"magic": {}}}, r"unknown method 'magic'"),
    ({"methods": {"ipw": {"alpha": "big"}}}, r"methods.ipw.alpha: expected a number, got 'big'"),
    ({"methods": {"ease": {"lr": 0.1}}}, r"methods.ease: unknown key\(s\) \['lr'\]"),
    # the message names the structure rule (only names starting with b centre the input)
    ({"methods": {"adversarial": {"adversary": "3mlp"}}}, r"methods.adversarial.adversary: unknown structure '3mlp'; expected linear, 2mlpN, 2bmlpN or b2mlpN"),
    ({"methods": {"adversarial": {"adversary": "2mlp0"}}}, r"methods.adversarial.adversary: unknown structure '2mlp0'"),
    ({"methods": {"adversarial": {"adversary": "bmlp2"}}}, r"methods.adversarial.adversary: unknown structure 'bmlp2'"),
    ({"methods": {"adversarial": {"adv_init": "xavier"}}}, r"methods.adversarial.adv_init: unknown value 'xavier'; choose from \['paper', 'scaled'\]"),
    ({"training": {"select_epoch": "best_of_3"}}, r"training.select_epoch: unknown value 'best_of_3'; choose from \['best', 'last'\]"),
    ({"methods": {"ipw": {"select_epoch": 1}}}, r"methods.ipw.select_epoch: unknown value 1"),
    ({"training": {"drop_last": "yes"}}, r"training.drop_last: expected true or false, got 'yes'"),
    ({"methods": {"adversarial": {"lam": 1.5}}}, r"methods.adversarial.lam: 1.5 is out of range \(<= 1.0 required\)"),
    ({"methods": {"adversarial": {"lam": -0.1}}}, r"methods.adversarial.lam: -0.1 is out of range \(>= 0.0 required\)"),
    ({"methods": {"tail_opt": {"lam": 0}}}, r"methods.tail_opt.lam: 0 is out of range \(> 0.0 required\)"),
    ({"methods": {"tail_opt": {"lam": "ten"}}}, r"methods.tail_opt.lam: expected a number, got 'ten'"),
    ({"methods": {"tail_opt": {"eta_momentum": 1.2}}}, r"methods.tail_opt.eta_momentum: 1.2 is out of range"),
    ({"methods": {"ipw": {"lam": 0.5}}}, r"methods.ipw: unknown key\(s\) \['lam'\]"),
    ({"methods": {"tail_opt": {"beta": 0}}}, r"methods.tail_opt.beta: 0 is out of range"),
    ({"training": {"optimizer": "rmsprop"}}, r"training.optimizer: unknown value 'rmsprop'"),
    ({"evaluation": {"ks": [10]}}, r"evaluation.ks: \[10\] must include 20"),
    ({"colour": "red"}, r"unknown key\(s\) \['colour'\]"),
    ({"datasets": [{"name": "a", "protocol": {"test_fraction": 1.5}}]}, r"test_fraction: 1.5 is out of range"),
    # int(0.1 · 5) = 0 items held out of a user with 5 items
    ({"datasets": [{"name": "a", "protocol": {"test_fraction": 0.1}}]},
     r"datasets\[0\].protocol: test_fraction=0.1 × min_items_to_split=5 < 1"),
    ({"datasets": [{"name": "a", "protocol": {"test_fraction": 0.3, "min_items_to_split": 3}}]},
     r"test_fraction=0.3 × min_items_to_split=3 < 1, so a held-out user with 3 items gets no evaluation item"),
])
def test_config_errors_name_key_and_value(change, message):
    raw = {"datasets": [{"name": "a"}], "methods": {"ease": {}}}
    raw.update(change)
    with pytest.raises(ConfigError, match=message):
        TailConfig.from_dict(raw)


def test_new_options_parse_and_round_trip():
    raw = {"datasets": [{"name": "a"}], "training": {"select_epoch": "last", "drop_last": True},
           "methods": {"tail_opt": {"lam": 10, "eta_lr": 1e-9, "eta_momentum": 0},
                       "adversarial": {"adversary": "b2mlp3", "adv_init": "scaled", "select_epoch": "best"}}}
    cfg = TailConfig.from_dict(raw)
    tail, adv = cfg.method("tail_opt"), cfg.method("adversarial")
    assert (tail.lam, tail.eta_lr, tail.eta_momentum, tail.training.select_epoch, tail.training.drop_last) == (10.0, 1e-9, 0.0, "last", True)
    assert (adv.adversary, adv.adv_init, adv.training.select_epoch) == ("b2mlp3", "scaled", "best")
    assert TailConfig.from_dict(cfg.as_dict()) == cfg


def test_test_fraction_times_min_items_to_split_of_one_is_accepted():
    # int(0.2 · 5) = int(0.1 · 10) = 1 held-out item for the smallest users that are split
    for tf, m in ((0.2, 5), (0.1, 10)):
        raw = {"datasets": [{"name": "a", "protocol": {"test_fraction": tf, "min_items_to_split": m}}], "methods": {"ease": {}}}
        p = TailConfig.from_dict(raw).datasets[0].protocol
        assert (p.test_fraction, p.min_items_to_split) == (tf, m)


def test_yaml_errors():
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_tail_config("datasets: [")
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_tail_config("- a\n- b\n")


def test_a_dataset_may_be_named_by_its_source_alone():
    import yaml

    from tests.flowrun import CONFIGS
    from steps.tail.config import TailConfig

    raw = yaml.safe_load((CONFIGS / "tail_quick.yaml").read_text())
    cfg = TailConfig.from_dict({**raw, "datasets": ["ml100k"]})
    assert [(d.name, d.source, d.path) for d in cfg.datasets] == [("ml100k", "ml100k", "")]


@pytest.mark.parametrize("seeds, message", [
    ([], r"seeds: expected a non-empty list of distinct integers >= 0 \(training seeds\), got \[\]"),
    (3, r"seeds: expected a non-empty list of distinct integers >= 0 \(training seeds\), got 3"),
    ([1, 2, 1], r"seeds: \[1, 2, 1\] repeats \[1\]; the training seeds must be distinct"),
    ([0, -1], r"seeds\[1\]: expected an integer >= 0, got -1"),
    ([1.5], r"seeds\[0\]: expected an integer >= 0, got 1.5"),
    (["7"], r"seeds\[0\]: expected an integer >= 0, got '7'"),
])
def test_bad_seeds_are_named_with_key_and_value(seeds, message):
    with pytest.raises(ConfigError, match=message):
        TailConfig.from_dict({"datasets": [{"name": "a"}], "methods": {"ease": {}}, "seeds": seeds})


def test_seeds_default_to_the_seed_and_name_the_train_cells():
    raw = {"datasets": [{"name": "a"}], "methods": {"ease": {}, "ipw": {}}, "seed": 11}
    one = TailConfig.from_dict(raw)
    assert one.seeds == (11,) and one.cell_names == ["ease", "ipw"] and one.cell("ipw") == (one.method("ipw"), 11)
    assert TailConfig.from_dict(one.as_dict()) == one
    two = TailConfig.from_dict({**raw, "seeds": [3, 0]})
    assert two.seeds == (3, 0) and two.seed == 11
    assert two.cell_names == ["ease@3", "ease@0", "ipw@3", "ipw@0"] and two.cell("ease@0")[1] == 0
    assert TailConfig.from_dict(two.as_dict()) == two
    with pytest.raises(ConfigError, match=r"cell 'ease@5': seed '5' is not one of seeds \[3, 0\]"):
        two.cell("ease@5")
