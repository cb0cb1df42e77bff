"""Sequential interaction data in ReChorus' format, MovieLens-1M conversion, leave-one-out split.

ReChorus' sequential format is a folder with three tab-separated files with a header:

* ``train.csv`` — ``user_id, item_id, time``;
* ``dev.csv`` / ``test.csv`` — the same plus ``neg_items``, a list written as ``[3, 17, 52]``
  (sampled items the user never interacted with, ranked against the positive);
* optionally ``item_meta.csv`` — ``item_id`` plus item features named ``i_*``: the feature of
  feature-level attributions is the set of 0/1 columns (one multi-valued feature, e.g. a film's
  genres ``i_Action``, ``i_Comedy``, … as ReChorus writes MovieLens), else the first ``i_*``
  column (categorical, e.g. ``i_genre``), or the column the config names.

Ids are positive integers; item id 0 is the padding item. The catalogue is every item id up to
the largest one the folder names — positives, negatives, ``item_meta.csv`` (``n_items = max id +
1``, as in ReChorus); a loaded checkpoint may extend it to its own item count. A user's sequence is their train
rows by time, then their dev row(s), then their test row(s): the history of a dev/test row is
everything before it (at most ``history_max`` items, the most recent ones).

Everything here is vectorised over rows (Polars expressions, NumPy index arithmetic).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from steps.errors import InputError
from steps.seeding import rng_for
from steps.storage import staged_dir
from steps.tables import lists_as_text
from steps.uncertainty import UNITS_DIGEST, units_digest
from steps.validate import Field, check_field, fields_table, require_dir, require_file

USER = "user_id"
ITEM = "item_id"
TIME = "time"
NEG = "neg_items"
SPLIT = "split"
FEATURE = "feature"
SPLITS = ("train", "dev", "test")
PADDING_ITEM = 0
INT32_MAX = 2**31 - 1

#: Valid ranges of ReChorus' fields (what is refused; README). Ids are positive and fit in i32
#: (item ids index the embedding table; user ids build int64 keys ``user * n_items + item``).
FIELDS = fields_table([
    Field(USER, "int64", 1, INT32_MAX, "user ids"),
    Field(ITEM, "int64", 1, INT32_MAX, "item ids"),
    Field(TIME, "int64", None, None, "any integer"),
    Field(NEG, "int64", 1, INT32_MAX, "item ids"),
])
#: The catalogue is 1..largest item id (ReChorus numbers items densely): at most this many times
#: the distinct item ids the files hold, plus :data:`CATALOGUE_SLACK` — beyond that an id is
#: taken for a typo or a foreign numbering, not sized into an embedding table.
CATALOGUE_FACTOR = 10
CATALOGUE_SLACK = 1000
#: MovieLens-1M ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``).
ML1M_FIELDS = fields_table([
    Field("user", "int64", 1, INT32_MAX, "UserID"),
    Field("movie", "int64", 1, INT32_MAX, "MovieID"),
    Field("rating", "int64", 1, 5, "MovieLens-1M star ratings"),
    Field(TIME, "int64", 0, None, "Unix time"),
])


# --------------------------------------------------------------------------- reading helpers
def _row_hint(row: int) -> str:
    return f"row {row} (line {row + 2})"


def _read_text_table(path: Path) -> pl.DataFrame:
    """A tab-separated file with a header, every column as text (types are checked afterwards)."""
    require_file(path)
    try:
        return pl.read_csv(path, separator="\t", infer_schema=False, quote_char=None)
    except Exception as exc:  # polars raises ComputeError / NoDataError for ragged or empty files
        raise InputError(f"{path}: not a readable tab-separated file with a header ({exc})") from exc


def _int_column(df: pl.DataFrame, col: str, path: Path, lo: int | None = None) -> pl.Series:
    raw = df[col]
    values = raw.str.strip_chars().cast(pl.Int64, strict=False)
    bad = values.is_null()
    if bad.any():
        row = int(bad.arg_max())
        raise InputError(f"{path}: column {col!r}, {_row_hint(row)}: expected an integer, got {raw[row]!r}")
    if lo is not None and (values < lo).any():
        row = int((values < lo).arg_max())
        raise InputError(f"{path}: column {col!r}, {_row_hint(row)}: {values[row]} is not a valid id (ids are >= {lo})")
    if col in FIELDS:
        check_field(values.to_numpy(), FIELDS[col], path, _row_hint)
    return values


def _neg_items_column(df: pl.DataFrame, path: Path) -> pl.Series:
    raw = df[NEG]
    inner = raw.str.strip_chars().str.strip_prefix("[").str.strip_suffix("]")
    parts = inner.str.split(",").list.eval(pl.element().str.strip_chars().cast(pl.Int64, strict=False))
    bad = (parts.list.len() == 0) | parts.list.eval(pl.element().is_null()).list.any() | raw.is_null()
    if bad.any():
        row = int(bad.arg_max())
        raise InputError(f"{path}: column {NEG!r}, {_row_hint(row)}: expected a list of item ids like [3, 17], got {raw[row]!r}")
    lengths = parts.list.len()
    if lengths.n_unique() > 1:
        row = int((lengths != lengths[0]).arg_max())
        raise InputError(
            f"{path}: column {NEG!r}, {_row_hint(row)}: {lengths[row]} negatives, but row 0 has {lengths[0]} "
            "(every row needs the same number)"
        )
    low = parts.list.min() < 1
    if low.any():
        row = int(low.arg_max())
        raise InputError(f"{path}: column {NEG!r}, {_row_hint(row)}: item id {parts[row].min()} is not a valid id (ids are >= 1)")
    flat = parts.explode().to_numpy()
    check_field(flat, FIELDS[NEG], path, _row_hint, lambda i: i // int(lengths[0]))
    repeated = parts.list.n_unique() != lengths
    if repeated.any():
        row = int(repeated.arg_max())
        values = parts[row].to_list()
        later = next(j for j, v in enumerate(values) if v in values[:j])
        first = values.index(values[later])
        raise InputError(
            f"{path}: column {NEG!r}, {_row_hint(row)}: item {values[later]} is listed twice (positions {first} and "
            f"{later}); the negatives of a row must be distinct"
        )
    return parts.rename(NEG)


def read_split_file(path: str | os.PathLike, split: str) -> pl.DataFrame:
    """One ReChorus file, checked: ``user_id, item_id, time`` (+ ``neg_items`` for dev/test)."""
    path = Path(path)
    df = _read_text_table(path)
    need = [USER, ITEM, TIME] + ([NEG] if split != "train" else [])
    for col in need:
        if col not in df.columns:
            raise InputError(f"{path}: missing column {col!r} (found: {', '.join(df.columns)}; the file must be tab-separated)")
    if df.height == 0:
        raise InputError(f"{path}: no rows")
    for col in (USER, ITEM, TIME):
        if df[col].null_count():
            row = int(df[col].is_null().arg_max())
            raise InputError(f"{path}: column {col!r}, {_row_hint(row)}: empty value")
    out = pl.DataFrame({
        USER: _int_column(df, USER, path, lo=1),
        ITEM: _int_column(df, ITEM, path, lo=1),
        TIME: _int_column(df, TIME, path),
    })
    if split != "train":
        negs = _neg_items_column(df, path)
        clash = pl.DataFrame({"n": negs, "i": out[ITEM]}).select(pl.col("n").list.contains(pl.col("i")))["n"]
        if clash.any():
            row = int(clash.arg_max())
            raise InputError(f"{path}: column {NEG!r}, {_row_hint(row)}: the negatives contain the positive item {out[ITEM][row]}")
        out = out.with_columns(negs)
    return out.with_columns(pl.lit(split).alias(SPLIT))


# --------------------------------------------------------------------------- the dataset
@dataclass(frozen=True)
class SeqData:
    """Validated sequential data: one table of every interaction with its split.

    ``interactions``: ``user_id, item_id, time, split, neg_items`` (``neg_items`` null on train
    rows), ordered by user, then split (train, dev, test), then time (file order breaks ties).
    """

    interactions: pl.DataFrame
    n_items: int
    item_features: pl.DataFrame | None = None  # item_id, feature (text); several rows for a multi-valued item
    feature_name: str | None = None
    source: str = ""
    feature_columns: tuple[str, ...] = ()  # the item_meta.csv column(s) the feature comes from
    multi_hot: bool = False  # the feature is a set of 0/1 columns (an item may hold several values)

    @property
    def n_users(self) -> int:
        return int(self.interactions[USER].n_unique())

    def split(self, name: str) -> pl.DataFrame:
        return self.interactions.filter(pl.col(SPLIT) == name)

    def summary(self) -> dict:
        counts = dict(self.interactions.group_by(SPLIT).len().iter_rows())
        return {
            "source": self.source,
            "users": self.n_users,
            "items": self.n_items - 1,
            "interactions": self.interactions.height,
            "train_rows": int(counts.get("train", 0)),
            "dev_rows": int(counts.get("dev", 0)),
            "test_rows": int(counts.get("test", 0)),
            "item_feature": self.feature_name,
            "item_feature_columns": list(self.feature_columns),
            "item_feature_multi_hot": self.multi_hot,
            # the instances in order (users, items, times, splits): recalign compare pairs two runs only on equal digests
            UNITS_DIGEST: units_digest(*(self.interactions[c].to_numpy() for c in (USER, ITEM, TIME)),
                                       self.interactions[SPLIT].cast(pl.String).to_numpy().astype(str)),
        }


def order_interactions(df: pl.DataFrame) -> pl.DataFrame:
    """Sort by user, split (train < dev < test), time; equal times keep their file order."""
    split_rank = pl.col(SPLIT).replace_strict({s: i for i, s in enumerate(SPLITS)}, return_dtype=pl.Int8)
    return df.sort([pl.col(USER), split_rank, pl.col(TIME)], maintain_order=True)


def check_sequences(interactions: pl.DataFrame, n_items: int, where: str) -> None:
    """Every dev/test row needs a non-empty history; a user's dev/test rows may not precede their
    train (or, for test, dev) rows in time; negatives must lie in the catalogue.

    ``interactions`` is ordered by :func:`order_interactions`.
    """
    first = interactions.group_by(USER, maintain_order=True).agg(pl.col(SPLIT).first(), pl.col(ITEM).first())
    no_history = first.filter(pl.col(SPLIT) != "train")
    if no_history.height:
        u = no_history.row(0, named=True)
        raise InputError(
            f"{where}: user {u[USER]} has an empty history: their first interaction (item {u[ITEM]}) is in "
            f"{u[SPLIT]}.csv and train.csv has none before it"
        )
    # within a split rows are sorted by time, so a time that goes back marks a later split's row
    # that happened before an earlier split's row: its history would hold events from its future
    earlier = interactions.with_columns(
        pl.col(TIME).shift(1).over(USER).alias("_prev_time"), pl.col(SPLIT).shift(1).over(USER).alias("_prev_split")
    ).filter(pl.col(TIME) < pl.col("_prev_time"))
    if earlier.height:
        r = earlier.row(0, named=True)
        raise InputError(
            f"{where}: user {r[USER]}: {r[SPLIT]}.csv has an interaction (item {r[ITEM]}) at time {r[TIME]}, before "
            f"their {r['_prev_split']}.csv interaction at time {r['_prev_time']}; each user's train, dev and test rows "
            "must follow each other in time (leave-one-out: dev and test are the last events)"
        )
    if NEG in interactions.columns:
        too_big = interactions.filter(pl.col(NEG).list.max() >= n_items)
        if too_big.height:
            r = too_big.row(0, named=True)
            bad = max(r[NEG])
            raise InputError(
                f"{where}: {r[SPLIT]}.csv, user {r[USER]}: neg_items holds unknown item id {bad} "
                f"(the catalogue's largest item id is {n_items - 1})"
            )


@dataclass(frozen=True)
class ItemMeta:
    """The item feature read from ``item_meta.csv`` (see :func:`read_item_meta`)."""

    features: pl.DataFrame  # item_id, feature (text): one row per value; one null row for an item without any
    name: str  # the column, or the 0/1 columns joined with '|'
    columns: tuple[str, ...]  # the columns used
    multi_hot: bool  # the 0/1 columns as one multi-valued feature
    unused: tuple[str, ...]  # i_* columns not used


def _is_zero_one(col: pl.Series) -> bool:
    v = col.str.strip_chars()
    return bool(v.null_count() == 0 and v.is_in(["0", "1"]).all())


def read_item_meta(path: str | os.PathLike, item_feature: str = "auto") -> ItemMeta:
    """``item_meta.csv``: ``item_id`` and the item feature.

    ``item_feature``: ``auto`` takes the ``i_*`` columns holding only 0 and 1 (ReChorus writes a
    film's genres that way: ``i_Action``, ``i_Comedy``, …) as one multi-valued feature whose values
    are the column names without ``i_``; without such columns, the first other ``i_*`` column
    (categorical, as text). A column name takes that column, as categorical values.
    """
    path = Path(path)
    df = _read_text_table(path)
    if ITEM not in df.columns:
        raise InputError(f"{path}: missing column {ITEM!r} (found: {', '.join(df.columns)})")
    candidates = [c for c in df.columns if c.startswith("i_")]
    if not candidates:
        raise InputError(f"{path}: no item feature column (feature columns are named i_*, found: {', '.join(df.columns)})")
    items = _int_column(df, ITEM, path, lo=1)
    dup = ~items.is_first_distinct()  # the repeat, not its first occurrence
    if dup.any():
        row = int(dup.arg_max())
        raise InputError(f"{path}: column {ITEM!r}, {_row_hint(row)}: item id {items[row]} appears more than once")
    if item_feature != "auto":
        if item_feature not in candidates:
            raise InputError(f"{path}: item_feature {item_feature!r} is not a column (i_* columns: {', '.join(candidates)})")
        columns, multi_hot = (item_feature,), False
    else:
        zero_one = tuple(c for c in candidates if _is_zero_one(df[c]))
        columns, multi_hot = (zero_one, True) if zero_one else ((candidates[0],), False)
    unused = tuple(c for c in candidates if c not in columns)
    if not multi_hot:
        feats = pl.DataFrame({ITEM: items, FEATURE: df[columns[0]].str.strip_chars()})
        return ItemMeta(feats, columns[0], columns, False, unused)
    hot = pl.DataFrame({ITEM: items}).with_columns(
        pl.concat_list([pl.when(df[c].str.strip_chars() == "1").then(pl.lit(c.removeprefix("i_"))) for c in columns])
        .list.drop_nulls().alias(FEATURE)
    )
    # items without any value keep one null row (they are still items of the catalogue)
    feats = hot.with_columns(
        pl.when(pl.col(FEATURE).list.len() == 0).then(pl.lit([None], dtype=pl.List(pl.String))).otherwise(pl.col(FEATURE))
        .alias(FEATURE)
    ).explode(FEATURE)
    return ItemMeta(feats, "|".join(columns), columns, True, unused)


def read_rechorus(folder: str | os.PathLike, item_feature: str = "auto") -> SeqData:
    """Read and check a ReChorus sequential dataset folder (see the module docstring).

    The catalogue is every item id the folder names: positives, negatives and ``item_meta.csv``
    (a folder whose rows stop short of the largest item id still loads when the negatives or the
    metadata name it). ``item_feature``: see :func:`read_item_meta`.
    """
    folder = Path(folder)
    try:
        require_dir(folder, "data folder")
    except InputError as exc:
        raise InputError(f"{exc} (expected train.csv, dev.csv, test.csv inside)") from None
    parts = [read_split_file(folder / f"{s}.csv", s) for s in SPLITS]
    neg_widths = {s: p[NEG].list.len()[0] for s, p in zip(SPLITS[1:], parts[1:])}
    schema = {USER: pl.Int64, ITEM: pl.Int64, TIME: pl.Int64, SPLIT: pl.String, NEG: pl.List(pl.Int64)}
    parts[0] = parts[0].with_columns(pl.lit(None, dtype=pl.List(pl.Int64)).alias(NEG))
    interactions = order_interactions(pl.concat([p.select(list(schema)).cast(schema) for p in parts]))
    meta = None
    if (folder / "item_meta.csv").exists() or (folder / "item_meta.csv").is_symlink():  # a broken link is an error
        meta = read_item_meta(folder / "item_meta.csv", item_feature)
    elif item_feature != "auto":
        raise InputError(f"{folder}: item_feature {item_feature!r} is set but the folder has no item_meta.csv")
    named = [int(interactions[ITEM].max()), int(interactions[NEG].list.max().max())]
    if meta is not None:
        named.append(int(meta.features[ITEM].max()))
    n_items = max(named) + 1
    check_catalogue(interactions, n_items, folder, meta.features[ITEM] if meta is not None else None)
    check_sequences(interactions, n_items, str(folder))
    if neg_widths["dev"] != neg_widths["test"]:
        raise InputError(f"{folder}: dev.csv has {neg_widths['dev']} negatives per row but test.csv has {neg_widths['test']}")
    if meta is None:
        return SeqData(interactions, n_items, source=str(folder))
    return SeqData(interactions, n_items, meta.features, meta.name, str(folder), meta.columns, meta.multi_hot)


def where_item_is_named(data: SeqData, item: int) -> str:
    """Where the data names ``item`` first (for error messages): split file and user, or item_meta.csv."""
    pos = data.interactions.filter(pl.col(ITEM) == item)
    if pos.height:
        r = pos.row(0, named=True)
        return f"{r[SPLIT]}.csv (user {r[USER]}, column {ITEM!r})"
    neg = data.interactions.filter(pl.col(NEG).list.contains(item))
    if neg.height:
        r = neg.row(0, named=True)
        return f"{r[SPLIT]}.csv (user {r[USER]}, column {NEG!r})"
    if data.item_features is not None and (data.item_features[ITEM] == item).any():
        return "item_meta.csv"
    return data.source or "the data"


def check_catalogue(interactions: pl.DataFrame, n_items: int, where: object, meta_items: pl.Series | None = None) -> None:
    """The catalogue 1..``n_items - 1`` may be at most :data:`CATALOGUE_FACTOR` × the distinct item
    ids the data holds (train/dev/test items, negatives and ``item_meta.csv``) + :data:`CATALOGUE_SLACK`:
    the item embedding table is sized by the largest id, and an absurd id would size it to billions."""
    items = interactions[ITEM]
    if NEG in interactions.columns:
        items = pl.concat([items, interactions[NEG].drop_nulls().explode()])
    if meta_items is not None:
        items = pl.concat([items, meta_items.cast(items.dtype)])
    distinct = int(items.n_unique())
    cap = CATALOGUE_FACTOR * distinct + CATALOGUE_SLACK
    if n_items - 1 > cap:
        hit = interactions.filter((pl.col(ITEM) == n_items - 1) | pl.col(NEG).list.contains(n_items - 1))
        if hit.is_empty():
            raise InputError(f"{where}: item_meta.csv: item id {n_items - 1} would make a catalogue (and an embedding "
                             f"table) of {n_items - 1} items for {distinct} distinct item ids; renumber the items densely")
        r = hit.row(0, named=True)
        raise InputError(
            f"{where}: {r[SPLIT]}.csv, user {r[USER]}: item id {n_items - 1} would make a catalogue (and an embedding "
            f"table) of {n_items - 1} items for {distinct} distinct item ids; ReChorus numbers items 1..n densely "
            f"(at most {CATALOGUE_FACTOR} x the distinct ids + {CATALOGUE_SLACK} = {cap} is accepted): renumber the items"
        )


def write_rechorus(folder: str | os.PathLike, data: SeqData) -> dict[str, str]:
    """Write ``data`` as ReChorus files (and ``item_meta.csv`` when items carry a feature)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for s in SPLITS:
        part = data.split(s)
        cols = [USER, ITEM, TIME] + ([NEG] if s != "train" else [])
        path = folder / f"{s}.csv"
        lists_as_text(part.select(cols)).write_csv(path, separator="\t", quote_style="never")
        paths[s] = str(path)
    if data.item_features is not None:
        path = folder / "item_meta.csv"
        if data.multi_hot:
            sets = data.item_features.group_by(ITEM, maintain_order=True).agg(pl.col(FEATURE).drop_nulls())
            meta = sets.select(ITEM, *[pl.col(FEATURE).list.contains(c.removeprefix("i_")).cast(pl.Int8).alias(c)
                                       for c in data.feature_columns])
        else:
            meta = data.item_features.rename({FEATURE: data.feature_name or "i_feature"})
        meta.write_csv(path, separator="\t", quote_style="never")
        paths["item_meta"] = str(path)
    return paths


# --------------------------------------------------------------------------- negatives and split
def clicked_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted unique ``user * n_items + item`` keys of every interaction (for membership tests)."""
    return np.unique(np.asarray(users, dtype=np.int64) * n_items + np.asarray(items, dtype=np.int64))


def _later_duplicates(a: np.ndarray) -> np.ndarray:
    """Mask of cells equal to an earlier cell of the same row."""
    order = np.argsort(a, axis=1, kind="stable")
    s = np.take_along_axis(a, order, axis=1)
    dup_sorted = np.zeros(a.shape, dtype=bool)
    dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
    dup = np.empty_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    return dup


def sample_negatives(
    rng: np.random.Generator,
    users: np.ndarray,
    n_neg: int,
    keys: np.ndarray,
    n_items: int,
    distinct: bool = True,
    max_rounds: int = 1000,
) -> np.ndarray:
    """``(len(users), n_neg)`` item ids in ``1..n_items-1`` the user never interacted with.

    Rejection sampling, vectorised: every round redraws only the rejected cells. With
    ``distinct`` a row holds no repeated item.
    """
    users = np.asarray(users, dtype=np.int64)
    out = rng.integers(1, n_items, size=(len(users), n_neg), dtype=np.int64)
    base = users[:, None] * n_items
    for _ in range(max_rounds):
        bad = np.isin(base + out, keys)
        if distinct:
            bad |= _later_duplicates(out)
        n_bad = int(bad.sum())
        if not n_bad:
            return out
        out[bad] = rng.integers(1, n_items, size=n_bad, dtype=np.int64)
    raise InputError(f"could not sample {n_neg} negatives for some users in {max_rounds} rounds (catalogue too small?)")


def check_negative_room(interactions: pl.DataFrame, n_items: int, n_neg: int, where: str) -> None:
    """Every user must leave at least ``n_neg`` items of the catalogue unclicked."""
    distinct = interactions.group_by(USER).agg(pl.col(ITEM).n_unique().alias("n")).sort(USER)
    short = distinct.filter(pl.col("n") > n_items - 1 - n_neg)
    if short.height:
        u, n = short.row(0)
        raise InputError(
            f"{where}: user {u} interacted with {n} of the {n_items - 1} items: fewer than {n_neg} items are left "
            "to sample negatives from"
        )


def leave_one_out(
    events: pl.DataFrame, n_neg: int, seed: int, item_features: pl.DataFrame | None = None,
    feature_name: str | None = None, source: str = "",
) -> SeqData:
    """Split ``user_id, item_id, time`` events by time: each user's last event → test, the
    second-last → dev, the rest → train; ``n_neg`` sampled negatives per dev/test row (seeded).

    Users with fewer than 3 events stay entirely in train (they have nothing to test on).
    The catalogue is ``1..max item id`` (as ReChorus counts it); features of items outside it are dropped.
    """
    for col in (USER, ITEM, TIME):
        if col not in events.columns:
            raise InputError(f"{source or 'events'}: missing column {col!r}")
    if events.height == 0:
        raise InputError(f"{source or 'events'}: no interactions")
    ev = events.select(pl.col(USER).cast(pl.Int64), pl.col(ITEM).cast(pl.Int64), pl.col(TIME).cast(pl.Int64))
    ev = ev.sort([USER, TIME], maintain_order=True)
    n_items = int(ev[ITEM].max()) + 1
    if item_features is not None:
        item_features = item_features.filter(pl.col(ITEM) < n_items)
    check_negative_room(ev, n_items, n_neg, source or "events")
    ev = ev.with_columns(
        (pl.len().over(USER) - 1 - pl.int_range(pl.len()).over(USER)).alias("_from_end"), pl.len().over(USER).alias("_n")
    )
    split = (
        pl.when((pl.col("_n") >= 3) & (pl.col("_from_end") == 0)).then(pl.lit("test"))
        .when((pl.col("_n") >= 3) & (pl.col("_from_end") == 1)).then(pl.lit("dev"))
        .otherwise(pl.lit("train"))
    )
    ev = ev.with_columns(split.alias(SPLIT)).drop(["_from_end", "_n"])
    keys = clicked_keys(ev[USER].to_numpy(), ev[ITEM].to_numpy(), n_items)
    is_eval = (ev[SPLIT] != "train").to_numpy()
    negs = sample_negatives(rng_for(seed, "leave_one_out", "negatives"), ev[USER].to_numpy()[is_eval], n_neg, keys, n_items)
    ev = ev.with_row_index("_row")
    neg_rows = pl.DataFrame({"_row": np.flatnonzero(is_eval).astype(np.uint32), NEG: negs}).with_columns(
        pl.col(NEG).cast(pl.List(pl.Int64))
    )
    ev = ev.join(neg_rows, on="_row", how="left", maintain_order="left").drop("_row")
    return SeqData(order_interactions(ev), n_items, item_features, feature_name, source)


# --------------------------------------------------------------------------- MovieLens-1M
def _read_double_colon(path: Path, n_fields: int, what: str, encoding: str = "latin-1") -> pl.DataFrame:
    require_file(path)
    lines = path.read_bytes().decode(encoding).splitlines()
    s = pl.Series("line", lines, dtype=pl.String)
    parts = s.str.split("::")
    bad = parts.list.len() != n_fields
    if bad.any():
        row = int(bad.arg_max())
        raise InputError(f"{path}: line {row + 1}: expected {what} ({n_fields} fields separated by '::'), got {lines[row]!r}")
    return pl.DataFrame({f"f{i}": parts.list.get(i) for i in range(n_fields)}).with_columns(pl.Series("line", lines))


def read_ml1m_ratings(path: str | os.PathLike) -> pl.DataFrame:
    """MovieLens-1M ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) → original ids."""
    path = Path(path)
    df = _read_double_colon(path, 4, "UserID::MovieID::Rating::Timestamp")
    if df.height == 0:
        raise InputError(f"{path}: no ratings")
    out = {}
    for i, name in enumerate(("user", "movie", "rating", TIME)):
        col = df[f"f{i}"].cast(pl.Int64, strict=False)
        if col.is_null().any():
            row = int(col.is_null().arg_max())
            raise InputError(f"{path}: line {row + 1}: field {name!r} is not an integer: {df['line'][row]!r}")
        check_field(col.to_numpy(), ML1M_FIELDS[name], path, lambda r: f"line {r + 1}")
        out[name] = col
    return pl.DataFrame(out)


def read_ml1m_movies(path: str | os.PathLike) -> pl.DataFrame:
    """MovieLens-1M ``movies.dat`` (``MovieID::Title::Genres``, latin-1) → ``movie, genre``
    (the first listed genre)."""
    path = Path(path)
    df = _read_double_colon(path, 3, "MovieID::Title::Genres")
    movie = df["f0"].cast(pl.Int64, strict=False)
    if movie.is_null().any():
        row = int(movie.is_null().arg_max())
        raise InputError(f"{path}: line {row + 1}: MovieID is not an integer: {df['line'][row]!r}")
    check_field(movie.to_numpy(), ML1M_FIELDS["movie"], path, lambda r: f"line {r + 1}")
    return pl.DataFrame({"movie": movie, "genre": df["f2"].str.split("|").list.first()})


def convert_ml1m(
    ratings_path: str | os.PathLike, out_dir: str | os.PathLike, n_neg: int, seed: int,
    movies_path: str | os.PathLike | None = None,
) -> SeqData:
    """MovieLens-1M → ReChorus files in ``out_dir`` (every rating is an interaction).

    Users and movies get dense ids ``1..n`` in the order of their original ids; the maps are
    written to ``user_map.csv`` / ``item_map.csv``. With ``movies.dat``, ``item_meta.csv`` gets
    each movie's first genre as ``i_genre``.
    """
    ratings = read_ml1m_ratings(ratings_path)
    users = ratings["user"].unique().sort()
    movies = ratings["movie"].unique().sort()
    user_map = pl.DataFrame({USER: np.arange(1, len(users) + 1, dtype=np.int64), "original_user_id": users})
    item_map = pl.DataFrame({ITEM: np.arange(1, len(movies) + 1, dtype=np.int64), "original_item_id": movies})
    events = ratings.join(user_map, left_on="user", right_on="original_user_id", maintain_order="left").join(
        item_map, left_on="movie", right_on="original_item_id", maintain_order="left"
    )
    features, feature_name = None, None
    if movies_path:
        genres = read_ml1m_movies(movies_path)
        features = item_map.join(genres, left_on="original_item_id", right_on="movie", how="left").select(
            ITEM, pl.col("genre").alias(FEATURE)
        )
        feature_name = "i_genre"
    data = leave_one_out(events.select(USER, ITEM, TIME), n_neg, seed, features, feature_name, source=str(ratings_path))
    with staged_dir(out_dir) as out:  # the files appear in out_dir only once all of them are written
        write_rechorus(out, data)
        user_map.write_csv(out / "user_map.csv", separator="\t")
        item_map.write_csv(out / "item_map.csv", separator="\t")
    return data


# --------------------------------------------------------------------------- history windows
@dataclass(frozen=True)
class Instances:
    """Prediction instances: a history (right-padded with 0) and the item that came next."""

    users: np.ndarray  # (n,)
    targets: np.ndarray  # (n,)
    histories: np.ndarray  # (n, history_max) int64, right-padded with PADDING_ITEM
    lengths: np.ndarray  # (n,) 1..history_max
    negatives: np.ndarray | None  # (n, n_neg) for dev/test rows

    def __len__(self) -> int:
        return len(self.targets)


def _windows(items: np.ndarray, rows: np.ndarray, starts: np.ndarray, history_max: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``history_max`` items before each flat row (right-padded) and their count."""
    lengths = np.minimum(rows - starts, history_max)
    col = np.arange(history_max, dtype=np.int64)[None, :]
    idx = (rows - lengths)[:, None] + col
    valid = col < lengths[:, None]
    hist = np.where(valid, items[np.where(valid, idx, 0)], PADDING_ITEM)
    return hist.astype(np.int64), lengths.astype(np.int64)


