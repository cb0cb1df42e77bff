"""The one training loop shared by every gradient-trained method (ease_gd, ipw, tail_opt, adversarial).

Each epoch visits the training users in a seeded random order, in mini-batches; per batch the
learner takes one optimiser step on its method's loss (then diag(B) is reset to 0), and an
adversarial method's adversary takes its own step right after (alternating updates). After every
epoch the model's lists for the validation users are scored; the best epoch by the early-stopping
metric (Recall@20 or nDCG@100) is kept (``select_epoch: best``; ``last`` keeps the last epoch run,
the reference code's protocol), and training stops after ``patience`` epochs without improvement.
The learning rates (the learner's, η's and the adversary's, as in the reference's single optimiser)
follow a cosine schedule over ``epochs`` (or stay constant). ``drop_last`` skips each epoch's last
partial batch, as the reference's loader does. With SGD the learner (and η, unless
``eta_momentum`` says otherwise) use momentum 0.9 and the adversary none, as the reference.

Methods with learner item weights (ipw, adversarial) also record, per epoch, the drift of the
weights and their rank correlation with popularity (:mod:`steps.tail.diagnostics`).
Everything random comes from explicit seeds; torch runs with deterministic algorithms, so a
re-run (or a resumed task) reproduces the same matrix on the same machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from steps import metrics
from steps.errors import InputError
from steps.seeding import rng_for
from steps.tail.config import MethodSpec, Training
from steps.tail.diagnostics import spearman, weight_drift
from steps.tail.evaluate import heldout_hits, topk_lists
from steps.tail.models import ItemItem, to_torch_sparse
from steps.tail.objectives import (
    AdversarialObjective,
    ItemAdversary,
    Objective,
    TailObjective,
    WeightedObjective,
    ipw_weights,
)
from steps.torchtools import deterministic_torch


@dataclass
class FitResult:
    B: np.ndarray  # float32 item-item matrix of the best epoch
    epochs: int  # epochs run
    best_epoch: int
    history: pl.DataFrame  # epoch, train_loss, valid_recall_at_20, valid_ndcg_at_100, lr, extra
    seconds: float
    item_weights: np.ndarray | None = None  # learner item weights of the selected epoch (ipw / adversarial)
    selected_epoch: int = 0  # the epoch whose model is returned (best_epoch, or the last with select_epoch: last)
    diagnostics: dict | None = None  # weight_first_step, weight_drift_after_first_step, weight_popularity_spearman


def make_optimizer(params, training: Training, lr: float, weight_decay: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD (with ``momentum``; param groups may set their own) or Adam."""
    if training.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, training: Training):
    return (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=training.epochs) if training.schedule == "cosine"
            else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0))


def build_objective(method: MethodSpec, train: sp.csr_matrix, item_counts: np.ndarray, device) -> Objective:
    tr = method.training
    if method.name == "ease_gd":
        return Objective(tr.loss_scale)
    if method.name == "ipw":
        return WeightedObjective(tr.loss_scale, ipw_weights(item_counts, method.alpha), device)
    if method.name == "tail_opt":
        return TailObjective(tr.loss_scale, method.beta, device, lam=method.lam)
    if method.name == "adversarial":
        n_users, n_items = train.shape
        density = train.nnz / float(n_users * n_items)
        adversary = ItemAdversary(n_users, method.adversary, method.nstd, density, init=method.adv_init).to(device)
        opt = make_optimizer(adversary.parameters(), tr, method.alr, method.awd, momentum=0.0)  # reference: no momentum
        return AdversarialObjective(
            tr.loss_scale, adversary, to_torch_sparse(train.T.tocsr(), device), lam=method.lam, kind=method.aloss,
            dist_ones=method.dist_ones, k=method.adv_k, momentum=method.momentum, optimizer=opt,
        )
    raise InputError(f"{method.name!r} is not a gradient-trained method")


def validation_scores(B: torch.Tensor, valid_tr: sp.csr_matrix, valid_te: sp.csr_matrix, batch_users: int, device) -> dict:
    """Mean Recall@20 and nDCG@100 of the validation users that have held-out items."""
    hits = heldout_hits(topk_lists(B, valid_tr, 100, batch_users, device), valid_te)
    offsets, pos = hits.offsets, hits.positions
    return {"recall_at_20": float(np.nanmean(metrics.recall_at_k(offsets, pos, 20))),
            "ndcg_at_100": float(np.nanmean(metrics.ndcg_at_k(offsets, pos, 100)))}


def _weights(objective: Objective) -> torch.Tensor | None:
    """A copy of the objective's current learner item weights (None for unweighted objectives)."""
    w = objective.item_weights()
    return None if w is None else w.detach().clone()


def _np(w: torch.Tensor | np.ndarray) -> np.ndarray:
    return w.cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)


