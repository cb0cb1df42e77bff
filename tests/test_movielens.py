"""MovieLens readers (steps/movielens.py): the RecBole wheel's ML-100K, GroupLens' folder, ML-20M movies.csv."""

import importlib.metadata
import shutil
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steps import movielens as ml
from steps.errors import InputError


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def _flags(*genres: str) -> str:
    return "|".join("1" if g in genres else "0" for g in ml.ML100K_GENRES)


def _grouplens(folder: Path, data: str, items: list[tuple[int, str, tuple[str, ...]]]) -> Path:
    _write(folder / "u.data", data)
    _write(folder / "u.item", "".join(f"{i}|{t}|01-Jan-1995||http://x|{_flags(*g)}\n" for i, t, g in items), "latin-1")
    return folder


TINY_ITEMS = [(1, "Toy Story (1995)", ("Animation", "Children's", "Comedy")), (2, "Café Noir (1995)", ("Film-Noir",)),
              (3, "unknown", ("unknown",))]
TINY_DATA = "1\t1\t5\t881250949\n1\t2\t3\t881250950\n2\t1\t4\t881250951\n2\t3\t1\t881250952\n"


# --------------------------------------------------------------------------- the RecBole wheel's files
def test_recbole_ml100k_counts_and_genres():
    data = ml.load_ml100k()
    r, items = data.ratings, data.items
    assert r.schema == pl.Schema(ml.RATINGS_SCHEMA) and items.schema == pl.Schema(ml.ITEMS_SCHEMA)
    # GroupLens' README: 100,000 ratings (1-5) from 943 users on 1682 movies
    assert (r.height, r["user_id"].n_unique(), items.height) == (ml.ML100K_RATINGS, ml.ML100K_USERS, ml.ML100K_ITEMS)
    assert r["item_id"].n_unique() == ml.ML100K_ITEMS
    assert (r["user_id"].min(), r["user_id"].max(), items["item_id"].min(), items["item_id"].max()) == (1, 943, 1, 1682)
    assert r.group_by("user_id").len()["len"].min() == 20  # every ML-100K user rated at least 20 movies
    assert set(r["rating"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    # the first line of ml-100k.inter / u.data, and Toy Story's genres in u.item
    assert r.row(0) == (196, 242, 3.0, 881250949)
    toy = items.filter(pl.col("item_id") == 1).row(0, named=True)
    assert toy["title"] == "Toy Story" and toy["genres"] == ["Animation", "Children's", "Comedy"]
    assert set(items["genres"].explode()) == set(ml.ML100K_GENRES)  # RecBole spells the genres as GroupLens does
    assert items.filter(pl.col("genres").list.contains("unknown"))["item_id"].to_list() == [267, 1373]
    assert "recbole" not in sys.modules  # located through the distribution's metadata, never imported
    assert data.files[0].endswith("ml-100k.inter")


def _fake_dist(monkeypatch, folder: Path):
    class Dist:
        version = ml.RECBOLE_VERSION

        def locate_file(self, rel):
            return folder / Path(rel).name

    monkeypatch.setattr(ml.importlib.metadata, "distribution", lambda name: Dist())


def test_recbole_checksum_mismatch_and_missing_file(tmp_path, monkeypatch):
    real = ml.recbole_ml100k_files()
    for p in real.values():
        shutil.copy(p, tmp_path / p.name)
    _fake_dist(monkeypatch, tmp_path)
    assert ml.recbole_ml100k_files()["ml-100k.item"] == tmp_path / "ml-100k.item"  # the copies verify
    with open(tmp_path / "ml-100k.inter", "a") as f:
        f.write("1\t2\t3\t4\n")
    with pytest.raises(InputError, match=r"ml-100k.inter: SHA-256 .* differs from RecBole 1.2.1's 4edb74e2a81178c2"):
        ml.load_ml100k("recbole")
    (tmp_path / "ml-100k.inter").unlink()
    with pytest.raises(InputError, match=r"ml-100k.inter: not found in the installed recbole 1.2.1"):
        ml.recbole_ml100k_files()


def test_recbole_wheel_missing(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(ml.importlib.metadata, "distribution", missing)
    with pytest.raises(InputError, match=r"RecBole wheel is not installed; run `make install`, or `pip install --no-deps recbole==1.2.1`"):
        ml.load_ml100k()


def test_recbole_atomic_files_errors(tmp_path):
    inter = _write(tmp_path / "a.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t3\t10\n1\t3\t7\t11\n")
    with pytest.raises(InputError, match=r"a.inter: line 3, column 'rating': rating '7' is outside 1–5"):
        ml.read_recbole_inter(inter)
    _write(inter, "user:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t3\t10\n")
    with pytest.raises(InputError, match=r"a.inter: line 1: header .* expected 'user_id:token\\titem_id:token"):
        ml.read_recbole_inter(inter)
    _write(inter, "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t3\t10.5\n")
    with pytest.raises(InputError, match=r"line 2, column 'timestamp': expected an integer, got '10.5'"):
        ml.read_recbole_inter(inter)
    item = _write(tmp_path / "a.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                  "1\tToy Story\t1995\tAnimation Comedy\n2\tHeat\t1995\tAction Cartoon\n")
    with pytest.raises(InputError, match=r"a.item: line 3, column 'class': unknown genre 'Cartoon'"):
        ml.read_recbole_item(item)
    _write(item, "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n1\tToy Story\t1995\t\n")
    with pytest.raises(InputError, match=r"a.item: line 2 \(item 1\): the item has no genre"):
        ml.read_recbole_item(item)


# --------------------------------------------------------------------------- GroupLens' folder
def test_grouplens_folder(tmp_path):
    data = ml.load_ml100k(_grouplens(tmp_path / "ml-100k", TINY_DATA, TINY_ITEMS))
    assert data.ratings.to_dict(as_series=False) == {
        "user_id": [1, 1, 2, 2], "item_id": [1, 2, 1, 3], "rating": [5.0, 3.0, 4.0, 1.0],
        "timestamp": [881250949, 881250950, 881250951, 881250952]}
    assert data.items.to_dict(as_series=False) == {
        "item_id": [1, 2, 3], "title": ["Toy Story (1995)", "Café Noir (1995)", "unknown"],
        "genres": [["Animation", "Children's", "Comedy"], ["Film-Noir"], ["unknown"]]}
    assert "GroupLens" in data.source


def test_grouplens_and_recbole_genres_agree(tmp_path):
    """The same items written in both layouts read to the same genre lists."""
    gl = ml.read_grouplens_item(_grouplens(tmp_path / "gl", TINY_DATA, TINY_ITEMS) / "u.item")
    rb = ml.read_recbole_item(_write(tmp_path / "x.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                                     + "".join(f"{i}\t{t}\t1995\t{' '.join(g)}\n" for i, t, g in TINY_ITEMS)))
    assert gl.select("item_id", "genres").equals(rb.select("item_id", "genres"))


@pytest.mark.parametrize("data, message", [
    ("1\t1\t6\t5\n", r"u.data: line 1, column 'rating': rating '6' is outside 1–5"),
    ("1\t1\t5\t5\n1\t2\t0.5\t5\n", r"u.data: line 2, column 'rating': rating '0.5' is outside 1–5"),
    ("1\t1\t5\t5\n0\t2\t4\t5\n", r"u.data: line 2, column 'user_id': '0' is not a positive id"),
    ("1\tx\t5\t5\n", r"u.data: line 1, column 'item_id': expected an integer, got 'x'"),
    ("1\t1\t5\t5\n2\t1\t5\t5\n1\t1\t4\t9\n", r"u.data: line 3: user 1 rates item 1 twice \(first on line 1\)"),
    ("1\t1\t5\n", r"u.data: line 1: expected 4 u.data fields separated by '\\t', found 3"),
    ("1\t9\t5\t5\n", r"u.data: line 1: item 9 is not in .*u.item \(1 rated item\(s\) have no entry there\)"),
])
def test_grouplens_ratings_errors(tmp_path, data, message):
    folder = _grouplens(tmp_path / "ml-100k", data, TINY_ITEMS)
    with pytest.raises(InputError, match=message):
        ml.load_ml100k(folder)


def test_grouplens_items_errors(tmp_path):
    folder = _grouplens(tmp_path / "a", TINY_DATA, TINY_ITEMS + [(4, "Nothing (1990)", ())])
    with pytest.raises(InputError, match=r"u.item: line 4 \(item 4\): the item has no genre"):
        ml.load_ml100k(folder)
    folder = _grouplens(tmp_path / "b", TINY_DATA, TINY_ITEMS + [(2, "Again (1990)", ("Drama",))])
    with pytest.raises(InputError, match=r"u.item: line 4: item 2 is listed twice \(first on line 2\)"):
        ml.load_ml100k(folder)
    _write(folder / "u.item", "1|T|d||u|" + _flags("Drama").replace("0", "2", 1) + "\n")
    with pytest.raises(InputError, match=r"u.item: line 1, genre flag 1 \('unknown', field 6\): expected 0 or 1, got '2'"):
        ml.read_grouplens_item(folder / "u.item")
    _write(folder / "u.item", "1|T|d||u|0|1\n")
    with pytest.raises(InputError, match=r"u.item: line 1: expected 24 u.item fields separated by '\|', found 7"):
        ml.read_grouplens_item(folder / "u.item")


def test_grouplens_missing_files(tmp_path):
    with pytest.raises(InputError, match=r"nope: MovieLens-100K folder not found"):
        ml.load_ml100k(tmp_path / "nope")
    _write(tmp_path / "ml" / "u.data", TINY_DATA)
    _write(tmp_path / "ml" / "ratings.csv", "")
    with pytest.raises(InputError, match=r"not a GroupLens ml-100k folder: u.item missing \(found: ratings.csv, u.data\)"):
        ml.load_ml100k(tmp_path / "ml")
    with pytest.raises(InputError, match=r"u.item: not found"):
        ml.ml100k_files(tmp_path / "ml")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 50), st.integers(1, 3), st.integers(1, 5), st.integers(0, 2**40)),
                min_size=1, max_size=40, unique_by=lambda t: (t[0], t[1])))
def test_grouplens_ratings_round_trip(tmp_path_factory, rows):
    """Any valid u.data reads back row for row."""
    folder = tmp_path_factory.mktemp("rt")
    data = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)
    out = ml.load_ml100k(_grouplens(folder, data, TINY_ITEMS)).ratings
    assert out.rows() == [(u, i, float(r), t) for u, i, r, t in rows]


# --------------------------------------------------------------------------- ML-20M movies.csv
def test_ml20m_movies(tmp_path):
    p = _write(tmp_path / "movies.csv", 'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children|Comedy\n'
               '11,"American President, The (1995)",Comedy|Drama|Romance\n131262,Innocence (2014),(no genres listed)\n')
    items = ml.read_ml20m_movies(p)
    assert items.to_dict(as_series=False) == {
        "item_id": [1, 11, 131262], "title": ["Toy Story (1995)", "American President, The (1995)", "Innocence (2014)"],
        "genres": [["Adventure", "Animation", "Children's", "Comedy"], ["Comedy", "Drama", "Romance"], ["unknown"]]}
    assert ml.genre_table(items).columns == ["item_id", "categories"]


@pytest.mark.parametrize("body, message", [
    ("1,A,Drama\n2,B,\n", r"movies.csv: line 3, column 'genres': empty value"),
    ("1,A,Drama\n-4,B,Drama\n", r"movies.csv: line 3, column 'movieId': '-4' is not a positive id"),
    ("1,A,Drama\n1,B,Comedy\n", r"movies.csv: line 3: item 1 is listed twice \(first on line 2\)"),
    ("1,A,Drama|Drama\n", r"movies.csv: line 2 \(item 1\): a genre is listed twice"),
    ("1,A,|\n", r"movies.csv: line 2 \(item 1\): the item has no genre"),
])
def test_ml20m_movies_errors(tmp_path, body, message):
    p = _write(tmp_path / "movies.csv", "movieId,title,genres\n" + body)
    with pytest.raises(InputError, match=message):
        ml.read_ml20m_movies(p)
    with pytest.raises(InputError, match="movies file not found"):
        ml.read_ml20m_movies(tmp_path / "none.csv")
    _write(tmp_path / "m2.csv", "movieId,name\n1,A\n")
    with pytest.raises(InputError, match=r"m2.csv: missing column 'title'"):
        ml.read_ml20m_movies(tmp_path / "m2.csv")


def test_ratings_frames_are_the_same_shape_from_both_sources(tmp_path):
    gl = ml.load_ml100k(_grouplens(tmp_path / "g", TINY_DATA, TINY_ITEMS))
    rb = ml.load_ml100k("recbole")
    assert gl.ratings.schema == rb.ratings.schema and gl.items.schema == rb.items.schema
    assert np.all(np.diff(gl.items["item_id"].to_numpy()) > 0)
