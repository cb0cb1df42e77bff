"""MovieLens readers: ML-100K from the RecBole wheel (no download) or GroupLens' folder, and
ML-20M's ``movies.csv``. Every reader returns the same two frames:

* ratings — ``user_id`` (i64), ``item_id`` (i64), ``rating`` (f64, 1–5), ``timestamp`` (i64, seconds);
* items — ``item_id`` (i64), ``title`` (str), ``genres`` (list[str], at least one per item).

Sources of ML-100K (943 users, 1,682 items, 100,000 ratings):

* ``"recbole"`` (the default): RecBole 1.2.1's wheel on PyPI (MIT licence; ``pip install --no-deps
  recbole==1.2.1``, done by ``make install``) ships ``recbole/dataset_example/ml-100k/`` as RecBole
  *atomic files*: tab-separated with a typed header (``ml-100k.inter``: ``user_id:token
  item_id:token rating:float timestamp:float``; ``ml-100k.item``: ``item_id:token
  movie_title:token_seq release_year:token class:token_seq``, ``class`` = space-separated genres).
  The files are located through the installed distribution's file list
  (:func:`importlib.metadata.distribution`), never by importing ``recbole`` (its ``__init__``
  imports torch and more), and checked against the SHA-256 digests in :data:`RECBOLE_ML100K`.
* a GroupLens ``ml-100k/`` folder: ``u.data`` (``user item rating timestamp``, tab-separated) and
  ``u.item`` (``|``-separated, latin-1: id, title, release date, video release date, IMDb URL, then
  19 0/1 genre flags in the order of :data:`ML100K_GENRES`).

Genre names are GroupLens' spellings, which RecBole's ``class`` tokens share (``Children's``,
``Film-Noir``, ``Sci-Fi``, ``unknown``); the two items GroupLens files under ``unknown`` only (267,
1373) keep that as their one genre. Titles are as each source writes them (GroupLens appends the
year, RecBole does not).

ML-20M ``movies.csv`` (``movieId,title,genres``, genres ``|``-separated): ``Children`` is spelled
``Children's`` as in ML-100K, and ``(no genres listed)`` (246 movies) becomes the one genre
``unknown`` — the category ML-100K uses for the same case — so every item keeps a category.

Every reader validates what it reads; an :class:`InputError` names the file, line, column and
value: non-integer or non-positive ids, ratings outside 1–5, non-integral or negative timestamps,
repeated (user, item) pairs, repeated item ids, items without a genre, unknown genre flags, rated
items missing from the item table, missing or unexpected files.

The data is distributed under GroupLens' usage licence (research use; this project does not
redistribute it). Cite F. M. Harper and J. A. Konstan, "The MovieLens Datasets: History and
Context", ACM TiiS 5(4), 2015.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from steps.errors import InputError
from steps.storage import sha256_file
from steps.validate import read_csv_text, require_dir, require_file

RECBOLE_VERSION = "1.2.1"
RECBOLE_DIR = "recbole/dataset_example/ml-100k"
#: SHA-256 of the RecBole 1.2.1 wheel's ML-100K files (computed once from the installed wheel).
RECBOLE_ML100K = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
INSTALL_HINT = f"run `make install`, or `pip install --no-deps recbole=={RECBOLE_VERSION}` (data only)"
RECBOLE_INTER_HEADER = ("user_id:token", "item_id:token", "rating:float", "timestamp:float")
RECBOLE_ITEM_HEADER = ("item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq")
#: GroupLens' 19 genre flags of ``u.item``, in file order.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
#: ML-20M spellings mapped to ML-100K's.
ML20M_GENRE_NAMES = {"Children": "Children's", "(no genres listed)": "unknown"}
#: ML-100K's published size (checked by the tests against the files).
ML100K_USERS, ML100K_ITEMS, ML100K_RATINGS = 943, 1682, 100_000

RATINGS_SCHEMA = {"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float64, "timestamp": pl.Int64}
ITEMS_SCHEMA = {"item_id": pl.Int64, "title": pl.String, "genres": pl.List(pl.String)}


@dataclass(frozen=True)
class MovieLens:
    """A MovieLens dataset read and validated: its ratings and items frames and where they came from."""

    ratings: pl.DataFrame
    items: pl.DataFrame
    source: str
    files: tuple[str, ...]


# --------------------------------------------------------------------------- locating the wheel's files
def recbole_ml100k_files() -> dict[str, Path]:
    """The RecBole wheel's ML-100K files (``ml-100k.inter``, ``ml-100k.item``), checksum-verified.

    Found through the installed distribution's metadata, so the ``recbole`` package is never imported.
    """
    try:
        dist = importlib.metadata.distribution("recbole")
    except importlib.metadata.PackageNotFoundError:
        raise InputError(f"MovieLens-100K (source 'recbole'): the RecBole wheel is not installed; {INSTALL_HINT}") from None
    out = {}
    for name, digest in RECBOLE_ML100K.items():
        path = Path(str(dist.locate_file(f"{RECBOLE_DIR}/{name}")))
        if not path.is_file():
            raise InputError(f"{path}: not found in the installed recbole {dist.version} (need {RECBOLE_VERSION}); {INSTALL_HINT}")
        actual = sha256_file(path)
        if actual != digest:
            raise InputError(
                f"{path}: SHA-256 {actual[:16]}… differs from RecBole {RECBOLE_VERSION}'s {digest[:16]}… "
                f"(installed recbole {dist.version}); reinstall with `pip install --force-reinstall --no-deps recbole=={RECBOLE_VERSION}`"
            )
        out[name] = path
    return out


# --------------------------------------------------------------------------- line-based reading
def _lines(path: Path, encoding: str = "utf-8") -> pl.Series:
    require_file(path)
    try:
        text = path.read_bytes().decode(encoding)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not {encoding} text ({exc})") from exc
    return pl.Series("line", text.splitlines(), dtype=pl.String)


def _fields(path: Path, lines: pl.Series, sep: str, names: tuple[str, ...], first_line: int, what: str) -> pl.DataFrame:
    """Split every line on ``sep`` into exactly ``len(names)`` fields; ``first_line`` = line number of ``lines[0]``."""
    parts = lines.str.split(sep)
    bad = parts.list.len() != len(names)
    if bad.any():
        r = int(bad.arg_max())
        raise InputError(f"{path}: line {r + first_line}: expected {len(names)} {what} fields separated by {sep!r}, "
                         f"found {parts[r].len()}: {lines[r]!r}")
    return pl.DataFrame({n: parts.list.get(i).str.strip_chars() for i, n in enumerate(names)})


def _int(path: Path, frame: pl.DataFrame, col: str, first_line: int, lo: int = 1, label: str | None = None) -> pl.Series:
    """An integer column (``float`` text with an integral value is accepted: RecBole types ids loosely)."""
    raw = frame[col]
    as_float = raw.cast(pl.Float64, strict=False)
    parsed = as_float.cast(pl.Int64, strict=False)
    bad = parsed.is_null() | (as_float != parsed.cast(pl.Float64)).fill_null(True) | (raw == "")
    name = label or col
    if bad.any():
        r = int(bad.arg_max())
        raise InputError(f"{path}: line {r + first_line}, column {name!r}: expected an integer, got {raw[r]!r}")
    low = parsed < lo
    if low.any():
        r = int(low.arg_max())
        what = "a positive id" if lo == 1 else f"an integer >= {lo}"
        raise InputError(f"{path}: line {r + first_line}, column {name!r}: {raw[r]!r} is not {what}")
    return parsed.alias(col)


def _rating(path: Path, frame: pl.DataFrame, col: str, first_line: int) -> pl.Series:
    raw = frame[col]
    parsed = raw.cast(pl.Float64, strict=False)
    bad = parsed.is_null() | ~parsed.is_finite().fill_null(False)
    if bad.any():
        r = int(bad.arg_max())
        raise InputError(f"{path}: line {r + first_line}, column {col!r}: expected a number, got {raw[r]!r}")
    out = (parsed < 1) | (parsed > 5)
    if out.any():
        r = int(out.arg_max())
        raise InputError(f"{path}: line {r + first_line}, column {col!r}: rating {raw[r]!r} is outside 1–5")
    return parsed.alias(col)


def _check_ratings(path: Path, ratings: pl.DataFrame, first_line: int) -> pl.DataFrame:
    """Refuse repeated (user, item) pairs (naming both lines)."""
    dup = ratings.select(pl.struct("user_id", "item_id").is_first_distinct().not_())["user_id"]
    if dup.any():
        r = int(dup.arg_max())
        u, i = ratings["user_id"][r], ratings["item_id"][r]
        first = int(((ratings["user_id"] == u) & (ratings["item_id"] == i)).arg_max())
        raise InputError(f"{path}: line {r + first_line}: user {u} rates item {i} twice (first on line {first + first_line})")
    if ratings.height == 0:
        raise InputError(f"{path}: the file has no ratings")
    return ratings.cast(RATINGS_SCHEMA)


def _check_items(path: Path, items: pl.DataFrame, first_line: int) -> pl.DataFrame:
    dup = items["item_id"].is_duplicated()
    if dup.any():
        r = int(dup.arg_max())
        first = int((items["item_id"] == items["item_id"][r]).arg_max())
        r = int(((items["item_id"] == items["item_id"][r]) & (pl.int_range(items.height, eager=True) > first)).arg_max())
        raise InputError(f"{path}: line {r + first_line}: item {items['item_id'][r]} is listed twice (first on line {first + first_line})")
    empty = items["genres"].list.len() == 0
    if empty.any():
        r = int(empty.arg_max())
        raise InputError(f"{path}: line {r + first_line} (item {items['item_id'][r]}): the item has no genre")
    repeat = items["genres"].list.n_unique() != items["genres"].list.len()
    if repeat.any():
        r = int(repeat.arg_max())
        raise InputError(f"{path}: line {r + first_line} (item {items['item_id'][r]}): a genre is listed twice in {items['genres'][r].to_list()}")
    if items.height == 0:
        raise InputError(f"{path}: the file has no items")
    return items.cast(ITEMS_SCHEMA)


def _check_known_items(ratings: pl.DataFrame, items: pl.DataFrame, ratings_path: Path, items_path: Path, first_line: int) -> None:
    unknown = ~ratings["item_id"].is_in(items["item_id"].implode())
    if unknown.any():
        r = int(unknown.arg_max())
        n = int(ratings.filter(unknown)["item_id"].n_unique())
        raise InputError(f"{ratings_path}: line {r + first_line}: item {ratings['item_id'][r]} is not in {items_path} "
                         f"({n} rated item(s) have no entry there)")


# --------------------------------------------------------------------------- RecBole atomic files
def _atomic(path: Path, header: tuple[str, ...], what: str) -> pl.DataFrame:
    lines = _lines(path)
    if lines.len() == 0:
        raise InputError(f"{path}: empty file (expected the header {chr(9).join(header)!r})")
    got = tuple(x.strip() for x in lines[0].split("\t"))
    if got != header:
        raise InputError(f"{path}: line 1: header {lines[0]!r}, expected {chr(9).join(header)!r} (a RecBole {what} file)")
    return _fields(path, lines.slice(1), "\t", tuple(h.split(":")[0] for h in header), 2, what)


def read_recbole_inter(path: str | os.PathLike) -> pl.DataFrame:
    """RecBole ``ml-100k.inter`` → ratings frame."""
    path = Path(path)
    return _ratings(path, _atomic(path, RECBOLE_INTER_HEADER, ".inter"), 2)


def _ratings(path: Path, raw: pl.DataFrame, first_line: int) -> pl.DataFrame:
    """``user_id, item_id, rating, timestamp`` text columns (data from ``first_line`` on) → checked ratings frame."""
    ratings = pl.DataFrame([
        _int(path, raw, "user_id", first_line), _int(path, raw, "item_id", first_line),
        _rating(path, raw, "rating", first_line), _int(path, raw, "timestamp", first_line, lo=0),
    ])
    return _check_ratings(path, ratings, first_line)


def read_recbole_item(path: str | os.PathLike) -> pl.DataFrame:
    """RecBole ``ml-100k.item`` → items frame (``class`` split on spaces, checked against :data:`ML100K_GENRES`)."""
    path = Path(path)
    raw = _atomic(path, RECBOLE_ITEM_HEADER, ".item")
    genres = raw["class"].str.split(" ").list.eval(pl.element().filter(pl.element() != ""))
    flat = genres.explode()
    unknown = flat.is_not_null() & ~flat.is_in(list(ML100K_GENRES))
    if unknown.any():
        k = int(unknown.arg_max())
        r = int(pl.Series(genres.list.len()).cum_sum().search_sorted(k + 1, side="left"))
        raise InputError(f"{path}: line {r + 2}, column 'class': unknown genre {flat[k]!r} (genres are {', '.join(ML100K_GENRES)})")
    items = pl.DataFrame([_int(path, raw, "item_id", 2), raw["movie_title"].alias("title"), genres.alias("genres")])
    return _check_items(path, items, 2)


# --------------------------------------------------------------------------- GroupLens' folder
def read_grouplens_data(path: str | os.PathLike) -> pl.DataFrame:
    """GroupLens ``u.data`` (``user item rating timestamp``, tab-separated, no header) → ratings frame."""
    path = Path(path)
    raw = _fields(path, _lines(path, "latin-1"), "\t", ("user_id", "item_id", "rating", "timestamp"), 1, "u.data")
    return _ratings(path, raw, 1)


def read_grouplens_item(path: str | os.PathLike) -> pl.DataFrame:
    """GroupLens ``u.item`` (``|``-separated, latin-1; 5 fields then 19 genre flags) → items frame."""
    path = Path(path)
    flags = tuple(f"g{i}" for i in range(len(ML100K_GENRES)))
    raw = _fields(path, _lines(path, "latin-1"), "|", ("item_id", "title", "release", "video_release", "url") + flags, 1, "u.item")
    for i, col in enumerate(flags):
        bad = ~raw[col].is_in(["0", "1"])
        if bad.any():
            r = int(bad.arg_max())
            raise InputError(f"{path}: line {r + 1}, genre flag {i + 1} ({ML100K_GENRES[i]!r}, field {6 + i}): expected 0 or 1, got {raw[col][r]!r}")
    genres = pl.concat_list([pl.when(pl.col(c) == "1").then(pl.lit(g)) for c, g in zip(flags, ML100K_GENRES)]).list.drop_nulls()
    items = pl.DataFrame([_int(path, raw, "item_id", 1), raw["title"]]).with_columns(raw.select(genres.alias("genres")))
    return _check_items(path, items, 1)


# --------------------------------------------------------------------------- ML-100K, either source
def load_ml100k(source: str | os.PathLike = "recbole") -> MovieLens:
    """ML-100K from the RecBole wheel (``"recbole"`` or ``""``) or a GroupLens ``ml-100k/`` folder."""
    if str(source) in ("", "recbole"):
        files = recbole_ml100k_files()
        inter, item = files["ml-100k.inter"], files["ml-100k.item"]
        ratings, items = read_recbole_inter(inter), read_recbole_item(item)
        first, label = 2, f"RecBole {RECBOLE_VERSION} wheel"
    else:
        folder = Path(source)
        try:
            require_dir(folder, "MovieLens-100K folder")
        except InputError as exc:
            raise InputError(f"{exc} (give GroupLens' ml-100k/ folder with u.data and u.item, "
                             f"or 'recbole' for the RecBole wheel's copy)") from None
        inter, item = folder / "u.data", folder / "u.item"
        missing = [p.name for p in (inter, item) if not p.is_file()]
        if missing:
            found = sorted(p.name for p in folder.iterdir())[:20]
            raise InputError(f"{folder}: not a GroupLens ml-100k folder: {', '.join(missing)} missing "
                             f"(found: {', '.join(found) or 'nothing'})")
        ratings, items = read_grouplens_data(inter), read_grouplens_item(item)
        first, label = 1, "GroupLens"
    _check_known_items(ratings, items, inter, item, first)
    return MovieLens(ratings, items, f"MovieLens-100K ({label}: {Path(inter).parent})", (str(inter), str(item)))


def ml100k_files(source: str | os.PathLike = "recbole") -> list[Path]:
    """The raw files :func:`load_ml100k` reads (for cache fingerprints), without reading them."""
    if str(source) in ("", "recbole"):
        return list(recbole_ml100k_files().values())
    folder = Path(source)
    files = [folder / "u.data", folder / "u.item"]
    for f in files:
        if not f.is_file():
            raise InputError(f"{f}: not found (a GroupLens ml-100k folder holds u.data and u.item)")
    return files


# --------------------------------------------------------------------------- ML-20M movies.csv
def read_ml20m_movies(path: str | os.PathLike) -> pl.DataFrame:
    """ML-20M ``movies.csv`` → items frame (see the module docstring for the genre spellings)."""
    path = require_file(path, "movies file")
    raw = read_csv_text(path, ("movieId", "title", "genres"))
    for col in ("movieId", "genres"):
        if raw[col].null_count():
            r = int(raw[col].is_null().arg_max())
            raise InputError(f"{path}: line {r + 2}, column {col!r}: empty value")
    genres = raw["genres"].str.split("|").list.eval(
        pl.element().str.strip_chars().replace(ML20M_GENRE_NAMES).filter(pl.element() != ""))
    items = pl.DataFrame([_int(path, raw, "movieId", 2, label="movieId").alias("item_id"),
                          raw["title"].fill_null("").alias("title"), genres.alias("genres")])
    return _check_items(path, items, 2)


def genre_table(items: pl.DataFrame) -> pl.DataFrame:
    """``item_id, categories`` (the candidate-bundle item table) from an items frame."""
    return items.select(pl.col("item_id").cast(pl.Int64), pl.col("genres").alias("categories"))
