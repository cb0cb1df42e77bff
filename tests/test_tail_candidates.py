"""TailFlow's candidate bundles (steps/tail/candidates.py), ML-100K in TailFlow, and the bundle
resolver of finished runs (steps/bundles.py)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from steps.bundles import bundle_of_run, choose_bundle, parse_candidates_from, publish_bundle
from steps.candidates import read_candidate_bundle, write_candidate_bundle
from steps.errors import ConfigError, InputError
from steps.movielens import load_ml100k
from steps.storage import FileRef, file_ref
from steps.tail.candidates import scored_topk, write_tail_candidates
from steps.tail.config import DatasetSpec, Protocol, SyntheticSpec, TailConfig, parse_tail_config
from steps.tail.data import prepare_dataset
from steps.tail.evaluate import popularity_penalty, topk_lists
from steps.tail.models import ease_closed_form
from steps.tail.synthetic import item_truth
from tests.flowrun import CONFIGS

BASE = {"datasets": [{"name": "d", "source": "ml100k"}], "methods": {"ease": {}}}


# --------------------------------------------------------------------------- config
def test_ml100k_config_keys():
    cfg = TailConfig.from_dict(BASE)
    d = cfg.datasets[0]
    assert (d.source, d.path, d.protocol.heldout_users, cfg.candidates_top_m) == ("ml100k", "", 100, 100)
    assert TailConfig.from_dict(parse_tail_config("datasets: [{name: d, source: ml100k, path: data/ml-100k}]\n"
                                                  "methods: {ease: {}}\ncandidates_top_m: 0\n")).candidates_top_m == 0
    assert TailConfig.from_dict(cfg.as_dict()) == cfg
    ml20m = TailConfig.from_dict({**BASE, "datasets": [{"name": "m", "source": "ml20m", "path": "r.csv", "items_path": "m.csv"}]})
    assert ml20m.datasets[0].items_path == "m.csv" and TailConfig.from_dict(ml20m.as_dict()) == ml20m
    with pytest.raises(ConfigError, match=r"datasets\[0\].items_path: 'm.csv' is set but source is 'ml100k'"):
        TailConfig.from_dict({**BASE, "datasets": [{"name": "d", "source": "ml100k", "items_path": "m.csv"}]})
    with pytest.raises(ConfigError, match=r"candidates_top_m"):
        TailConfig.from_dict({**BASE, "candidates_top_m": -1})
    shipped = TailConfig.from_dict(parse_tail_config((CONFIGS / "tail_ml100k.yaml").read_text()))
    assert shipped.datasets[0].source == "ml100k" and "ease" in shipped.method_names


# --------------------------------------------------------------------------- scoring
@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 12), st.booleans())
def test_scored_topk_gives_topk_lists_and_their_scores(seed, k, penalised):
    """Same lists as TailFlow's evaluation (ties included: B holds few distinct values), scores
    = the ranking scores of those items, non-increasing along each list."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 9, 10
    B = rng.integers(-2, 3, (n_items, n_items)).astype(np.float32)
    X = sp.csr_matrix((rng.random((n_users, n_items)) < 0.3).astype(np.float32))
    pen = popularity_penalty(rng.integers(0, 20, n_items)) if penalised else None
    gamma = 0.5 if penalised else 0.0
    rows, scores = scored_topk(B, X, k, batch_users=4, penalty=pen, gamma=gamma)
    assert np.array_equal(rows, topk_lists(B, X, k, 4, "cpu", pen, gamma).astype(np.int64))
    full = X.toarray() @ B
    if penalised:
        full = full - gamma * np.maximum(0, np.where(X.toarray() > 0, -np.inf, full).max(axis=1, keepdims=True)) * pen[None, :]
    filled = rows >= 0
    assert np.allclose(scores[filled], np.take_along_axis(full, np.maximum(rows, 0), 1)[filled], atol=1e-5)
    assert not (X.toarray()[np.arange(n_users)[:, None], np.maximum(rows, 0)] > 0)[filled].any()
    s = np.where(filled, scores, -1e9)  # unfilled slots (-1) come last
    assert (np.diff(s, axis=1) <= 1e-6).all()


# --------------------------------------------------------------------------- bundles of a prepared dataset
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    spec = DatasetSpec(name="syn", synthetic=SyntheticSpec(n_users=500, n_items=80, n_clusters=4, mean_items_per_user=12),
                       protocol=Protocol(heldout_users=40))
    return spec, prepare_dataset(spec, 3, tmp_path_factory.mktemp("cache"))


