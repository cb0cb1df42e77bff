"""ExplainFlow on MovieLens-100K and GRU4Rec's candidate bundle (steps/explain/candidates.py)."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from steps.candidates import read_candidate_bundle
from steps.errors import ConfigError, InputError
from steps.explain.candidates import (
    DataSpec,
    candidate_items,
    convert_ml100k,
    gru4rec_topk,
    store_candidate_items,
    write_gru4rec_candidates,
)
from steps.explain.config import ExplainConfig, parse_explain_config
from steps.explain.data import FEATURE, ITEM, SeqData, read_rechorus
from steps.explain.model import GRU4Rec
from steps.explain.pipeline import resolve_dataset
from steps.movielens import ML100K_GENRES, load_ml100k
from tests.test_movielens import _grouplens

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
ITEMS = [(1, "A (1990)", ("Drama",)), (2, "B (1991)", ("Comedy", "Romance")), (3, "C (1992)", ("Action",)),
         (4, "D (1993)", ("Drama", "War")), (5, "E (1994)", ("Horror",)), (6, "F (1995)", ("Comedy",)),
         (7, "G (1996)", ("Western",))]
# user 1: items 3, 1, 2, 4 by time (file order breaks the tie at t=20); user 2: 5, 6, 1
DATA = ("1\t1\t5\t20\n1\t3\t4\t10\n1\t2\t3\t20\n1\t4\t1\t40\n"
        "2\t6\t2\t8\n2\t5\t5\t7\n2\t1\t4\t9\n")


def test_data_spec_and_config():
    cfg = ExplainConfig.from_dict(parse_explain_config((CONFIGS / "explain_ml100k.yaml").read_text()))
    assert cfg.data == DataSpec("ml100k", "") and cfg.candidates_top_m == 100
    assert ExplainConfig.from_dict(cfg.as_dict()) == cfg
    assert ExplainConfig.from_dict({"data": {"source": "ml100k", "path": "data/ml-100k"}}).data.path == "data/ml-100k"
    assert ExplainConfig.from_dict({}).data == DataSpec()
    with pytest.raises(ConfigError, match=r"data.source: 'ml1m' is not one of \['ml100k'\]"):
        ExplainConfig.from_dict({"data": {"source": "ml1m"}})
    with pytest.raises(ConfigError, match=r"data: unknown key\(s\) \['folder'\]"):
        ExplainConfig.from_dict({"data": {"source": "ml100k", "folder": "x"}})
    with pytest.raises(ConfigError, match=r"data.path: 'x' is set but data.source is empty"):
        ExplainConfig.from_dict({"data": {"path": "x"}})
    with pytest.raises(ConfigError, match=r"candidates_top_m"):
        ExplainConfig.from_dict({"candidates_top_m": -2})


def test_convert_tiny_grouplens_folder(tmp_path):
    src = _grouplens(tmp_path / "ml-100k", DATA, ITEMS)
    convert_ml100k(str(src), tmp_path / "out", n_neg=2, seed=1)
    data = read_rechorus(tmp_path / "out")
    rows = data.interactions.select("user_id", "item_id", "time", "split").rows()
    assert rows == [(1, 3, 10, "train"), (1, 1, 20, "train"), (1, 2, 20, "dev"), (1, 4, 40, "test"),
                    (2, 5, 7, "train"), (2, 6, 8, "dev"), (2, 1, 9, "test")]
    assert data.n_items == 7  # ids kept; the catalogue is 1..max rated id (as ReChorus), so item 7 is left out
    negs = data.split("test").select("user_id", "neg_items").rows()
    for user, neg in negs:  # negatives: items the user never rated
        assert len(neg) == 2 and not set(neg) & set(data.interactions.filter(pl.col("user_id") == user)["item_id"])
    assert dict(data.item_features.rows()) == {1: "Drama", 2: "Comedy", 3: "Action", 4: "Drama", 5: "Horror", 6: "Comedy"}
    items = candidate_items(data, tmp_path / "out")
    assert items.filter(pl.col(ITEM) == 2)["categories"].to_list() == [["Comedy", "Romance"]]
    with pytest.raises(InputError, match=r"data.source is ml100k: --data-dir and --ml1m-ratings cannot be given"):
        resolve_dataset(ExplainConfig.from_dict({"data": {"source": "ml100k"}, "n_neg": 2}), str(src), "", "", tmp_path)


def test_convert_the_wheels_ml100k(tmp_path):
    cfg = ExplainConfig.from_dict({"data": {"source": "ml100k"}})
    data = resolve_dataset(cfg, "", "", "", tmp_path)
    ratings = load_ml100k().ratings
    assert data.source == "MovieLens-100K" and data.interactions.height == ratings.height
    assert data.n_items == 1683 and data.n_users == 943
    test = data.split("test")
    assert test.height == 943 and data.split("dev").height == 943  # every user has >= 20 ratings
    last = ratings.group_by("user_id").agg(pl.col("timestamp").max())
    assert test.join(last, on="user_id").filter(pl.col("time") != pl.col("timestamp")).height == 0
    assert set(data.item_features[FEATURE]) <= set(ML100K_GENRES)
    items = candidate_items(data, tmp_path / "ml100k")
    assert items.height == 1682 and items["categories"].list.len().max() > 1


def _tiny(tmp_path):
    src = _grouplens(tmp_path / "ml-100k", DATA, ITEMS)
    convert_ml100k(str(src), tmp_path / "out", n_neg=2, seed=1)
    return read_rechorus(tmp_path / "out"), tmp_path / "out"


def test_gru4rec_bundle(tmp_path):
    data, folder = _tiny(tmp_path)
    model = GRU4Rec(data.n_items, 4, 3, seed=0)
    ref = store_candidate_items(data, tmp_path / "items", folder)
    manifest = write_gru4rec_candidates(model, data, 20, 100, ref, tmp_path / "bundle")
    c = read_candidate_bundle(manifest.parent)
    # user 1 consumed 3 of the 6 items before the test row (3, 1, 2): 3 candidates are left, M = 3
    assert c.user_ids.tolist() == [1, 2] and c.n_candidates == 3 and c.item_ids_sorted.tolist() == [1, 2, 3, 4, 5, 6]
    assert c.heldout_ids.tolist() == [4, 1] and c.heldout_offsets.tolist() == [0, 1, 2]
    seen = {1: {3, 1, 2}, 2: {5, 6}}
    for r, u in enumerate(c.user_ids):
        cands = set(c.item_id_of(c.candidate_rows[r]).tolist())
        assert not cands & seen[u] and 0 not in cands
        hist = c.item_id_of(c.history_rows[c.history_offsets[r]:c.history_offsets[r + 1]]).tolist()
        assert set(hist) == seen[u]
    assert c.item_id_of(c.history_rows[:3]).tolist() == [3, 1, 2] and c.history_times[:3].tolist() == [10, 20, 20]
    # the scores are the model's: score_all after user 2's history (5, 6)
    with torch.no_grad():
        s = model.score_all(torch.tensor([[5, 6]]), torch.tensor([2]))[0].double().numpy()
    ids = c.item_id_of(c.candidate_rows[1])
    assert np.allclose(c.scores[1], s[ids]) and (np.diff(c.scores[1]) <= 0).all()
    unseen = [i for i in range(1, 7) if i not in seen[2]]
    assert ids.tolist() == sorted(unseen, key=lambda i: (-s[i], i))[:3]
    assert c.meta["model"] == "gru4rec" and "Romance" in c.genres
    assert write_gru4rec_candidates(model, data, 20, 0, ref, tmp_path / "none") is None
    assert write_gru4rec_candidates(model, data, 20, 10, None, tmp_path / "none") is None


def test_candidate_items_from_features():
    inter = pl.DataFrame({"user_id": [1], "item_id": [3], "time": [0], "split": ["train"]})
    feats = pl.DataFrame({ITEM: [1, 2], FEATURE: ["a|b", "c"]})
    items = candidate_items(SeqData(inter, 4, feats, "i_genre"))
    assert items.rows() == [(1, ["a", "b"]), (2, ["c"]), (3, ["unknown"])]
    assert candidate_items(SeqData(inter, 4)) is None


def test_topk_ties_go_to_the_lower_item_id(tmp_path):
    data, _ = _tiny(tmp_path)
    model = GRU4Rec(data.n_items, 4, 3, seed=0)
    with torch.no_grad():
        model.i_embeddings.weight.zero_()  # every score 0
    users, targets, items, scores = gru4rec_topk(model, data, 20, 3)
    assert items.tolist() == [[4, 5, 6], [1, 2, 3]] and (scores == 0).all() and targets.tolist() == [4, 1]
