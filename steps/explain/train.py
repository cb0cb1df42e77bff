"""Training GRU4Rec (BPR with resampled negatives, or full-softmax cross-entropy), evaluation
(HR@K / nDCG@K over 1 positive + sampled negatives, or the full catalogue) and a popularity ranker.

Training is reproducible on CPU: the weights come from an explicit seed, every epoch's shuffling
and negatives from ``rng_for(seed, "train", epoch)``, and PyTorch runs with
``use_deterministic_algorithms(True)``. Early stopping keeps the epoch with the best dev nDCG@5.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from steps.errors import InputError
from steps.explain.config import ExplainConfig
from steps.explain.data import ITEM, SPLIT, USER, Instances, SeqData, build_instances, clicked_keys, sample_negatives
from steps.explain.model import GRU4Rec
from steps.metrics import heldout_ranking_metrics, pessimistic_positions
from steps.seeding import rng_for
from steps.torchtools import deterministic_torch
from steps.uncertainty import CellMeans, UncertaintySpec

EARLY_STOP_METRIC = "ndcg_at_5"


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def bpr_loss(scores: torch.Tensor) -> torch.Tensor:
    """ReChorus' BPR: column 0 is the positive; several negatives are pooled with softmax weights
    (one negative = plain BPR, −log σ(pos − neg))."""
    pos, neg = scores[:, 0], scores[:, 1:]
    weights = (neg - neg.max()).softmax(dim=1)
    return F.softplus(-(pos - (neg * weights).sum(dim=1))).mean()


def full_softmax_loss(all_scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over every real item (the padding item 0 is excluded)."""
    logits = all_scores.clone()
    logits[:, 0] = -torch.inf
    return F.cross_entropy(logits, targets)


def _optimizer(model: GRU4Rec, cfg: ExplainConfig) -> torch.optim.Optimizer:
    weights = [p for n, p in model.named_parameters() if "bias" not in n]
    biases = [p for n, p in model.named_parameters() if "bias" in n]
    return torch.optim.Adam([{"params": weights}, {"params": biases, "weight_decay": 0.0}], lr=cfg.lr, weight_decay=cfg.l2)


def training_negative_exclusions(data: SeqData) -> np.ndarray:
    """Keys (user * n_items + item) never drawn as a user's training negatives: their *train*
    items. Excluding their dev/test items too would hand the held-out labels to the model
    (ReChorus samples training negatives the same way)."""
    train_rows = data.split("train")
    return clicked_keys(train_rows[USER].to_numpy(), train_rows[ITEM].to_numpy(), data.n_items)


def train_gru4rec(data: SeqData, cfg: ExplainConfig, log=print) -> tuple[GRU4Rec, pl.DataFrame]:
    """Train on ``train`` rows, stop early on dev nDCG@5, return the best model and the epoch log."""
    train = build_instances(data, "train", cfg.history_max)
    dev = build_instances(data, "dev", cfg.history_max)
    if len(train) == 0:
        raise InputError(f"{data.source}: no training rows with a history (every user needs >= 2 train interactions)")
    keys = training_negative_exclusions(data)
    rows = []
    with deterministic_torch():
        model = GRU4Rec(data.n_items, cfg.emb_size, cfg.hidden_size, seed=cfg.seed)
        opt = _optimizer(model, cfg)
        best, best_state, since_best = -np.inf, copy.deepcopy(model.state_dict()), 0
        for epoch in range(1, cfg.max_epochs + 1):
            t0 = time.perf_counter()
            rng = rng_for(cfg.seed, "train", epoch)
            order = rng.permutation(len(train))
            negatives = None
            if cfg.loss == "bpr":
                negatives = sample_negatives(rng, train.users, cfg.num_neg, keys, data.n_items, distinct=False)
            model.train()
            losses = []
            for start in range(0, len(order), cfg.batch_size):
                b = order[start : start + cfg.batch_size]
                hist, lengths, targets = _t(train.histories[b]), _t(train.lengths[b]), _t(train.targets[b])
                if cfg.loss == "bpr":
                    cands = torch.cat([targets[:, None], _t(negatives[b])], dim=1)
                    loss = bpr_loss(model(hist, lengths, cands))
                else:
                    loss = full_softmax_loss(model.score_all(hist, lengths), targets)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            dev_metrics = evaluate_sampled(model, dev, (5, 10), cfg.eval_batch_size)
            score = dev_metrics[EARLY_STOP_METRIC]
            improved = score > best
            if improved:
                best, best_state, since_best = score, copy.deepcopy(model.state_dict()), 0
            else:
                since_best += 1
            rows.append({"epoch": epoch, "loss": float(np.mean(losses)), "dev_hr_at_5": dev_metrics["hr_at_5"],
                         "dev_ndcg_at_5": score, "dev_ndcg_at_10": dev_metrics["ndcg_at_10"],
                         "best": improved, "seconds": time.perf_counter() - t0})
            log(f"epoch {epoch}: loss {rows[-1]['loss']:.4f}, dev nDCG@5 {score:.4f}{' *' if improved else ''}")
            if since_best >= cfg.early_stop_patience:
                log(f"early stop: dev nDCG@5 has not improved for {since_best} epochs")
                break
        model.load_state_dict(best_state)
    return model.eval(), pl.DataFrame(rows)