def _flat(interactions: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    items = interactions[ITEM].to_numpy().astype(np.int64)
    users = interactions[USER].to_numpy().astype(np.int64)
    new_user = np.ones(len(users), dtype=bool)
    new_user[1:] = users[1:] != users[:-1]
    starts = np.maximum.accumulate(np.where(new_user, np.arange(len(users)), 0))
    return items, users, starts


def build_instances(data: SeqData, split: str, history_max: int) -> Instances:
    """Every row of ``split`` with a non-empty history, with its last ``history_max`` items."""
    items, users, starts = _flat(data.interactions)
    split_mask = (data.interactions[SPLIT] == split).to_numpy()
    rows = np.flatnonzero(split_mask & (np.arange(len(items)) > starts))
    hist, lengths = _windows(items, rows, starts[rows], history_max)
    negs = None
    if split != "train":
        negs = data.interactions[NEG].gather(rows).explode().to_numpy().astype(np.int64).reshape(len(rows), -1)
    return Instances(users[rows], items[rows], hist, lengths, negs)


def user_consumed_items(data: SeqData, user_id: int) -> np.ndarray:
    """Every item the user interacted with before test time (train + dev), also those older than
    the ``history_max`` window: what a top-K for that user must not recommend again."""
    rows = data.interactions.filter((pl.col(USER) == int(user_id)) & (pl.col(SPLIT) != "test"))
    return np.unique(rows[ITEM].to_numpy().astype(np.int64))


def user_histories(data: SeqData, user_ids, history_max: int) -> dict[int, np.ndarray]:
    """Each user's history at test time (train + dev items, the last ``history_max``).

    A user without a test row gets their whole sequence. Unknown users and empty histories are
    :class:`InputError`.
    """
    ids = [int(u) for u in user_ids]
    known = set(data.interactions[USER].unique().to_list())
    for u in ids:
        if u not in known:
            raise InputError(f"user {u} is not in the data ({data.source}); known user ids run from "
                             f"{min(known)} to {max(known)}")
    sub = data.interactions.filter(pl.col(USER).is_in(ids) & (pl.col(SPLIT) != "test"))
    seqs = dict(sub.group_by(USER).agg(pl.col(ITEM)).iter_rows())
    out = {}
    for u in ids:
        seq = np.asarray(seqs.get(u, []), dtype=np.int64)[-history_max:]
        if len(seq) == 0:
            raise InputError(f"user {u} has an empty history: nothing to explain")
        out[u] = seq
    return out
