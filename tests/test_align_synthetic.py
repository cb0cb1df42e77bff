"""The synthetic dump has the statistical shape that makes alignment matter, in the real layout."""

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from steps.align.data import prepare_dump
from steps.align.synthetic import SyntheticDumpSpec, synthetic_articles, write_synthetic_dump
from steps.align.targets import editorial_target
from steps.metrics import smoothed_kl

SPEC = SyntheticDumpSpec(n_articles=600, n_candidates=250, n_ba_rows=2000, n_impressions=3000, chunk_rows=1000, seed=3)


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    paths = write_synthetic_dump(out, SPEC)
    return paths, prepare_dump(paths["predictions"], paths["articles"], out / "prepared")


def test_files_have_the_real_layout(dump):
    paths, _ = dump
    schema = pq.read_schema(paths["predictions"])
    assert [(f.name, str(f.type)) for f in schema] == [
        ("impression_id", "uint32"),
        ("article_ids_inview", "list<element: int32>"),
        ("scores", "list<element: float>"),
        ("article_ids_clicked", "list<element: int32>"),
    ]
    art = pl.read_parquet(paths["articles"])
    assert art.schema["article_id"] == pl.Int32 and art.schema["category_str"] == pl.String
    assert art.schema["category"] == pl.Int16 and art.schema["subcategory"] == pl.List(pl.Int16)
    assert art["article_id"].is_unique().all()


def test_candidate_list_and_sizes(dump):
    _, p = dump
    assert p.n_ba_rows == 2000 and p.n_impressions == 3000 and p.n_labelled == 3000
    # 250 candidates, 95 of them 'auto' (excluded), as in the NAILS paper's list of 155
    assert len(p.ba_candidate_ids) == 155 and p.n_ba_candidates_excluded == 95


def test_model_is_biased_away_from_the_editorial_mix(dump):
    _, p = dump
    target = editorial_target(p.candidate_categories)
    idx = [p.categories.index(c) for c in target.categories]
    model = p.model_distribution[idx]
    # the simulated model over-weights entertainment and under-weights crime (as the paper's NRMS)
    ent, crm = target.categories.index("ENT"), target.categories.index("CRM")
    assert model[ent] > 1.3 * target.probs[ent]
    assert model[crm] < 0.7 * target.probs[crm]
    assert smoothed_kl(target.probs, model) > 0.05


def test_popularity_has_a_long_tail():
    art = synthetic_articles(2000, seed=1)
    views = np.sort(art["total_inviews"].to_numpy())[::-1]
    assert views[:200].sum() / views.sum() > 0.5  # top 10% of articles take most exposure


def test_impressions_have_in_view_lists_and_clicks(dump):
    paths, _ = dump
    df = pl.read_parquet(paths["predictions"]).filter(pl.col("impression_id") > 0)
    n = df["article_ids_inview"].list.len()
    assert n.min() >= SPEC.inview_min and n.max() <= SPEC.inview_max
    clicks = df["article_ids_clicked"].list.len()
    assert clicks.min() == 1 and clicks.max() == 2
    assert df["impression_id"].is_unique().all()


def test_same_seed_same_files(tmp_path):
    spec = SyntheticDumpSpec(n_articles=100, n_candidates=40, n_ba_rows=50, n_impressions=60, chunk_rows=25, seed=5)
    a = write_synthetic_dump(tmp_path / "a", spec)
    b = write_synthetic_dump(tmp_path / "b", spec)
    assert pl.read_parquet(a["predictions"]).equals(pl.read_parquet(b["predictions"]))
    assert pl.read_parquet(a["articles"]).equals(pl.read_parquet(b["articles"]))


def test_the_inview_order_carries_no_information_about_the_click(dump):
    """The click's in-view position is uniform (so the in-view order does not leak the click)."""
    from steps import ragged
    from steps.align.data import iter_impressions

    _, p = dump
    batch = next(iter_impressions(p, 10_000))
    flat = np.flatnonzero(batch.clicked)
    rows = ragged.row_ids(batch.offsets)[flat]
    pos, length = flat - batch.offsets[rows], np.diff(batch.offsets)[rows]
    rel = pos / (length - 1)
    assert len(rel) > 3000 and abs(rel.mean() - 0.5) < 5 * rel.std() / np.sqrt(len(rel)), rel.mean()
    chance = np.mean(1.0 / length)
    assert abs(np.mean(pos == 0) - chance) < 5 * np.sqrt(chance * (1 - chance) / len(pos))