# --------------------------------------------------------------------------- scoring
@torch.no_grad()
def predict_candidates(model: GRU4Rec, inst: Instances, batch_size: int = 1024) -> np.ndarray:
    """``(n, 1 + n_neg)`` float64 scores of ``[positive, negatives...]`` for each instance."""
    model.eval()
    cands = np.concatenate([inst.targets[:, None], inst.negatives], axis=1)
    out = [
        model(_t(inst.histories[s : s + batch_size]), _t(inst.lengths[s : s + batch_size]), _t(cands[s : s + batch_size]))
        for s in range(0, len(inst), batch_size)
    ]
    return torch.cat(out).double().numpy() if out else np.zeros((0, cands.shape[1]))


def evaluate_sampled(model: GRU4Rec, inst: Instances, ks: tuple[int, ...], batch_size: int = 1024) -> dict[str, float]:
    scores = predict_candidates(model, inst, batch_size)
    return _mean(heldout_ranking_metrics(pessimistic_positions(scores[:, 0], scores[:, 1:]), ks))


def _mean(per_row: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(np.mean(v)) if len(v) else float("nan") for k, v in per_row.items()}


def item_popularity(data: SeqData) -> np.ndarray:
    """Train interactions per item id (``(n_items,)``): the popularity ranker's scores."""
    items = data.split("train")[ITEM].to_numpy()
    return np.bincount(items, minlength=data.n_items).astype(np.float64)


def known_interactions(data: SeqData, split: str) -> np.ndarray:
    """Keys (user * n_items + item) of what a user did before rows of ``split`` (for masking)."""
    before = ("train",) if split == "dev" else ("train", "dev")
    sub = data.interactions.filter(pl.col(SPLIT).is_in(before))
    return clicked_keys(sub[USER].to_numpy(), sub[ITEM].to_numpy(), data.n_items)


@torch.no_grad()
def full_ranking_positions(
    score_batch, inst: Instances, known: np.ndarray, n_items: int, batch_size: int = 1024
) -> np.ndarray:
    """Pessimistic position of each positive among every item the user has not interacted with
    before (the padding item and the user's earlier items are masked; the positive never is).

    ``score_batch(rows) -> (len(rows), n_items)`` scores every item for those instances.
    """
    out = []
    all_items = np.arange(n_items, dtype=np.int64)
    for s in range(0, len(inst), batch_size):
        rows = np.arange(s, min(s + batch_size, len(inst)))
        scores = np.array(score_batch(rows), dtype=np.float64)
        mask = np.isin(inst.users[rows, None] * n_items + all_items[None, :], known)
        mask[:, 0] = True
        pos_scores = scores[np.arange(len(rows)), inst.targets[rows]]
        mask[np.arange(len(rows)), inst.targets[rows]] = True  # the positive is not its own competitor
        out.append(pessimistic_positions(pos_scores, np.where(mask, -np.inf, scores)))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _check_ks(ks: tuple[int, ...], n_candidates: int, what: str) -> None:
    if max(ks) > n_candidates:
        raise InputError(f"ks: K = {max(ks)} is larger than the {n_candidates} candidates per row of {what}")