def batch_starts(n_rows: int, batch_size: int, drop_last: bool = False) -> range:
    """First rows of an epoch's batches; ``drop_last`` leaves out a last batch smaller than ``batch_size``."""
    stop = (n_rows // batch_size) * batch_size if drop_last else n_rows
    return range(0, stop, batch_size)


def run_epoch(model: ItemItem, objective: Objective, optimizer: torch.optim.Optimizer, train: sp.csr_matrix,
              order: np.ndarray, batch_size: int, device, drop_last: bool = False, after_first_step=None) -> float:
    """One pass over ``train``'s rows in ``order``; returns the mean learner loss. ``after_first_step``
    (if given) is called once, after the first batch's updates."""
    total, n = 0.0, 0
    starts = batch_starts(len(order), batch_size, drop_last)
    if len(starts) == 0:
        raise InputError(f"drop_last with batch_size {batch_size} > {len(order)} training users leaves no batch to train on")
    for start in starts:
        xb = train[order[start : start + batch_size]]
        x = to_torch_sparse(xb, device)
        x_dense = x.to_dense()
        pred = model(x)
        loss = objective.learner_loss(pred, x_dense)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.zero_diagonal_()
        objective.after_learner_step(pred.detach(), x_dense)
        total += float(loss.detach()) * xb.shape[0]
        n += xb.shape[0]
        if after_first_step is not None:
            after_first_step()
            after_first_step = None
    return total / max(n, 1)


def _optimizer_and_schedules(model: ItemItem, objective: Objective, method: MethodSpec):
    """The learner's optimiser (with η's group, if the objective has one) and the learning-rate
    schedules of it and of the adversary's optimiser."""
    tr = method.training
    groups = [{"params": model.parameters(), "lr": tr.lr, "weight_decay": tr.wd}]
    if objective.parameters():
        eta_group = {"params": objective.parameters(), "lr": method.eta_lr, "weight_decay": 0.0}
        if tr.optimizer == "sgd":
            eta_group["momentum"] = method.eta_momentum
        groups.append(eta_group)
    optimizer = make_optimizer(groups, tr, tr.lr, tr.wd)
    schedules = [make_schedule(optimizer, tr)]
    adv_opt = getattr(objective, "optimizer", None)
    if adv_opt is not None:  # the reference anneals the adversary's rate with the learner's (one optimiser)
        schedules.append(make_schedule(adv_opt, tr))
    return optimizer, schedules


def _check_finite(model: ItemItem, loss: float, method: MethodSpec, epoch: int) -> None:
    lr = method.training.lr
    if not bool(torch.isfinite(model.B.detach().sum())):  # finite sum <=> every entry finite (or an overflow: diverged too)
        raise InputError(f"{method.name}: the item-item matrix B became non-finite in epoch {epoch}; lower lr (now {lr})")
    if not np.isfinite(loss):
        raise InputError(f"{method.name}: the training loss became {loss} in epoch {epoch}; lower lr (now {lr})")


def _weight_diagnostics(objective: Objective, snap: dict, item_counts: np.ndarray) -> dict:
    """The learner item weights' drift since the last epoch and rank correlation with popularity."""
    w_now = _weights(objective)
    if w_now is None:
        return {}
    w_np = _np(w_now)
    diag = {"weight_drift": weight_drift(snap.get("prev", snap["first"]), w_np),
            "weight_popularity_spearman": spearman(w_np, item_counts)}
    snap["prev"] = w_np
    return diag


def fit_item_item(method: MethodSpec, train: sp.csr_matrix, valid_tr: sp.csr_matrix, valid_te: sp.csr_matrix,
                  item_counts: np.ndarray, seed: int, device: torch.device | str = "cpu", batch_users: int = 1000,
                  log=print) -> FitResult:
    """Train ``method`` with early stopping on the validation users (see the module docstring)."""
    tr = method.training
    t0 = time.perf_counter()
    train = sp.csr_matrix(train, dtype=np.float32)
    n_users, n_items = train.shape
    with deterministic_torch(int(rng_for(seed, "torch-init", method.name).integers(2**31))):
        model = ItemItem(n_items).to(device)
        objective = build_objective(method, train, item_counts, device)
        optimizer, schedules = _optimizer_and_schedules(model, objective, method)
        best_score, best_epoch, best_B, best_weights, stale = -np.inf, 0, None, None, 0
        w_init = _weights(objective)
        snap: dict = {}
        rows = []
        for epoch in range(1, tr.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]
            order = rng_for(seed, "tail-epoch", method.name, epoch).permutation(n_users)
            hook = (lambda: snap.__setitem__("first", _np(_weights(objective)))) if epoch == 1 and w_init is not None else None
            loss = run_epoch(model, objective, optimizer, train, order, tr.batch_size, device, tr.drop_last, hook)
            _check_finite(model, loss, method, epoch)
            scores = validation_scores(model.B.detach(), valid_tr, valid_te, batch_users, device)
            diag = _weight_diagnostics(objective, snap, item_counts)
            rows.append({"epoch": epoch, "train_loss": loss, "lr": lr, **{f"valid_{k}": v for k, v in scores.items()},
                         **objective.state(), **diag})
            log(f"{method.name} epoch {epoch}: loss {loss:.5g} valid recall@20 {scores['recall_at_20']:.4f} "
                f"ndcg@100 {scores['ndcg_at_100']:.4f}")
            if scores[tr.early_stopping] > best_score:
                best_score, best_epoch, stale = scores[tr.early_stopping], epoch, 0
                if tr.select_epoch == "best":  # (with ``last`` no copy of B is kept)
                    best_B = model.B.detach().clone()
                    best_weights = _weights(objective)
            else:
                stale += 1
                if stale >= tr.patience:
                    break
            for s in schedules:
                s.step()
        if tr.select_epoch == "last" or best_B is None:  # (None: no epoch had a comparable score)
            chosen, chosen_B, chosen_weights = len(rows), model.B.detach().clone(), _weights(objective)
        else:
            chosen, chosen_B, chosen_weights = best_epoch, best_B, best_weights
    weights = None if chosen_weights is None else chosen_weights.cpu().numpy().astype(np.float64)
    diagnostics = None
    if weights is not None:
        first = snap["first"]
        diagnostics = {"weight_first_step": weight_drift(_np(w_init), first),
                       "weight_drift_after_first_step": weight_drift(first, weights),
                       "weight_popularity_spearman": spearman(weights, item_counts)}
    return FitResult(
        B=chosen_B.cpu().numpy().astype(np.float32), epochs=len(rows), best_epoch=best_epoch,
        history=pl.DataFrame(rows), seconds=time.perf_counter() - t0, item_weights=weights, selected_epoch=chosen,
        diagnostics=diagnostics,
    )