def test_synthetic_bundle(synthetic, tmp_path):
    spec, prepared = synthetic
    B = ease_closed_form(prepared.load("train"), 50.0, "cpu").astype(np.float32)
    manifest = write_tail_candidates(prepared, "ease", B, 30, tmp_path / "b")
    c = read_candidate_bundle(manifest.parent)
    fold_in, heldout = prepared.load("test_tr").tocsr(), prepared.load("test_te").tocsr()
    keep = np.flatnonzero((np.diff(fold_in.indptr) > 0) & (np.diff(heldout.indptr) > 0))
    assert c.n_users == len(keep) == prepared.stats["test_users_evaluable"]
    assert np.array_equal(c.user_ids, prepared.test_user_ids[keep])
    assert c.n_candidates == min(30, prepared.n_items - np.diff(fold_in[keep].indptr).max())
    # the lists are TailFlow's own top-k lists for those users, as item ids
    lists = topk_lists(B, fold_in[keep], c.n_candidates)
    assert np.array_equal(c.item_id_of(c.candidate_rows), prepared.item_ids[lists])
    # labels and history: each user's held-out and fold-in items
    r = 3
    held = c.heldout_ids[c.heldout_offsets[r]:c.heldout_offsets[r + 1]]
    assert set(held) == set(prepared.item_ids[heldout[keep[r]].indices])
    hist = c.item_id_of(c.history_rows[c.history_offsets[r]:c.history_offsets[r + 1]])
    assert set(hist) == set(prepared.item_ids[fold_in[keep[r]].indices]) and c.history_times is None
    assert not set(hist) & set(c.item_id_of(c.candidate_rows[r]))
    # genres: the synthetic items' latent clusters
    truth = item_truth(spec.synthetic)
    cluster = dict(zip(truth.movie_ids.tolist(), truth.cluster.tolist()))
    i = int(c.candidate_rows[0, 0])
    assert c.genres[c.item_genre[i].indices[0]] == f"cluster_{cluster[int(c.item_ids_sorted[i])]:02d}"
    assert c.meta["model"] == "ease" and c.meta["dataset"] == "syn"


def test_no_bundle_without_genres_or_top_m(synthetic, tmp_path):
    _, prepared = synthetic
    B = np.eye(prepared.n_items, dtype=np.float32)
    assert write_tail_candidates(replace(prepared, items=None), "ease", B, 10, tmp_path / "x") is None
    assert write_tail_candidates(prepared, "ease", B, 0, tmp_path / "y") is None
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_ml100k_through_tail_preprocessing_and_bundle(tmp_path):
    """ML-100K from the wheel through the ML-20M protocol; the bundle's history carries the ratings' timestamps."""
    spec = TailConfig.from_dict(BASE).datasets[0]
    prepared = prepare_dataset(spec, 7, tmp_path / "cache")
    ratings = load_ml100k().ratings
    pos = ratings.filter(pl.col("rating") >= 4)
    kept_users = pos.group_by("user_id").len().filter(pl.col("len") >= 5).height
    assert prepared.stats["users"] == kept_users and prepared.stats["raw_rows"] == ratings.height
    assert prepared.stats["train_users"] == kept_users - 200
    B = ease_closed_form(prepared.load("train"), 200.0, "cpu").astype(np.float32)
    c = read_candidate_bundle(write_tail_candidates(prepared, "ease", B, 100, tmp_path / "b").parent)
    assert c.n_candidates == 100 and c.n_users == prepared.stats["test_users_evaluable"]
    assert set(c.genres) <= set(load_ml100k().items["genres"].explode()) and not c.single_genre
    off, times = c.history_offsets, c.history_times
    users = np.repeat(c.user_ids, np.diff(off))
    got = pl.DataFrame({"user_id": users, "item_id": c.item_id_of(c.history_rows), "t": times})
    joined = got.join(ratings, on=["user_id", "item_id"], how="left")
    assert joined["timestamp"].null_count() == 0 and (joined["t"] == joined["timestamp"]).all()
    assert (joined["rating"] >= 4).all()
    same_user = users[1:] == users[:-1]
    assert (np.diff(times)[same_user] >= 0).all()  # each history in time order
    # item genres are ML-100K's: Toy Story (item 1) is in the catalogue with three genres
    row = int(np.searchsorted(c.item_ids_sorted, 1))
    assert sorted(c.genres[g] for g in c.item_genre[row].indices) == ["Animation", "Children's", "Comedy"]


