"""ExplainFlow's loaders against hostile inputs: ReChorus folders, MovieLens-1M files, checkpoints."""

import pickle

import pytest
import torch

from steps.errors import InputError
from steps.explain.data import CATALOGUE_FACTOR, CATALOGUE_SLACK, convert_ml1m, read_ml1m_ratings, read_rechorus
from steps.explain.model import GRU4Rec, check_checkpoint, load_rechorus_checkpoint
from tests.badfiles import symlink_loop
from tests.test_explain_data import DEV, TEST, TRAIN, write_folder


@pytest.mark.parametrize("train, dev, message", [
    # an absurd item id sized the catalogue (and the embedding table) to 10^10
    (TRAIN + "2\t10000000000\t6\n", DEV,
     r"train.csv: column 'item_id', row 5 \(line 7\): value 10000000000 is outside the valid range \(item ids: 1 to 2147483647\)"),
    (TRAIN + "2\t99999\t6\n", DEV, r"train.csv, user 2: item id 99999 would make a catalogue \(and an embedding table\) of 99999 items"),
    ("user_id\titem_id\ttime\n3000000000\t2\t20\n", DEV, r"column 'user_id', row 0 \(line 2\): value 3000000000 is outside"),
    # negatives are distinct (the README says so)
    (TRAIN, DEV.replace("[2, 3]", "[3, 3]"), r"dev.csv: column 'neg_items', row 1 \(line 3\): item 3 is listed twice \(positions 0 and 1\)"),
    (TRAIN, DEV.replace("[2, 3]", "[2, 4294967297]"), r"dev.csv: column 'neg_items', row 1 \(line 3\): value 4294967297 is outside"),
])
def test_bad_rechorus_files(tmp_path, train, dev, message):
    with pytest.raises(InputError, match=message):
        read_rechorus(write_folder(tmp_path, train, dev, TEST))


def test_catalogue_cap_is_what_the_data_contains(tmp_path):
    """The largest item id may be up to CATALOGUE_FACTOR x distinct ids + CATALOGUE_SLACK."""
    distinct = 7  # items 1..6 of TRAIN/DEV/TEST and the new one
    cap = CATALOGUE_FACTOR * distinct + CATALOGUE_SLACK
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ok = read_rechorus(write_folder(tmp_path / "a", TRAIN + f"2\t{cap}\t6\n", DEV, TEST))
    assert ok.n_items == cap + 1
    with pytest.raises(InputError, match=rf"item id {cap + 1} would make a catalogue"):
        read_rechorus(write_folder(tmp_path / "b", TRAIN + f"2\t{cap + 1}\t6\n", DEV, TEST))


@pytest.mark.parametrize("line, message", [
    ("1::10::9::978300760", r"ratings.dat: column 'rating', line 2: value 9 is outside the valid range \(MovieLens-1M star ratings: 1 to 5\)"),
    ("1::10::-1::978300760", r"column 'rating', line 2: value -1 is outside"),
    ("0::10::3::978300760", r"column 'user', line 2: value 0 is outside the valid range \(UserID: 1 to 2147483647\)"),
    ("1::-10::3::978300760", r"column 'movie', line 2: value -10 is outside"),
    ("1::10::3::-5", r"column 'time', line 2: value -5 is outside the valid range \(Unix time"),
])
def test_bad_ml1m_ratings(tmp_path, line, message):
    p = tmp_path / "ratings.dat"
    p.write_text("1::11::4::978300761\n" + line + "\n")
    with pytest.raises(InputError, match=message):
        read_ml1m_ratings(p)


def test_ml1m_conversion_leaves_nothing_on_failure(tmp_path, monkeypatch):
    import steps.explain.data as D

    p = tmp_path / "ratings.dat"
    p.write_text("\n".join(f"{u}::{i + 5 * (u == 3)}::4::{978300000 + i}" for u in (1, 2, 3) for i in range(1, 6)) + "\n")
    out = tmp_path / "ml1m"
    real = D.write_rechorus

    def write_then_fail(folder, data):  # train/dev/test.csv written, then the disk fills up
        real(folder, data)
        raise OSError("No space left on device")

    monkeypatch.setattr(D, "write_rechorus", write_then_fail)
    with pytest.raises(OSError, match="No space left"):
        convert_ml1m(p, out, n_neg=2, seed=1)
    assert list(out.iterdir()) == []  # no complete-looking train.csv
    monkeypatch.setattr(D, "write_rechorus", real)
    convert_ml1m(p, out, n_neg=2, seed=1)
    assert sorted(f.name for f in out.iterdir()) == ["dev.csv", "item_map.csv", "test.csv", "train.csv", "user_map.csv"]


def test_symlink_loops_are_named(tmp_path):
    with pytest.raises(InputError, match="ratings.dat: file is a symbolic link loop"):
        read_ml1m_ratings(symlink_loop(tmp_path, "ratings.dat"))
    with pytest.raises(InputError, match="ds: data folder is a symbolic link loop"):
        read_rechorus(symlink_loop(tmp_path, "ds"))
    # an optional file that is a loop is an error, not silently absent
    (tmp_path / "sub").mkdir()
    folder = write_folder(tmp_path / "sub", TRAIN, DEV, TEST)
    symlink_loop(folder, "item_meta.csv")
    with pytest.raises(InputError, match="item_meta.csv: file is a symbolic link loop"):
        read_rechorus(folder)


def test_nan_checkpoint_is_refused(tmp_path):
    state = GRU4Rec(30, 8, 6, seed=2).state_dict()
    state["rnn.weight_hh_l0"][4, 2] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(InputError, match=r"nan.pt: rnn.weight_hh_l0 holds nan at index \(4, 2\) \(1 non-finite values\)"):
        load_rechorus_checkpoint(tmp_path / "nan.pt")
    with pytest.raises(InputError, match="rnn.weight_hh_l0 holds nan"):
        check_checkpoint(tmp_path / "nan.pt", 30)
    state["rnn.weight_hh_l0"][4, 2] = float("inf")
    torch.save(state, tmp_path / "inf.pt")
    with pytest.raises(InputError, match="holds inf"):
        load_rechorus_checkpoint(tmp_path / "inf.pt")
    assert check_checkpoint("", 30) is None  # no checkpoint given: nothing to check


class _NotWeights:
    pass


def test_non_weights_checkpoint_gets_no_unsafe_advice(tmp_path):
    with open(tmp_path / "obj.pt", "wb") as f:
        pickle.dump({"model": _NotWeights()}, f, protocol=2)  # torch.save's protocol
    with pytest.raises(InputError, match="obj.pt: not a readable PyTorch checkpoint .*it holds Python objects") as err:
        check_checkpoint(tmp_path / "obj.pt", 30)
    assert "weights_only=False" not in str(err.value) and "weights_only` set to `False" not in str(err.value)
    torch.save(GRU4Rec(30, 8, 6, seed=2), tmp_path / "module.pt")  # a whole module, not a state_dict
    with pytest.raises(InputError, match="it holds Python objects") as err:
        check_checkpoint(tmp_path / "module.pt", 30)
    assert "False" not in str(err.value) and "safe_globals" not in str(err.value)  # no advice that runs its code
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(InputError, match=r"junk.pt: not a readable PyTorch checkpoint \(not a state_dict of tensors") as err:
        check_checkpoint(tmp_path / "junk.pt")
    assert "weights_only" not in str(err.value)
