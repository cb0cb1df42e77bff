"""Raw public datasets → the strong-generalisation split of Liang et al. (2018), cached as files.

Loaders (each returns a Polars frame ``user, item, rating`` of integer ids and a float rating):

* :func:`read_ml20m` — MovieLens-20M ``ratings.csv`` (``userId,movieId,rating,timestamp``);
* :func:`read_netflix` — Netflix Prize ``training_set/mv_*.txt`` (a folder) or
  ``combined_data_*.txt`` files: blocks ``MovieID:`` followed by ``CustomerID,Rating,Date`` lines;
* :func:`read_msd` — Million Song Dataset taste profile ``train_triplets.txt``
  (``user<TAB>song<TAB>play_count``; user and song are strings, mapped to integer codes);
* :func:`read_ml100k` — MovieLens-100K from the RecBole wheel (path ``""``/``recbole``) or
  GroupLens' ``ml-100k/`` folder (:mod:`steps.movielens`), with a ``timestamp`` column too.

:func:`split_strong_generalisation` then binarises (rating ≥ ``min_rating``), drops repeated pairs,
keeps items with ≥ ``min_item_users`` users and then users with ≥ ``min_user_items`` items, shuffles
the users with a seeded permutation and holds out ``heldout_users`` users for validation and as many
for test. The item catalogue is the items of the training users; held-out users keep only those
items, and each with ≥ 5 items has ``test_fraction`` (20 %) of them, drawn at random, set aside to
evaluate on — the rest is folded in. Matrices are ``scipy.sparse`` CSR files.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from steps.errors import InputError
from steps.seeding import rng_for
from steps.storage import FileRef, atomic_export_dir, file_ref, localize, localize_input, localize_tree
from steps.tail.config import DatasetSpec, Protocol
from steps.tail.synthetic import write_synthetic_ratings
from steps.validate import Field, check_field, fields_table, read_csv_text, require_dir, require_file
from steps.uncertainty import UNITS_DIGEST, units_digest

MATRICES = ("train", "valid_tr", "valid_te", "test_tr", "test_te")
CACHE_VERSION = 5  # bump when the cached split changes (fold-in draw, test user ids, item genres, range checks)
INT32_MAX = 2**31 - 1

#: Valid range of every field each reader parses (what is refused; README), one table per format.
ML20M_FIELDS = fields_table([
    Field("userId", "int64", 1, INT32_MAX, "user ids"),
    Field("movieId", "int64", 1, INT32_MAX, "movie ids"),
    Field("rating", "float64", 0.5, 5.0, "MovieLens half-star ratings"),
])
NETFLIX_FIELDS = fields_table([
    Field("MovieID", "int64", 1, INT32_MAX, "movie ids"),
    Field("CustomerID", "int64", 1, INT32_MAX, "customer ids"),
    Field("Rating", "float64", 1.0, 5.0, "Netflix star ratings"),
])
MSD_FIELDS = fields_table([
    Field("plays", "int64", 1, None, "play counts (a triplet records at least one play)"),
])


# --------------------------------------------------------------------------- loaders
def _first_bad(raw: pl.Series, parsed: pl.Series) -> int | None:
    bad = parsed.is_null() & raw.is_not_null() | raw.is_null()
    return int(bad.arg_max()) if bad.any() else None


def _numeric(path: Path, frame: pl.DataFrame, column: str, dtype, line_of_row, field: Field | None = None) -> pl.Series:
    """Cast a string column to ``dtype`` and check it against ``field``'s range; an InputError
    names the file, column, line and value."""
    raw = frame[column]
    parsed = raw.str.strip_chars().cast(dtype, strict=False)
    if dtype == pl.Float64:  # NaN / inf are not ratings either
        parsed = pl.select(pl.when(parsed.is_finite()).then(parsed)).to_series().alias(column)
    row = _first_bad(raw, parsed)
    if row is not None:
        raise InputError(f"{path}: column {column!r} holds a non-numeric value {raw[row]!r} on line {line_of_row(row)}")
    if field is not None:
        check_field(parsed.to_numpy(), field, path, lambda r: f"line {line_of_row(r)} ({raw[r]!r})")
    return parsed


def read_ml20m(path: str | os.PathLike) -> pl.DataFrame:
    """MovieLens-20M ``ratings.csv``: ``user, item, rating``."""
    path = require_file(path, "ratings file")
    frame = read_csv_text(path, ("userId", "movieId", "rating"))
    if frame.height == 0:
        raise InputError(f"{path}: the file has no ratings")
    line = lambda r: r + 2  # noqa: E731 — header is line 1
    return pl.DataFrame({
        "user": _numeric(path, frame, "userId", pl.Int64, line, ML20M_FIELDS["userId"]),
        "item": _numeric(path, frame, "movieId", pl.Int64, line, ML20M_FIELDS["movieId"]),
        "rating": _numeric(path, frame, "rating", pl.Float64, line, ML20M_FIELDS["rating"]),
    })


def _netflix_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("mv_*.txt")) or sorted(path.glob("combined_data_*.txt"))
        if not files:
            raise InputError(f"{path}: no mv_*.txt or combined_data_*.txt files in this folder")
        return files
    if path.is_file():
        return [path]
    if path.is_symlink() or path.exists():
        require_dir(path, "Netflix Prize file or folder")  # names a symlink loop
    raise InputError(f"{path}: Netflix Prize file or folder not found")


def read_netflix(path: str | os.PathLike) -> pl.DataFrame:
    """Netflix Prize ratings: ``user, item, rating`` from every ``mv_*.txt`` / ``combined_data_*.txt``."""
    frames = []
    for f in _netflix_files(Path(path)):
        try:
            # a 4th column catches lines with extra fields (longer lines are cut after it)
            raw = pl.read_csv(f, has_header=False, schema={"a": pl.String, "b": pl.String, "c": pl.String, "d": pl.String},
                              truncate_ragged_lines=True, missing_columns="insert")
        except Exception as exc:
            raise InputError(f"{f}: not a readable Netflix Prize ratings file ({exc})") from exc
        if raw.height == 0:
            continue
        a = raw["a"].str.strip_chars()
        is_header = a.str.ends_with(":")
        if not bool(is_header[0]):
            raise InputError(f"{f}: line 1 must be a 'MovieID:' header, found {raw['a'][0]!r}")
        extra = pl.select(pl.when(is_header).then(raw["b"]).otherwise(raw["d"])).to_series()
        if extra.is_not_null().any():
            r = int(extra.is_not_null().arg_max())
            expected = "'MovieID:' alone" if is_header[r] else "CustomerID,Rating,Date"
            raise InputError(f"{f}: line {r + 1} has an extra field {extra[r]!r} (expected {expected})")
        headers = pl.DataFrame({"MovieID": a.filter(is_header).str.strip_suffix(":")})
        movie = _numeric(f, headers, "MovieID", pl.Int64, lambda r, idx=np.flatnonzero(is_header.to_numpy()): int(idx[r]) + 1,
                         NETFLIX_FIELDS["MovieID"])
        block = is_header.cast(pl.Int64).cum_sum() - 1
        body = ~is_header
        rows = pl.DataFrame({"CustomerID": raw["a"], "Rating": raw["b"], "block": block}).filter(body)
        line_idx = np.flatnonzero(body.to_numpy())
        line = lambda r, idx=line_idx: int(idx[r]) + 1  # noqa: E731
        if rows.height:
            missing = rows["Rating"].is_null()
            if missing.any():
                r = int(missing.arg_max())
                raise InputError(f"{f}: line {line(r)} has no Rating column: {rows['CustomerID'][r]!r} (expected CustomerID,Rating,Date)")
        frames.append(pl.DataFrame({
            "user": _numeric(f, rows, "CustomerID", pl.Int64, line, NETFLIX_FIELDS["CustomerID"]),
            "item": movie.gather(rows["block"]).alias("item"),
            "rating": _numeric(f, rows, "Rating", pl.Float64, line, NETFLIX_FIELDS["Rating"]),
        }))
    if not frames or sum(x.height for x in frames) == 0:
        raise InputError(f"{path}: the Netflix Prize files hold no ratings")
    return pl.concat(frames)


def read_msd(path: str | os.PathLike) -> pl.DataFrame:
    """MSD taste profile ``train_triplets.txt``: ``user, item, rating`` (= play count); string ids
    become integer codes in order of first appearance."""
    path = Path(path)
    if not path.is_file():
        require_file(path, "train_triplets.txt")  # a symlink loop, a folder, ...
        raise InputError(f"{path}: train_triplets.txt not found")
    try:
        raw = pl.read_csv(path, separator="\t", has_header=False, new_columns=["user", "song", "plays"], infer_schema=False)
    except Exception as exc:
        raise InputError(f"{path}: not a readable tab-separated triplets file ({exc})") from exc
    if raw.height == 0:
        raise InputError(f"{path}: the file has no triplets")
    for col in ("user", "song"):
        if raw[col].null_count():
            r = int(raw[col].is_null().arg_max())
            raise InputError(f"{path}: line {r + 1} has no {col} (expected user<TAB>song<TAB>play_count)")
    plays = _numeric(path, raw, "plays", pl.Int64, lambda r: r + 1, MSD_FIELDS["plays"])
    return pl.DataFrame({
        "user": raw["user"].cast(pl.Categorical).to_physical().cast(pl.Int64),
        "item": raw["song"].cast(pl.Categorical).to_physical().cast(pl.Int64),
        "rating": plays.cast(pl.Float64),
    })


def read_ml100k(path: str | os.PathLike) -> pl.DataFrame:
    """MovieLens-100K: ``user, item, rating, timestamp`` (``path``: ``""``/``recbole`` or a GroupLens folder)."""
    from steps.movielens import load_ml100k

    return load_ml100k(str(path) or "recbole").ratings.rename({"user_id": "user", "item_id": "item"})


READERS = {"ml20m": read_ml20m, "netflix": read_netflix, "msd": read_msd, "synthetic": read_ml20m, "ml100k": read_ml100k}


# --------------------------------------------------------------------------- protocol
@dataclass(frozen=True)
class Split:
    """The five matrices of a split (in memory) plus the item ids of its columns."""

    train: sp.csr_matrix
    valid_tr: sp.csr_matrix
    valid_te: sp.csr_matrix
    test_tr: sp.csr_matrix
    test_te: sp.csr_matrix
    item_ids: np.ndarray
    stats: dict = field(default_factory=dict)
    test_user_ids: np.ndarray | None = None  # the dataset's user id of each test_tr/test_te row


def _csr(users: np.ndarray, items: np.ndarray, n_rows: int, n_cols: int) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_rows, n_cols))
    m.sum_duplicates()
    m.sort_indices()
    return m


def split_strong_generalisation(ratings: pl.DataFrame, protocol: Protocol, seed: int, source: str = "data",
                                key: str = "") -> Split:
    """Apply the protocol of the module docstring to ``user, item, rating`` rows.

    ``source`` names the data in error messages; the random streams are keyed by ``seed`` and
    ``key`` (the dataset's name), never by a path, so the split does not depend on where the file is.
    """
    n_raw = ratings.height
    if ratings["rating"].null_count():
        raise InputError(f"{source}: column 'rating' has missing values")
    pos = ratings.filter(pl.col("rating") >= protocol.min_rating).select("user", "item").unique()
    if pos.height == 0:
        raise InputError(f"{source}: no interaction has rating >= {protocol.min_rating:g} (protocol.min_rating)")
    if protocol.min_item_users > 0:
        pos = pos.filter(pl.len().over("item") >= protocol.min_item_users)
        if pos.height == 0:
            raise InputError(f"{source}: no item has >= {protocol.min_item_users} users (protocol.min_item_users); every item vanished")
    pos = pos.filter(pl.len().over("user") >= protocol.min_user_items)
    users = np.sort(pos["user"].unique().to_numpy())
    h = protocol.heldout_users
    if len(users) <= 2 * h:
        raise InputError(
            f"{source}: only {len(users)} users remain after filtering (min_user_items={protocol.min_user_items}, "
            f"min_item_users={protocol.min_item_users}), but protocol.heldout_users={h} needs more than {2 * h}"
        )
    perm = users[rng_for(seed, "tail-split", key).permutation(len(users))]
    role = pl.DataFrame({"user": perm, "role": np.repeat(np.array([0, 1, 2], dtype=np.int8), [len(users) - 2 * h, h, h]),
                         "row": np.concatenate([np.arange(len(users) - 2 * h), np.arange(h), np.arange(h)])})
    pos = pos.join(role, on="user", how="inner")
    train = pos.filter(pl.col("role") == 0)
    item_ids = np.sort(train["item"].unique().to_numpy())
    n_items = len(item_ids)
    col = pl.DataFrame({"item": item_ids, "col": np.arange(n_items)})
    pos = pos.join(col, on="item", how="inner")  # held-out users keep only training items
    out: dict[str, sp.csr_matrix] = {}
    tr = pos.filter(pl.col("role") == 0)
    out["train"] = _csr(tr["row"].to_numpy(), tr["col"].to_numpy(), len(users) - 2 * h, n_items)
    stats = {"raw_rows": n_raw, "users": int(len(users)), "items": int(n_items), "train_users": len(users) - 2 * h,
             "train_interactions": int(out["train"].nnz)}
    for role_id, name in ((1, "valid"), (2, "test")):
        part = pos.filter(pl.col("role") == role_id).sort("row", "col")
        out[f"{name}_tr"], out[f"{name}_te"], evaluable, n_heldout = _fold_in(
            part["row"].to_numpy(), part["col"].to_numpy(), h, n_items, protocol,
            rng_for(seed, "tail-fold-in", key, name))
        if evaluable == 0:
            raise InputError(
                f"{source}: every {name} user has an empty held-out set (test_fraction={protocol.test_fraction}, "
                f"min_items_to_split={protocol.min_items_to_split}); nothing can be evaluated"
            )
        stats[f"{name}_users_evaluable"] = evaluable
        stats[f"{name}_heldout_interactions"] = n_heldout
    # which users are evaluated, in which order, with which held-out items (recalign compare pairs on it)
    stats[UNITS_DIGEST] = units_digest(perm, *(a for n in ("valid_te", "test_te") for a in (out[n].indptr, out[n].indices)))
    return Split(item_ids=item_ids, stats=stats, test_user_ids=perm[len(users) - h:], **out)


def _fold_in(rows: np.ndarray, cols: np.ndarray, h: int, n_items: int, protocol: Protocol, rng: np.random.Generator):
    """Held-out users' interactions split into fold-in and held-out parts, in a seeded random order
    per user: (fold-in CSR, held-out CSR, users with both parts non-empty, held-out interactions)."""
    draw = rng.random(len(rows))
    order = np.lexsort((draw, rows))
    rows, cols = rows[order], cols[order]
    n_per = np.bincount(rows, minlength=h)
    start = np.concatenate([[0], np.cumsum(n_per)[:-1]])
    rank = np.arange(len(rows)) - np.repeat(start, n_per)
    n_te = np.where(n_per >= protocol.min_items_to_split, (protocol.test_fraction * n_per).astype(np.int64), 0)
    is_te = rank < np.repeat(n_te, n_per)
    evaluable = int(((n_te > 0) & (n_per - n_te > 0)).sum())
    return (_csr(rows[~is_te], cols[~is_te], h, n_items), _csr(rows[is_te], cols[is_te], h, n_items),
            evaluable, int(is_te.sum()))


# --------------------------------------------------------------------------- cache
@dataclass(frozen=True)
class PreparedData:
    """A split on disk: CSR ``.npz`` files with checksums, and the small per-item arrays."""

    name: str
    source: str
    raw_path: str
    cache_dir: str
    files: dict  # matrix name -> FileRef
    item_ids: np.ndarray
    item_counts: np.ndarray  # training users per item
    n_train_users: int
    stats: dict
    test_user_ids: np.ndarray | None = None  # user id of each test row (candidate bundles)
    items: FileRef | None = None  # item_id, categories (datasets with genres; see steps.tail.candidates)
    test_times: FileRef | None = None  # user, item, timestamp of the test users' ratings (ML-100K)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def load(self, name: str) -> sp.csr_matrix:
        if name not in self.files:
            raise InputError(f"{self.name}: no matrix {name!r}; matrices are {list(self.files)}")
        ref: FileRef = localize(self.files[name])
        ref.verify()
        return sp.load_npz(ref.path).tocsr()


def _fingerprint(spec: DatasetSpec, seed: int, raw_paths: list[Path]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "source": spec.source, "protocol": asdict(spec.protocol), "seed": seed,
                         "synthetic": asdict(spec.synthetic) if spec.source == "synthetic" else None}, sort_keys=True).encode())
    for p in raw_paths:
        st = p.stat()
        h.update(f"{p.absolute()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _raw_path(spec: DatasetSpec) -> Path:
    """The dataset's file (or Netflix folder) on local disk (``s3://`` inputs are downloaded)."""
    if spec.source == "ml100k":
        from steps.movielens import recbole_ml100k_files

        if spec.path in ("", "recbole"):
            return recbole_ml100k_files()["ml-100k.inter"].parent
        return Path(localize_tree(spec.path))
    return Path(localize_tree(spec.path) if spec.source == "netflix" else localize_input(spec.path))


def _raw_files(spec: DatasetSpec, p: Path) -> list[Path]:
    if spec.source == "netflix":
        return _netflix_files(p)
    if spec.source == "ml100k":
        from steps.movielens import ml100k_files

        return ml100k_files("recbole" if spec.path in ("", "recbole") else p)
    if spec.source == "ml20m" and spec.items_path:
        items = Path(localize_input(spec.items_path))
        if not items.is_file():
            raise InputError(f"{items}: movies file not found (datasets[{spec.name}].items_path)")
        if not p.is_file():
            raise InputError(f"{p}: {spec.source} file not found (datasets[{spec.name}].path)")
        return [p, items]
    if not p.is_file():
        if p.is_symlink() or p.exists():
            require_file(p, f"{spec.source} file (datasets[{spec.name}].path)")
        raise InputError(f"{p}: {spec.source} file not found (datasets[{spec.name}].path)")
    return [p]


def prepare_dataset(spec: DatasetSpec, seed: int, cache_root: str | os.PathLike) -> PreparedData:
    """Load (or synthesise), split and cache one dataset under ``cache_root``; a second call with
    the same inputs, protocol and seed reuses the cached files. ``spec.path`` may be an ``s3://`` URI."""
    cache_root = Path(cache_root)
    if spec.source == "synthetic":
        raw_dir = cache_root / "synthetic"
        tag = hashlib.sha256(json.dumps(asdict(spec.synthetic), sort_keys=True).encode()).hexdigest()[:16]
        raw_path = raw_dir / f"ratings_{tag}.csv"
        if not raw_path.exists():
            write_synthetic_ratings(raw_path, spec.synthetic)
        raw_files = [raw_path]
    else:
        raw_path = _raw_path(spec)
        raw_files = _raw_files(spec, raw_path)
    key = _fingerprint(spec, seed, raw_files)
    cache = cache_root / f"{spec.name}-{key}"
    manifest = cache / "manifest.json"
    if not manifest.exists():
        from steps.tail.candidates import ITEMS_FILE, TEST_USERS_FILE, TIMES_FILE, dataset_items, rating_times

        local = spec if spec.source == "synthetic" else replace(  # the files as read here (s3:// inputs downloaded)
            spec, path="recbole" if spec.source == "ml100k" and spec.path in ("", "recbole") else str(raw_path),
            items_path=str(raw_files[-1]) if spec.items_path else "")
        ratings = READERS[spec.source](local.path if spec.source == "ml100k" else raw_path)
        split = split_strong_generalisation(ratings, spec.protocol, seed, source=str(raw_path), key=spec.name)
        times = rating_times(ratings, split.test_user_ids)
        del ratings
        items = dataset_items(local)
        with atomic_export_dir(cache) as tmp:
            for name in MATRICES:
                sp.save_npz(tmp / f"{name}.npz", getattr(split, name), compressed=False)
            np.save(tmp / "item_ids.npy", split.item_ids)
            np.save(tmp / TEST_USERS_FILE, split.test_user_ids)
            if items is not None:
                items.write_parquet(tmp / ITEMS_FILE)
            if times is not None:
                times.write_parquet(tmp / TIMES_FILE)
            (tmp / "manifest.json").write_text(json.dumps({"stats": split.stats, "raw": str(raw_path)}, indent=1))
    meta = json.loads(manifest.read_text())
    files = {name: file_ref(cache / f"{name}.npz") for name in MATRICES}
    train = sp.load_npz(files["train"].path).tocsc()
    counts = np.diff(train.indptr).astype(np.int64)
    side = {k: file_ref(cache / f) for k, f in (("items", "items.parquet"), ("test_times", "test_times.parquet")) if (cache / f).exists()}
    return PreparedData(
        name=spec.name, source=spec.source, raw_path=str(Path(raw_path).absolute()), cache_dir=str(cache), files=files,
        item_ids=np.load(cache / "item_ids.npy"), item_counts=counts, n_train_users=int(train.shape[0]), stats=meta["stats"],
        test_user_ids=np.load(cache / "test_user_ids.npy"), **side,
    )