# --------------------------------------------------------------------------- resolving a run's bundles
def _bundle(folder: Path) -> Path:
    items = pl.DataFrame({"item_id": [1, 2, 3], "categories": [["a"], ["b"], ["a", "b"]]})
    return write_candidate_bundle(folder, np.array([7]), np.array([[3, 1]]), np.array([[0.9, 0.1]]), items)


def test_parse_and_choose_bundle(tmp_path):
    assert parse_candidates_from("TailFlow/12/ml100k/ease") == ("TailFlow/12", "ml100k/ease")
    assert parse_candidates_from("ExplainFlow/12") == ("ExplainFlow/12", None)
    with pytest.raises(InputError, match=r"expected <Flow>/<run_id>\[/<method>\]"):
        parse_candidates_from("TailFlow")
    with pytest.raises(InputError, match=r"expected <Flow>/<run_id>"):
        parse_candidates_from("TailFlow//ease")
    refs = {f"{d}/{m}": FileRef(f"/x/{d}_{m}/manifest.json", "0", 0) for d in ("ml100k", "syn") for m in ("ease", "ipw")}
    refs["ml100k/pop_rerank"] = FileRef("/x/p/manifest.json", "0", 0)
    assert choose_bundle("s", refs, "syn/ipw")[0] == "syn/ipw"
    assert choose_bundle("s", refs, "pop_rerank")[0] == "ml100k/pop_rerank"
    with pytest.raises(InputError, match=r"'ease' is ambiguous \(ml100k/ease, syn/ease\)"):
        choose_bundle("TailFlow/1/ease", refs, "ease")
    with pytest.raises(InputError, match=r"no bundle 'ials'; the run has ml100k/ease"):
        choose_bundle("s", refs, "ials")
    with pytest.raises(InputError, match=r"the run has 5 bundles .* name one"):
        choose_bundle("s", refs, None)
    with pytest.raises(InputError, match=r"the run wrote no candidate bundles"):
        choose_bundle("s", {}, None)
    one = {"gru4rec": refs["syn/ease"]}
    assert choose_bundle("ExplainFlow/1", one, None)[0] == "gru4rec"


def test_bundle_of_run_verifies_the_folder(tmp_path):
    published = []
    ref = publish_bundle(_bundle(tmp_path / "b"), lambda r: published.append(r) or r)
    assert [Path(r.path).name for r in published] == ["candidates.parquet", "items.parquet", "manifest.json"]
    folder = bundle_of_run("TailFlow/1/ease", {"d/ease": ref}, "ease")
    assert folder == tmp_path / "b" and read_candidate_bundle(folder).user_ids.tolist() == [7]
    (tmp_path / "b" / "items.parquet").write_bytes(b"changed")
    with pytest.raises(InputError, match=r"items.parquet: checksum .* differs"):
        bundle_of_run("TailFlow/1/ease", {"d/ease": ref}, "ease")
    with pytest.raises(InputError, match=r"not a manifest reference"):
        bundle_of_run("TailFlow/1/ease", {"d/ease": file_ref(tmp_path / "b" / "candidates.parquet")}, None)


def test_grouplens_folder_through_tail_preprocessing(tmp_path):
    """``path:`` a GroupLens ml-100k folder: the same preprocessing, genres and timestamps from its files."""
    from tests.test_movielens import _grouplens

    rng = np.random.default_rng(0)
    rows = [(u, i, int(rng.integers(4, 6)), 1000 * u + i) for u in range(1, 41) for i in rng.choice(np.arange(1, 31), 8, replace=False)]
    items = [(i, f"M{i} (1990)", (("Drama",) if i % 2 else ("Comedy", "War"))) for i in range(1, 31)]
    folder = _grouplens(tmp_path / "ml-100k", "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows), items)
    spec = TailConfig.from_dict({**BASE, "datasets": [{"name": "gl", "source": "ml100k", "path": str(folder),
                                                        "protocol": {"heldout_users": 5}}]}).datasets[0]
    prepared = prepare_dataset(spec, 1, tmp_path / "cache")
    assert prepared.stats["raw_rows"] == len(rows) and prepared.stats["users"] == 40
    c = read_candidate_bundle(write_tail_candidates(prepared, "ease", np.eye(prepared.n_items, dtype=np.float32), 5,
                                                    tmp_path / "b").parent)
    assert set(c.genres) == {"Drama", "Comedy", "War"}
    users = np.repeat(c.user_ids, np.diff(c.history_offsets))
    assert (c.history_times == 1000 * users + c.item_id_of(c.history_rows)).all()  # the u.data timestamps
