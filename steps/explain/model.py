"""GRU4Rec as ReChorus implements it, and ReChorus checkpoints.

Architecture (ReChorus ``GRU4Rec``): an item embedding ``i_embeddings`` (row 0 = padding) shared by
the history and the candidates; a 1-layer GRU ``rnn`` over the (at most ``history_max``) most recent
items, run on the packed sequence so padding is never fed to it; the last hidden state goes through
a linear layer ``out`` (hidden → embedding size); a candidate's score is the dot product of that
vector with the candidate's embedding. The ``state_dict`` keys are ReChorus' own, so a checkpoint
saved by ReChorus (``torch.save(model.state_dict())``) loads with :func:`load_rechorus_checkpoint`.

Initialisation follows ReChorus (embedding and linear weights ~ N(0, 0.01²), the GRU keeps
PyTorch's uniform(±1/√hidden)) but draws from an explicit seed, and the padding row starts at 0.
"""

from __future__ import annotations

import copy
import math
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from steps.errors import InputError
from steps.storage import FileRef, file_ref
from steps.validate import require_file

#: ``state_dict`` keys of ReChorus' GRU4Rec, with the shape of each in terms of
#: (n_items, emb_size, hidden_size).
RECHORUS_KEYS = {
    "i_embeddings.weight": ("n", "e"),
    "rnn.weight_ih_l0": ("3h", "e"),
    "rnn.weight_hh_l0": ("3h", "h"),
    "rnn.bias_ih_l0": ("3h",),
    "rnn.bias_hh_l0": ("3h",),
    "out.weight": ("e", "h"),
    "out.bias": ("e",),
}


@dataclass(frozen=True)
class ModelSpec:
    """Sizes of a GRU4Rec (a small artifact; the weights live in a checkpoint file)."""

    n_items: int
    emb_size: int
    hidden_size: int


class GRU4Rec(nn.Module):
    """ReChorus' GRU4Rec (see the module docstring)."""

    def __init__(self, n_items: int, emb_size: int = 64, hidden_size: int = 64, seed: int | None = None) -> None:
        super().__init__()
        self.spec = ModelSpec(int(n_items), int(emb_size), int(hidden_size))
        self.i_embeddings = nn.Embedding(n_items, emb_size)
        self.rnn = nn.GRU(input_size=emb_size, hidden_size=hidden_size, batch_first=True)
        self.out = nn.Linear(hidden_size, emb_size)
        if seed is not None:
            self.initialise(seed)

    @torch.no_grad()
    def initialise(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(int(seed))
        for p in (self.i_embeddings.weight, self.out.weight, self.out.bias):
            nn.init.normal_(p, mean=0.0, std=0.01, generator=gen)
        self.i_embeddings.weight[0].zero_()
        bound = 1.0 / math.sqrt(self.spec.hidden_size)
        for p in self.rnn.parameters():
            nn.init.uniform_(p, -bound, bound, generator=gen)

    def user_vectors(self, histories: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``(B, emb)``: ``out(h_last)`` for right-padded histories ``(B, L)`` of ``lengths`` >= 1."""
        emb = self.i_embeddings(histories)
        packed = nn.utils.rnn.pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, hidden = self.rnn(packed)
        return self.out(hidden[-1])

    def forward(self, histories: torch.Tensor, lengths: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, C)`` of ``candidates`` ``(B, C)`` after each history."""
        u = self.user_vectors(histories, lengths)
        return (u[:, None, :] * self.i_embeddings(candidates)).sum(-1)

    def score_all(self, histories: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, n_items)`` of every item (column 0 is the padding item)."""
        return self.user_vectors(histories, lengths) @ self.i_embeddings.weight.T


def as_dtype(model: GRU4Rec, dtype: torch.dtype) -> GRU4Rec:
    """A copy of ``model`` in ``dtype``, in eval mode, without gradients."""
    out = copy.deepcopy(model).to(dtype).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def save_checkpoint(model: GRU4Rec, path: str | os.PathLike) -> FileRef:
    """``torch.save(state_dict)`` (ReChorus' layout), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return file_ref(path)


def load_rechorus_checkpoint(path: str | os.PathLike, n_items: int | None = None) -> GRU4Rec:
    """A GRU4Rec from a ReChorus ``state_dict`` file; sizes are read from the tensors.

    ``n_items``: the catalogue the data needs (largest item id + 1); a checkpoint with fewer item
    embeddings cannot score those items and is refused.
    """
    path = require_file(path, "checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({_load_error(exc)})") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a state_dict (a mapping of tensor names), got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing = sorted(set(RECHORUS_KEYS) - set(state))
    extra = sorted(set(state) - set(RECHORUS_KEYS))
    if missing or extra:
        raise InputError(
            f"{path}: not a ReChorus GRU4Rec state_dict (missing keys {missing}, unexpected keys {extra})"
        )
    for k, v in state.items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise InputError(f"{path}: {k} is not a floating-point tensor")
    n, e = state["i_embeddings.weight"].shape
    h = state["rnn.weight_hh_l0"].shape[1]
    sizes = {"n": n, "e": e, "h": h, "3h": 3 * h}
    for k, dims in RECHORUS_KEYS.items():
        want = tuple(sizes[d] for d in dims)
        if tuple(state[k].shape) != want:
            raise InputError(f"{path}: {k} has shape {tuple(state[k].shape)}, expected {want} (items={n}, emb={e}, hidden={h})")
    if n_items is not None and n < n_items:
        raise InputError(
            f"{path}: the checkpoint has {n} item embeddings (ids 0..{n - 1}) but the data has item ids up to "
            f"{n_items - 1}: unknown item ids for this model"
        )
    for k in RECHORUS_KEYS:
        finite = torch.isfinite(state[k])
        if not bool(finite.all()):
            where = tuple(int(i) for i in torch.nonzero(~finite)[0])
            value = state[k][where].item()
            raise InputError(f"{path}: {k} holds {value} at index {where} ({int((~finite).sum())} non-finite values): "
                             "a checkpoint of a diverged training run?")
    model = GRU4Rec(n, e, h)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


def _load_error(exc: BaseException) -> str:
    """What ``torch.load(weights_only=True)`` refused, without PyTorch's advice to retry with
    ``weights_only=False`` or to allow-list the file's classes (either would run code from it)."""
    text = str(exc)
    if "Weights only load failed" not in text and "WeightsUnpickler" not in text:
        return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
    after = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else ""
    lines = [ln.strip() for ln in after.splitlines() if ln.strip() and not ln.strip().startswith("Check the documentation")]
    detail = lines[0] if lines else "an unsupported object"
    detail = re.split(r"\s+(?:was not an allowed global|Please use)", detail)[0]
    if detail.startswith("Unsupported global"):
        return (f"it holds Python objects, not only tensors ({detail}); only a plain state_dict saved with "
                "torch.save(model.state_dict(), path) is loaded")
    return f"not a state_dict of tensors ({detail}); only a plain state_dict saved with torch.save(model.state_dict(), path) is loaded"


def check_checkpoint(path: str | os.PathLike, n_items: int | None = None) -> ModelSpec | None:
    """Refuse a checkpoint that :func:`load_rechorus_checkpoint` would refuse, before anything is
    trained or stored (the start step); ``None`` when no checkpoint is given."""
    if not path:
        return None
    return load_rechorus_checkpoint(path, n_items).spec
