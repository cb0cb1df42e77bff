"""AlignFlow's datasets: which inputs a run aligns, and how each is made ready.

A run aligns one or more datasets (``datasets:`` in the config; without it, one dataset from the
flow's parameters). Two families:

* ``ebnerd`` — a NAILS / EB-NeRD prediction dump (:mod:`steps.align.data`, the news path with its
  beyond-accuracy block and impressions);
* candidate lists (:mod:`steps.candidates`): ``candidates`` (a bundle folder, a TailFlow /
  ExplainFlow run's bundle, or a synthetic bundle) and ``ml100k_ease`` (real MovieLens-100K from the
  RecBole wheel or a GroupLens folder → EASE → each user's top-M, built here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from steps.candidates import MANIFEST_FILE, CandidateSet, read_candidate_bundle
from steps.storage import sha256_file
from steps.errors import InputError

LIST_KINDS = ("candidates", "ml100k_ease")


def implicit_dataset(predictions: str, articles: str, predictions_from: str, candidates: str) -> dict:
    """The one dataset a run without ``datasets:`` aligns, from the flow's parameters."""
    if candidates and (predictions or articles or predictions_from):
        raise InputError("give --candidates alone, not with --predictions/--articles/--predictions-from")
    if candidates:
        return {"name": "candidates", "kind": "candidates", "path": candidates}
    if predictions_from.split("/")[0] in ("TailFlow", "ExplainFlow"):
        return {"name": predictions_from.split("/")[0].removesuffix("Flow").lower(), "kind": "candidates", "from_run": predictions_from}
    return {"name": "ebnerd", "kind": "ebnerd", "predictions": predictions, "articles": articles, "from_run": predictions_from}


def check_dataset_params(datasets: tuple, predictions: str, articles: str, predictions_from: str, candidates: str) -> None:
    if datasets and (predictions or articles or predictions_from or candidates):
        raise InputError("the config lists datasets: give their inputs there, not with --predictions/--articles/"
                         "--predictions-from/--candidates")


@dataclass(frozen=True)
class PreparedLists:
    """A validated candidate bundle on local disk, with what the card says about it."""

    dataset: str
    folder: str
    source: str
    n_users: int
    n_candidates: int
    genres: tuple[str, ...]
    single_genre: bool
    has_heldout: bool
    has_history: bool
    build: Mapping = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    manifest_sha256: str = ""

    def load(self):
        """The bundle, checked to be the one ``prepare`` validated (a resumed task reads the same lists)."""
        if self.manifest_sha256:
            actual = sha256_file(Path(self.folder) / MANIFEST_FILE)
            if actual != self.manifest_sha256:
                raise InputError(f"{self.folder}: the candidate bundle changed since this run prepared it "
                                 f"(manifest {actual[:12]}… ≠ {self.manifest_sha256[:12]}…); start a new run")
        return read_candidate_bundle(self.folder, verify=bool(self.manifest_sha256))


def prepare_list_dataset(spec: Mapping, data_dir: str | Path, resolve_run: Callable[[str], Path]) -> PreparedLists:
    """Make a candidate-list dataset ready: build it (synthetic, ml100k_ease), or verify the folder a
    path or a finished run names; every row is checked by the reader."""
    name, kind = spec["name"], spec["kind"]
    out = Path(data_dir) / name
    build: dict = {}
    if kind == "ml100k_ease":
        from steps.align.ease_candidates import EaseCandidatesSpec, build_ease_candidates
        from steps.movielens import load_ml100k

        es = EaseCandidatesSpec.from_dict({k: v for k, v in spec.items() if k not in ("name", "kind")})
        ml = load_ml100k(es.source)
        build = build_ease_candidates(ml.ratings, ml.items, es, out / "bundle", dataset=name)
        folder, source = out / "bundle", ml.source
    elif spec.get("synthetic") is not None:
        from steps.align.synthetic_lists import SyntheticListsSpec, write_synthetic_lists

        folder = write_synthetic_lists(out / "bundle", SyntheticListsSpec.from_dict(spec["synthetic"]), name)
        source = "synthetic candidate lists"
    elif spec.get("from_run"):
        folder, source = Path(resolve_run(spec["from_run"])), f"run {spec['from_run']}"
    else:
        folder, source = Path(spec["path"]), str(spec["path"])
    cs = read_candidate_bundle(folder, verify=(folder / "manifest.json").exists())
    notes = []
    if cs.heldout_offsets is None:
        notes.append(f"{name}: the bundle has no held-out items, so precision/recall/nDCG are not computed")
    elif not (np.diff(cs.heldout_offsets) > 0).any():
        notes.append(f"{name}: no user has held-out items, so precision/recall/nDCG are not computed")
    return PreparedLists(
        dataset=name, folder=str(Path(folder).absolute()), source=source, n_users=cs.n_users, n_candidates=cs.n_candidates,
        genres=cs.genres, single_genre=cs.single_genre, has_heldout=cs.heldout_offsets is not None,
        has_history=cs.history_offsets is not None, build=build, notes=tuple(notes),
        manifest_sha256=sha256_file(Path(folder) / MANIFEST_FILE) if (Path(folder) / MANIFEST_FILE).exists() else "",
    )


def list_data_summary(p: PreparedLists, cs: CandidateSet) -> dict:
    """The bundle's counts and its ``units_digest`` (user ids, held-out items and history lengths in
    order: which users a resample weights; the candidates are not in it, so that two recommenders'
    lists for the same users pair in ``recalign compare``)."""
    from steps.uncertainty import UNITS_DIGEST, units_digest

    return {"kind": "candidates", "source": p.source, "bundle": p.folder, "users": p.n_users,
            "candidates_per_user": p.n_candidates, "genres": list(p.genres), "single_genre": p.single_genre,
            "heldout": p.has_heldout, "history": p.has_history, "build": dict(p.build), "notes": list(p.notes),
            UNITS_DIGEST: units_digest(cs.user_ids, cs.heldout_offsets, cs.heldout_ids, cs.history_offsets)}
