"""The objectives of TailFlow's gradient-trained methods, one per method (all ``l2``), and the item adversary.

* :class:`Objective` — plain squared error (``ease_gd``);
* :class:`WeightedObjective` with :func:`ipw_weights` — inverse-propensity item weights (``ipw``);
* :class:`TailObjective` — CVaR tail optimisation over items (``tail_opt``);
* :class:`AdversarialObjective` with an :class:`ItemAdversary` — adversarial item re-weighting
  (``adversarial``).
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
from torch import nn

from steps.errors import ConfigError
from steps.tail.models import squared_error


# --------------------------------------------------------------------------- item weights
def ipw_weights(item_counts: np.ndarray, alpha: float) -> np.ndarray:
    """w_i ∝ exp(−α·count_i), normalised to mean 1 (computed stably in log space)."""
    logw = -alpha * np.asarray(item_counts, dtype=np.float64)
    w = np.exp(logw - logw.max())
    return w / w.mean()


def mean_one(w: torch.Tensor) -> torch.Tensor:
    """Weights divided by their (detached) mean, as the reference normalises them."""
    return w / w.mean().detach().clamp_min(1e-12)


#: Adversary structures, named as in the reference code (``model/arlitem_adv.py``): ``linear``,
#: ``2mlpN``, ``2bmlpN`` (×nstd before tanh) and ``b2mlpN`` (centred input). The reference's rule
#: is by prefix: only a name that *starts* with ``b`` centres the input.
_STRUCT = re.compile(r"^(linear|(2|2b|b2)mlp([1-9][0-9]*))$")
ADV_INITS = ("paper", "scaled")


class _Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class ItemAdversary(nn.Module):
    """Maps each item's interaction profile (a column of X, length = users) to a weight in (0, 1).

    Structures as the reference code builds them (BN = batch norm without affine parameters over
    the whole catalogue, which every forward pass sees):

    * ``linear``: sigmoid(nstd · (w·x + b));
    * ``2mlpN``: Linear(users→N) → BN → tanh → Linear(N→1) → BN → ×nstd → sigmoid;
    * ``2bmlpN``: the same with ×nstd also before tanh (input *not* centred: the reference centres
      only names that start with ``b``);
    * ``b2mlpN``: ``2mlpN`` on the centred input (x − μ)/σ, μ and σ the mean and standard deviation
      of X's cells. (The reference computes W(x + μ1)/σ; the batch norm that follows removes the
      constant W1·μ/σ either way, so the sign does not change the weights.)

    ``init``: ``paper`` — as the reference: the first layer starts at zero for ``linear``, ``2mlpN``
    and ``2bmlpN`` (every item weight starts at ½, and the first step's gradient through the batch
    norm of a zero-variance input is of order 1/√eps), PyTorch's default uniform init for ``b2mlpN``.
    ``scaled`` (recalign's, not the paper's): the first layer starts random (seeded), each hidden
    unit's weights scaled so that its input to the batch norm has standard deviation 1 over the
    items; the first step is then of ordinary size and the weights keep adapting.
    """

    def __init__(self, n_users: int, struct: str, nstd: float, density: float, init: str = "paper") -> None:
        super().__init__()
        m = _STRUCT.match(struct)
        if not m:
            raise ConfigError(f"adversary: expected linear, 2mlpN, 2bmlpN or b2mlpN (N = hidden width), got {struct!r}")
        if init not in ADV_INITS:
            raise ConfigError(f"adv_init: unknown value {init!r}; choose from {list(ADV_INITS)}")
        self.struct = struct
        self.nstd = nstd
        self.init = init
        self.centred = struct.startswith("b")
        self.mean = density
        self.std = math.sqrt(max(density * (1.0 - density), 1e-12))
        self._scaled = False
        if m.group(1) == "linear":
            self.first = nn.Linear(n_users, 1, bias=True)
            self.head = nn.Identity()
        else:
            width = int(m.group(3))
            self.first = nn.Linear(n_users, width, bias=False)
            hidden = [nn.BatchNorm1d(width, affine=False, track_running_stats=False)]
            if m.group(2) == "2b":
                hidden.append(_Scale(nstd))
            hidden += [nn.Tanh(), nn.Linear(width, 1, bias=False), nn.BatchNorm1d(1, affine=False, track_running_stats=False)]
            self.head = nn.Sequential(*hidden)
        with torch.no_grad():
            if init == "scaled":
                self.first.weight.normal_()
                self._scaled = True  # rescaled on the first forward pass, which sees the catalogue
            elif not self.centred:  # paper: zero first layer, except b2mlpN (default init there)
                self.first.weight.zero_()
            if self.first.bias is not None:
                self.first.bias.zero_()

    def _hidden(self, x_items: torch.Tensor) -> torch.Tensor:
        h = torch.sparse.mm(x_items, self.first.weight.T) if x_items.is_sparse else x_items @ self.first.weight.T
        if self.centred:  # W(x − μ1)/σ without densifying x
            h = (h - self.mean * self.first.weight.sum(dim=1)[None, :]) / self.std
        return h

    def forward(self, x_items: torch.Tensor) -> torch.Tensor:
        if self._scaled:
            with torch.no_grad():
                sd = self._hidden(x_items).std(dim=0)
                self.first.weight.div_(sd.clamp_min(1e-12)[:, None])
            self._scaled = False
        h = self._hidden(x_items)
        if self.first.bias is not None:
            h = h + self.first.bias
        return torch.sigmoid(self.nstd * self.head(h)).squeeze(1)


def item_utility(pred: torch.Tensor, x_dense: torch.Tensor, k: int, kind: str) -> torch.Tensor:
    """Per-item utility of one batch's lists (summed over the batch users).

    ``recall``: how many users hold the item and have it in their top-k (the reference's
    ``recall_ind``). ``recall_dist``: each such hit counts 1/min(k, #items the user holds), the
    item's share of the user's Recall@k.
    """
    k = min(k, pred.shape[1])
    top = torch.topk(pred, k, dim=1).indices
    hits = x_dense.gather(1, top)
    if kind == "recall_dist":
        hits = hits / x_dense.sum(dim=1, keepdim=True).clamp(min=1.0, max=float(k))
    out = torch.zeros(pred.shape[1], dtype=pred.dtype, device=pred.device)
    return out.index_add_(0, top.reshape(-1), hits.reshape(-1))


# --------------------------------------------------------------------------- objectives
class Objective:
    """The learner's loss of one method; may hold parameters and an adversary of its own."""

    def __init__(self, loss_scale: float) -> None:
        self.loss_scale = loss_scale

    def parameters(self) -> list[nn.Parameter]:
        return []

    def item_weights(self) -> torch.Tensor | None:
        return None

    def learner_loss(self, pred: torch.Tensor, x_dense: torch.Tensor) -> torch.Tensor:
        return self.loss_scale * squared_error(pred, x_dense).mean()

    def after_learner_step(self, pred: torch.Tensor, x_dense: torch.Tensor) -> None:
        """Called with the batch's (detached) predictions after every learner update."""

    def state(self) -> dict:
        return {}


class WeightedObjective(Objective):
    """s · mean_i ω_i · mean_u (x̂_ui − x_ui)² with fixed item weights ω (IPW)."""

    def __init__(self, loss_scale: float, weights: np.ndarray, device) -> None:
        super().__init__(loss_scale)
        self.weights = torch.as_tensor(weights, dtype=torch.float32, device=device)

    def item_weights(self) -> torch.Tensor:
        return self.weights

    def learner_loss(self, pred, x_dense):
        return self.loss_scale * (squared_error(pred, x_dense).mean(dim=0) * self.weights).mean()


class TailObjective(Objective):
    """CVaR tail optimisation over cells: λ · s · mean(η + ReLU(e − η)/β), e the squared error, η learned.

    The reference code (``model/tail_opt.py``) learns α = 10⁴·η with SGD at lr 0.1 (no momentum,
    cosine-annealed with the rest), so η moves by 0.1/10⁸ = 1e-9 · ∂L/∂η per step: ``eta_lr: 1e-9``
    with ``eta_momentum: 0`` is the same schedule. At that rate η stays ≈ 0 and the loss is
    λ·s·mean(e)/β: plain EASE by gradient with the loss scaled by λ/β.
    """

    def __init__(self, loss_scale: float, beta: float, device, lam: float = 1.0) -> None:
        super().__init__(loss_scale)
        self.beta = beta
        self.lam = lam
        self.eta = nn.Parameter(torch.zeros((), device=device))

    def parameters(self):
        return [self.eta]

    def learner_loss(self, pred, x_dense):
        e = squared_error(pred, x_dense)
        return self.lam * self.loss_scale * (self.eta + torch.relu(e - self.eta) / self.beta).mean()

    def state(self) -> dict:
        return {"eta": float(self.eta.detach())}


class AdversarialObjective(Objective):
    """Adversarially re-weighted items: the learner minimises s · mean_i ω_i ℓ_i with
    ω = (1 − lam) + lam·ŵ, ŵ the adversary's weights normalised to mean 1; after each learner step
    the adversary takes one step maximising mean_i ŵ_i · d_i, d_i = −u_i / mean|u| the item's
    disadvantage, u_i a moving average of its per-item utility (:func:`item_utility`) divided by
    the users that hold it (``dist_ones``) or by the users seen."""

    def __init__(self, loss_scale: float, adversary: ItemAdversary, x_items: torch.Tensor, *, lam: float, kind: str,
                 dist_ones: bool, k: int, momentum: float, optimizer: torch.optim.Optimizer) -> None:
        super().__init__(loss_scale)
        self.adversary = adversary
        self.x_items = x_items
        self.lam = lam
        self.kind = kind
        self.dist_ones = dist_ones
        self.k = k
        self.momentum = momentum
        self.optimizer = optimizer
        n = x_items.shape[0]
        dev = x_items.device
        self.utility_sum = torch.zeros(n, device=dev)
        self.utility_count = torch.zeros(n, device=dev)
        self._refresh()
        self.last_adversary_loss = float("nan")

    @torch.no_grad()
    def _refresh(self) -> None:
        self.weights = mean_one(self.adversary(self.x_items)).detach()

    def item_weights(self) -> torch.Tensor:
        return (1.0 - self.lam) + self.lam * self.weights

    def learner_loss(self, pred, x_dense):
        per_item = squared_error(pred, x_dense).mean(dim=0)
        return self.loss_scale * (per_item * self.item_weights()).mean()

    def after_learner_step(self, pred, x_dense):
        with torch.no_grad():
            u = item_utility(pred, x_dense, self.k, self.kind)
            c = x_dense.sum(dim=0) if self.dist_ones else torch.full_like(u, float(x_dense.shape[0]))
            self.utility_sum.mul_(self.momentum).add_(u)
            self.utility_count.mul_(self.momentum).add_(c)
            utility = self.utility_sum / self.utility_count.clamp_min(1e-12)
            disadvantage = -utility / utility.abs().mean().clamp_min(1e-12)
        self.optimizer.zero_grad(set_to_none=True)
        loss = -(mean_one(self.adversary(self.x_items)) * disadvantage).mean()
        loss.backward()
        self.optimizer.step()
        self.last_adversary_loss = float(loss.detach())
        self._refresh()

    def state(self) -> dict:
        return {"adversary_loss": self.last_adversary_loss}