def model_metrics(model: GRU4Rec, data: SeqData, cfg: ExplainConfig) -> pl.DataFrame:
    """HR@K / nDCG@K / MRR of GRU4Rec and of the popularity ranker on dev and test.

    One row per (model, split, protocol): ``sampled`` = the positive against the file's negatives;
    ``full`` (with ``full_ranking``) = against every item the user has not seen. With
    ``uncertainty`` on, every metric also has its bootstrap interval and GRU4Rec its paired
    difference to POP (:func:`metric_rows`).
    """
    pop = item_popularity(data)
    rows = []
    for split in ("dev", "test"):
        inst = build_instances(data, split, cfg.history_max)
        if len(inst) == 0:
            continue
        _check_ks(cfg.ks, 1 + inst.negatives.shape[1], f"{split}.csv (1 positive + {inst.negatives.shape[1]} negatives)")
        gru = predict_candidates(model, inst, cfg.eval_batch_size)
        cands = np.concatenate([inst.targets[:, None], inst.negatives], axis=1)
        sampled = {name: heldout_ranking_metrics(pessimistic_positions(s[:, 0], s[:, 1:]), cfg.ks)
                   for name, s in (("GRU4Rec", gru), ("POP", pop[cands]))}
        rows += metric_rows(sampled, split, "sampled", cfg.uncertainty)
        if cfg.full_ranking:
            _check_ks(cfg.ks, data.n_items - 1, "the full catalogue")
            rows += metric_rows(_full_ranking_metrics(model, data, inst, split, pop, cfg), split, "full", cfg.uncertainty)
    return pl.DataFrame(rows)


def _full_ranking_metrics(model: GRU4Rec, data: SeqData, inst: Instances, split: str, pop: np.ndarray,
                          cfg: ExplainConfig) -> dict[str, dict[str, np.ndarray]]:
    """Per model (GRU4Rec, POP), the per-row metrics of the positive against every unseen item."""
    known = known_interactions(data, split)

    def gru_scores(r):
        # a loaded checkpoint may hold more item embeddings than the data has items
        return model.score_all(_t(inst.histories[r]), _t(inst.lengths[r]))[:, : data.n_items].double().numpy()

    def pop_scores(r):
        return np.broadcast_to(pop, (len(r), len(pop)))

    return {name: heldout_ranking_metrics(full_ranking_positions(fn, inst, known, data.n_items, cfg.eval_batch_size), cfg.ks)
            for name, fn in (("GRU4Rec", gru_scores), ("POP", pop_scores))}


#: ``model_metrics``' paired comparison: GRU4Rec against POP, POP its own baseline (delta 0, no test).
MODEL_BASELINE = {"GRU4Rec": "POP", "POP": "POP"}


def metric_rows(per_row: dict[str, dict[str, np.ndarray]], split: str, protocol: str, spec: UncertaintySpec) -> list[dict]:
    """``model_metrics`` rows of one (split, protocol) from each model's per-row metric arrays
    (``{model: {metric: (rows,)}}``, the same evaluated rows for every model).

    Each row holds ``model, split, protocol, rows`` and the metrics' means; with ``spec`` enabled
    then, per metric ``m``, ``m_lo``/``m_hi`` (bootstrap interval, units = the evaluated rows) and
    ``delta_m``, ``delta_m_lo``/``_hi``, ``p_m``: GRU4Rec − POP paired on the same rows and
    resamples (POP's own row: delta 0, p None). Every (split, protocol) uses the same seeded
    ``spec``: groups of equal size get the same resample weights, which is harmless, as each
    group's intervals and tests are read on their own (Holm then counts every p-value).
    """
    n = len(next(iter(next(iter(per_row.values())).values())))
    rows = [{"model": name, "split": split, "protocol": protocol, "rows": n, **_mean(m)} for name, m in per_row.items()]
    if not spec.enabled or n == 0:
        return rows
    metrics = list(next(iter(per_row.values())))
    cells = CellMeans(list(per_row), metrics, n, spec, baseline={c: MODEL_BASELINE.get(c) for c in per_row})
    cells.add(np.arange(n), {c: np.column_stack([m[k] for k in metrics]) for c, m in per_row.items()})
    return [{**r, **cells.columns(r["model"])} for r in rows]
