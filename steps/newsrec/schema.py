"""EB-NeRD's on-disk layout: file locations, column names and the exact dtypes the dataset publishes.

Checked against the ebnerd-benchmark's column constants and the dataset's published schemas
(Polars notation): behaviors ``impression_id u32, article_id i32, impression_time datetime[μs],
read_time f32, scroll_percentage f32, device_type i8, article_ids_inview list[i32],
article_ids_clicked list[i32], user_id u32, is_sso_user bool, gender i8, postcode i8, age i8,
is_subscriber bool, session_id u32, next_read_time f32, next_scroll_percentage f32``; history
``user_id u32, impression_time_fixed list[datetime[μs]], scroll_percentage_fixed list[f32],
article_id_fixed list[i32], read_time_fixed list[f32]``. The test split has no click/next-read
columns and adds ``is_beyond_accuracy bool``; its beyond-accuracy rows have ``impression_id == 0``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import pyarrow as pa

from steps.errors import InputError
from steps.validate import Field, fields_table, read_parquet_schema

# behaviors
IMPRESSION_ID = "impression_id"
ARTICLE_ID = "article_id"
IMPRESSION_TIME = "impression_time"
INVIEW = "article_ids_inview"
CLICKED = "article_ids_clicked"
USER_ID = "user_id"
IS_BEYOND_ACCURACY = "is_beyond_accuracy"
# history
HISTORY_ARTICLES = "article_id_fixed"
HISTORY_TIMES = "impression_time_fixed"
# articles
TITLE = "title"
SUBTITLE = "subtitle"
BODY = "body"
CATEGORY_STR = "category_str"

TS = pa.timestamp("us")
BEHAVIORS_SCHEMA = pa.schema(
    [
        (IMPRESSION_ID, pa.uint32()),
        (ARTICLE_ID, pa.int32()),
        (IMPRESSION_TIME, TS),
        ("read_time", pa.float32()),
        ("scroll_percentage", pa.float32()),
        ("device_type", pa.int8()),
        (INVIEW, pa.list_(pa.int32())),
        (CLICKED, pa.list_(pa.int32())),
        (USER_ID, pa.uint32()),
        ("is_sso_user", pa.bool_()),
        ("gender", pa.int8()),
        ("postcode", pa.int8()),
        ("age", pa.int8()),
        ("is_subscriber", pa.bool_()),
        ("session_id", pa.uint32()),
        ("next_read_time", pa.float32()),
        ("next_scroll_percentage", pa.float32()),
    ]
)
#: The test split: no labels or next-read columns; the beyond-accuracy flag added.
TEST_BEHAVIORS_SCHEMA = pa.schema(
    [f for f in BEHAVIORS_SCHEMA if f.name not in (CLICKED, "next_read_time", "next_scroll_percentage")]
    + [pa.field(IS_BEYOND_ACCURACY, pa.bool_())]
)
HISTORY_SCHEMA = pa.schema(
    [
        (USER_ID, pa.uint32()),
        (HISTORY_TIMES, pa.list_(TS)),
        ("scroll_percentage_fixed", pa.list_(pa.float32())),
        (HISTORY_ARTICLES, pa.list_(pa.int32())),
        ("read_time_fixed", pa.list_(pa.float32())),
    ]
)
#: Every column any EB-NeRD file may hold, with its dtype (for checking whatever is present).
KNOWN_TYPES: dict[str, pa.DataType] = {
    **{f.name: f.type for f in BEHAVIORS_SCHEMA},
    **{f.name: f.type for f in TEST_BEHAVIORS_SCHEMA},
    **{f.name: f.type for f in HISTORY_SCHEMA},
}
BEHAVIORS_REQUIRED = (IMPRESSION_ID, IMPRESSION_TIME, INVIEW, USER_ID)
HISTORY_REQUIRED = (USER_ID, HISTORY_ARTICLES)
ARTICLES_REQUIRED = (ARTICLE_ID, CATEGORY_STR)
#: Valid ranges of the values the loaders read (what is refused; README). Beyond these: no nulls in
#: ``impression_id``, ``impression_time``, ``user_id`` or any list, and the dtypes above exactly.
FIELDS = fields_table([
    Field(IMPRESSION_ID, "uint32", 0, None, "impression ids (0: the beyond-accuracy rows)"),
    Field(USER_ID, "uint32", 0, None, "user ids"),
    Field(ARTICLE_ID, "int32", 0, None, "article ids"),
    Field(INVIEW, "int32", 0, None, "article ids"),
    Field(CLICKED, "int32", 0, None, "article ids"),
    Field(HISTORY_ARTICLES, "int32", 0, None, "article ids"),
])
SPLITS = ("train", "validation", "test")
TEST_BUNDLE = "ebnerd_testset"
#: Where the contrastive document vectors of the EB-NeRD artifacts live, relative to the data root.
DEFAULT_DOCUMENT_VECTORS = "artifacts/Ekstra_Bladet_contrastive_vector/contrastive_vector.parquet"


def polars_name(t: pa.DataType) -> str:
    """A dtype in the Polars notation the dataset documentation uses (u32, list[i32], ...)."""
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return f"list[{polars_name(t.value_type)}]"
    names = {
        pa.uint32(): "u32", pa.int32(): "i32", pa.int8(): "i8", pa.int16(): "i16", pa.int64(): "i64",
        pa.uint64(): "u64", pa.float32(): "f32", pa.float64(): "f64", pa.bool_(): "bool",
        pa.string(): "str", pa.large_string(): "str",
    }
    if pa.types.is_timestamp(t):
        return f"datetime[{t.unit}]"
    return names.get(t, str(t))


def _normalise(t: pa.DataType) -> pa.DataType:
    if pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return pa.list_(_normalise(t.value_type))
    if pa.types.is_list(t):
        return pa.list_(_normalise(t.value_type))
    if pa.types.is_large_string(t):
        return pa.string()
    return t


def read_checked_schema(
    path: str | os.PathLike, required: Sequence[str], expected: Mapping[str, pa.DataType] = KNOWN_TYPES, what: str = "file"
) -> pa.Schema:
    """Open a parquet file's schema: it must exist, hold ``required`` columns, and every known column
    present must have exactly the published dtype. Raises :class:`InputError` naming file and column."""
    schema = read_parquet_schema(path, what, required)
    path = Path(path)
    for f in schema:
        want = expected.get(f.name)
        if want is not None and _normalise(f.type) != want:
            raise InputError(
                f"{path}: column {f.name!r} has dtype {polars_name(f.type)}, expected {polars_name(want)} "
                "(the EB-NeRD layout)"
            )
    return schema


def split_dir(data_root: str | os.PathLike, bundle: str, split: str) -> Path:
    """``<root>/<bundle>/{train,validation}`` or ``<root>/ebnerd_testset/test``."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {SPLITS}")
    root = Path(data_root)
    return root / TEST_BUNDLE / "test" if split == "test" else root / bundle / split


def articles_path(data_root: str | os.PathLike, bundle: str, split: str) -> Path:
    """The articles file that goes with a split (the test set ships its own)."""
    root = Path(data_root)
    return root / (TEST_BUNDLE if split == "test" else bundle) / "articles.parquet"
