"""Item-item models of the tail-promotion methods (PyTorch + NumPy).

* :func:`ease_closed_form` — EASE (Steck 2019): B = I − P·diag(1/diag(P)), P = (XᵀX + λI)⁻¹,
  i.e. B_ij = −P_ij / P_jj off the diagonal and B_ii = 0 (float64 inverse through torch/MKL).
* :class:`ItemItem` — the gradient-trained item-item model: scores = X·B with diag(B) = 0,
  trained on the per-cell squared reconstruction error with weight decay. Full-batch training
  with loss ``s·mean((XB − X)²)`` and weight decay ``wd`` has the closed-form EASE solution with
  λ = wd·m·n / (2s) (m users, n items): see :func:`ease_l2_for_weight_decay`.

The objectives of the gradient-trained methods are in :mod:`steps.tail.objectives`.
"""

from __future__ import annotations


import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from steps.errors import ConfigError, InputError


# --------------------------------------------------------------------------- helpers
def gram_matrix(train: sp.spmatrix) -> np.ndarray:
    """XᵀX as a dense float64 (n_items × n_items) matrix, from a sparse user-item matrix."""
    x = sp.csr_matrix(train, dtype=np.float64)
    return (x.T @ x).toarray()


def ease_closed_form(train: sp.spmatrix, l2: float, device: torch.device | str = "cpu") -> np.ndarray:
    """EASE's item-item matrix B (float64, zero diagonal) for a sparse user-item matrix.

    XᵀX comes from the sparse product; P = (XᵀX + λI)⁻¹ from torch's ``linalg.inv_ex`` in float64
    on ``device`` (MKL on the CPU, cuSOLVER on a GPU); B is formed in place in P. Peak memory
    ≈ 3 n² float64 (the Gram matrix, the factorisation and P). SciPy's LAPACK Cholesky inverse
    (``dpotrf``/``dpotri``, 32-bit OpenBLAS) crashed at ML-20M size (20k items), so it is not used.
    """
    if l2 <= 0:
        raise ConfigError(f"l2: EASE needs a positive λ, got {l2!r}")
    g = torch.from_numpy(gram_matrix(train)).to(device)
    g.diagonal().add_(l2)
    p, info = torch.linalg.inv_ex(g)
    del g
    if int(info) != 0:
        raise InputError(f"XᵀX + λI is singular (LU pivot {int(info)} is zero); increase l2 (now {l2})")
    p.div_(-p.diagonal().clone()[None, :])
    p.fill_diagonal_(0.0)
    return p.cpu().numpy()


def ease_l2_for_weight_decay(weight_decay: float, n_users: int, n_items: int, loss_scale: float) -> float:
    """The EASE λ whose closed form the full-batch gradient model reaches: λ = wd·m·n / (2s)."""
    return weight_decay * n_users * n_items / (2.0 * loss_scale)


def to_torch_sparse(x: sp.spmatrix, device: torch.device | str = "cpu") -> torch.Tensor:
    """A scipy sparse matrix as a coalesced float32 torch COO tensor."""
    c = sp.coo_matrix(x)
    idx = torch.from_numpy(np.vstack([c.row, c.col]).astype(np.int64))
    vals = torch.from_numpy(c.data.astype(np.float32))
    return torch.sparse_coo_tensor(idx, vals, c.shape, device=device, check_invariants=False).coalesce()


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a config error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but torch.cuda.is_available() is False")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# --------------------------------------------------------------------------- learner
class ItemItem(nn.Module):
    """scores = X·B, with B (n × n) kept at zero on the diagonal after every update."""

    def __init__(self, n_items: int, init: np.ndarray | None = None) -> None:
        super().__init__()
        b = torch.zeros(n_items, n_items) if init is None else torch.as_tensor(init, dtype=torch.float32).clone()
        self.B = nn.Parameter(b)
        self.zero_diagonal_()

    @torch.no_grad()
    def zero_diagonal_(self) -> None:
        self.B.diagonal().zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(x, self.B) if x.is_sparse else x @ self.B


def squared_error(pred: torch.Tensor, x_dense: torch.Tensor) -> torch.Tensor:
    return (pred - x_dense).square()
