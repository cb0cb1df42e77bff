"""Candidate bundles as run artifacts: publish a bundle folder, and find a finished run's bundle.

A flow that writes bundles (:mod:`steps.candidates`) keeps an artifact ``candidates`` =
``{name: FileRef of the bundle's manifest.json}``: TailFlow names them ``<dataset>/<method>``,
ExplainFlow ``gru4rec``. :func:`publish_bundle` publishes every file of the folder (so with an
``s3://`` storage root they lie side by side under one prefix) and returns the manifest's
reference; :func:`localize_bundle` brings such a folder back to local disk.

``--candidates-from`` specs (resolved by :func:`recalign.runs.candidates_of_run`):

* ``TailFlow/<run_id>/<method>`` — that method's bundle (when one dataset has it), or
  ``TailFlow/<run_id>/<dataset>/<method>``;
* ``ExplainFlow/<run_id>`` — the run's one bundle (GRU4Rec's), or ``ExplainFlow/<run_id>/gru4rec``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Mapping

from steps.candidates import MANIFEST_FILE, verify_manifest
from steps.errors import InputError
from steps.storage import FileRef, file_ref, localize


def publish_bundle(manifest: str | os.PathLike, publish: Callable[[FileRef], FileRef]) -> FileRef:
    """Publish every file of the bundle whose ``manifest.json`` is ``manifest``; the manifest last."""
    manifest = Path(manifest)
    for name in json.loads(manifest.read_text())["files"]:
        publish(file_ref(manifest.parent / name))
    return publish(file_ref(manifest))


def _sibling(path: str, name: str) -> str:
    return path.rsplit("/", 1)[0] + "/" + name


def localize_bundle(ref: FileRef) -> Path:
    """The local folder of a published bundle (downloaded once per process), its manifest verified."""
    local = localize(ref)
    local.verify()
    for name, digest in json.loads(Path(local.path).read_text())["files"].items():
        localize(FileRef(_sibling(ref.path, name), digest, 0))
    folder = Path(local.path).parent
    verify_manifest(folder)
    return folder


def parse_candidates_from(spec: str) -> tuple[str, str | None]:
    """``"<Flow>/<run_id>[/<name>...]"`` → (``"<Flow>/<run_id>"``, name or None)."""
    parts = spec.strip().split("/")
    if len(parts) < 2 or not all(parts):
        raise InputError(f"--candidates-from {spec!r}: expected <Flow>/<run_id>[/<method>], e.g. TailFlow/1712345678/ease "
                         "or ExplainFlow/1712345678")
    return "/".join(parts[:2]), ("/".join(parts[2:]) or None)


def choose_bundle(spec: str, candidates: Mapping[str, FileRef] | None, name: str | None) -> tuple[str, FileRef]:
    """The (name, manifest reference) that ``name`` picks from a run's ``candidates`` artifact: the
    exact name, else the one name ending in ``/<name>``; with no name, the run's only bundle."""
    if not candidates:
        raise InputError(f"--candidates-from {spec!r}: the run wrote no candidate bundles (a dataset without item "
                         "genres, candidates_top_m: 0, or a run made before bundles existed)")
    names = list(candidates)
    if name is None:
        if len(names) == 1:
            return names[0], candidates[names[0]]
        raise InputError(f"--candidates-from {spec!r}: the run has {len(names)} bundles ({', '.join(names)}); name one, "
                         f"e.g. {spec.rstrip('/')}/{names[0].split('/')[-1]}")
    if name in candidates:
        return name, candidates[name]
    hits = [n for n in names if n.endswith("/" + name)]
    if len(hits) == 1:
        return hits[0], candidates[hits[0]]
    if len(hits) > 1:
        raise InputError(f"--candidates-from {spec!r}: {name!r} is ambiguous ({', '.join(hits)}); add the dataset, "
                         f"e.g. {spec.rsplit('/', 1)[0]}/{hits[0]}")
    raise InputError(f"--candidates-from {spec!r}: no bundle {name!r}; the run has {', '.join(names)}")


def bundle_of_run(spec: str, candidates: Mapping[str, FileRef] | None, name: str | None) -> Path:
    """The verified local folder of the bundle ``name`` of a run's ``candidates`` artifact."""
    chosen, ref = choose_bundle(spec, candidates, name)
    if not isinstance(ref, FileRef) or not str(ref.path).endswith(MANIFEST_FILE):
        raise InputError(f"--candidates-from {spec!r}: bundle {chosen!r} is not a manifest reference ({ref!r})")
    try:
        return localize_bundle(ref)
    except FileNotFoundError as exc:
        raise InputError(f"--candidates-from {spec!r}: bundle {chosen!r}: {exc}") from exc
