"""Small records kept as Metaflow artifacts (no TensorFlow import, so any step can unpickle them)."""

from __future__ import annotations

from dataclasses import dataclass

from steps.storage import FileRef


@dataclass(frozen=True)
class ModelArtifact:
    """Best weights on disk (versioned, checksummed) plus what is needed to rebuild the model."""

    model: str
    version: str  # "<model>-e<best epoch>-<weights sha256[:12]>"
    weights: FileRef
    best_epoch: int
    hparams: dict
    history_size: int
    seed: int
    keras_version: str
