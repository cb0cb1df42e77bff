"""PyTorch helpers shared by the flows' steps."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

#: cuBLAS needs a fixed workspace for deterministic matrix products on CUDA; without it
#: ``torch.use_deterministic_algorithms(True)`` makes every CUDA matmul raise a RuntimeError.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


@contextlib.contextmanager
def deterministic_torch(seed: int | None = None) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` inside the block, the previous setting restored after.

    Sets ``CUBLAS_WORKSPACE_CONFIG`` (unless already set) so that cuBLAS products are allowed on a
    GPU. With ``seed``, the CPU random generator is also seeded inside the block (for module
    initialisation) and its state restored after.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        if seed is None:
            yield
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                yield
    finally:
        torch.use_deterministic_algorithms(was)
