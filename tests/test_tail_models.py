"""EASE (against Cornac), the gradient model, objectives, adversary, lists (steps/tail/models.py, objectives.py, evaluate.py, train.py)."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from steps.errors import ConfigError, InputError
from steps.tail.config import Evaluation, MethodSpec, Protocol, SyntheticSpec, Training
from steps.tail.evaluate import (
    _topk_rows,
    evaluate_lists,
    heldout_hits,
    popularity_buckets,
    popularity_penalty,
    tail_items,
    topk_lists,
)
from steps.tail.models import ItemItem, ease_closed_form, ease_l2_for_weight_decay, resolve_device, to_torch_sparse
from steps.tail.objectives import AdversarialObjective, ItemAdversary, Objective, TailObjective, WeightedObjective
from steps.tail.objectives import ipw_weights, item_utility, mean_one
from steps.tail.synthetic import iter_synthetic_ratings
from steps.tail.data import split_strong_generalisation
from steps.tail.diagnostics import spearman, weight_drift
from steps.tail.train import batch_starts, fit_item_item, run_epoch


@pytest.fixture(scope="module")
def split():
    import polars as pl

    spec = SyntheticSpec(n_users=700, n_items=150, n_clusters=6, mean_items_per_user=15, popularity_weight=1.0, seed=5)
    raw = pl.concat(list(iter_synthetic_ratings(spec))).select(
        pl.col("userId").alias("user"), pl.col("movieId").alias("item"), "rating")
    return split_strong_generalisation(raw, Protocol(heldout_users=80), seed=11)


# --------------------------------------------------------------------------- EASE vs Cornac
def _reference_topk(scores: np.ndarray, fold_in: sp.csr_matrix, k: int) -> np.ndarray:
    """Independent top-k: mask fold-in items, stable sort by (−score, item index)."""
    s = np.where(fold_in.toarray() > 0, -np.inf, scores)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.where(np.isneginf(np.take_along_axis(s, order, axis=1)), -1, order)


def test_closed_form_ease_equals_cornac(split):
    from cornac.data import Dataset
    from cornac.models import EASE

    lam = 50.0
    train = split.train
    coo = train.tocoo()
    triplets = [(f"u{u}", f"i{i}", 1.0) for u, i in zip(coo.row.tolist(), coo.col.tolist())]
    ds = Dataset.from_uir(triplets, seed=0)
    model = EASE(lamb=lam, posB=False, verbose=False).fit(ds)
    # Cornac numbers items in order of appearance: map its B into our column order
    idx = np.array([ds.iid_map[f"i{i}"] for i in range(train.shape[1])])
    b_cornac = model.B[np.ix_(idx, idx)]
    b_ours = ease_closed_form(train, lam)
    np.testing.assert_allclose(b_ours, b_cornac, rtol=0, atol=1e-9)
    # same top-k lists and metrics for the held-out test users
    k = 50
    ours = topk_lists(b_ours, split.test_tr, k)
    ref = _reference_topk(np.asarray(split.test_tr @ b_cornac), split.test_tr, k)
    np.testing.assert_array_equal(ours, ref)
    counts = np.diff(train.tocsc().indptr)
    ev = Evaluation()
    groups = (tail_items(counts, ev.tail), popularity_buckets(counts, ev.buckets))
    m_ours = evaluate_lists(ours, split.test_te, counts, train.shape[0], *groups, ev).summary
    m_ref = evaluate_lists(ref, split.test_te, counts, train.shape[0], *groups, ev).summary
    for key in ("recall_at_20", "recall_at_50", "ndcg_at_50", "coverage_at_20", "gini", "tail_share"):
        assert m_ours[key] == pytest.approx(m_ref[key], abs=1e-6)
    assert m_ours["recall_at_20"] > 0.05  # the lists are far better than nothing


def test_ease_hand_checked():
    # X = [[1, 1], [1, 0]]: XᵀX = [[2, 1], [1, 1]]; + λI (λ = 1) = [[3, 1], [1, 2]]
    # P = 1/5 · [[2, −1], [−1, 3]];  B_01 = −P_01 / P_11 = (1/5) / (3/5) = 1/3;  B_10 = −P_10 / P_00 = 1/2
    b = ease_closed_form(sp.csr_matrix([[1.0, 1.0], [1.0, 0.0]]), 1.0)
    np.testing.assert_allclose(b, [[0.0, 1 / 3], [0.5, 0.0]])
    with pytest.raises(ConfigError, match="positive λ"):
        ease_closed_form(sp.csr_matrix([[1.0]]), 0.0)


def test_gradient_model_converges_to_closed_form():
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((40, 10)) < 0.35).astype(np.float32))
    scale, wd = 10.0, 0.05
    lam = ease_l2_for_weight_decay(wd, 40, 10, scale)  # = 0.05 · 40 · 10 / 20 = 1.0
    assert lam == pytest.approx(1.0)
    torch.manual_seed(0)
    model = ItemItem(10)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=wd)
    order = np.arange(40)
    for _ in range(1500):  # full batch: one step per epoch
        run_epoch(model, Objective(scale), opt, x, order, batch_size=40, device="cpu")
    np.testing.assert_allclose(model.B.detach().numpy(), ease_closed_form(x, lam), atol=2e-4)
    assert (model.B.detach().diagonal() == 0).all()


# --------------------------------------------------------------------------- objectives
def test_ipw_weights():
    # α = ln 2: w ∝ 2^-count = [1, 1/2, 1/4]; mean 7/12 -> [12/7, 6/7, 3/7]
    np.testing.assert_allclose(ipw_weights(np.array([0, 1, 2]), math.log(2)), [12 / 7, 6 / 7, 3 / 7])
    w = ipw_weights(np.array([0, 10_000]), 1.0)  # no overflow / NaN for huge counts
    assert np.isfinite(w).all() and w.mean() == pytest.approx(1.0)


def test_weighted_and_tail_losses():
    pred = torch.tensor([[0.0, 1.0, 2.0]])
    x = torch.tensor([[0.0, 0.0, 0.0]])
    # squared errors [0, 1, 4]; weights [1, 1, 4]: mean = (0 + 1 + 16)/3; × scale 2
    loss = WeightedObjective(2.0, np.array([1.0, 1.0, 4.0]), "cpu").learner_loss(pred, x)
    assert float(loss) == pytest.approx(2 * 17 / 3)
    tail = TailObjective(1.0, beta=0.5, device="cpu")
    with torch.no_grad():
        tail.eta.fill_(1.0)
    # η + ReLU(e − η)/β = [1, 1, 1 + 3/0.5] -> mean 3
    assert float(tail.learner_loss(pred, x).detach()) == pytest.approx(3.0)
    # λ weights the CVaR loss (the reference's lamda): λ = 10 -> 30
    tail10 = TailObjective(1.0, beta=0.5, device="cpu", lam=10.0)
    with torch.no_grad():
        tail10.eta.fill_(1.0)
    assert float(tail10.learner_loss(pred, x).detach()) == pytest.approx(30.0)


def test_item_utility_recall_and_recall_dist():
    pred = torch.tensor([[0.9, 0.8, 0.1, 0.0], [0.1, 0.9, 0.8, 0.0]])
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    # top-2: user 0 -> items {0, 1}, hits item 0; user 1 -> items {1, 2}, hits items 1 and 2
    assert item_utility(pred, x, 2, "recall").tolist() == [1.0, 1.0, 1.0, 0.0]
    # recall_dist: a hit counts 1/min(k, #held): user 0 holds 2 -> 1/2; user 1 holds 3 -> 1/min(2, 3) = 1/2
    assert item_utility(pred, x, 2, "recall_dist").tolist() == [0.5, 0.5, 0.5, 0.0]


def test_adversary_shapes_centring_and_start():
    """The centring follows the reference's naming (only names
    that start with ``b`` centre the input: ``b2mlpN``; ``2bmlpN`` does not), and ``b2mlpN``
    keeps PyTorch's default first-layer init as the reference."""
    rng = np.random.default_rng(1)
    x = (rng.random((30, 12)) < 0.3).astype(np.float32)  # 30 users × 12 items
    items = to_torch_sparse(sp.csr_matrix(x.T))
    density = float(x.mean())
    torch.manual_seed(0)
    for struct in ("linear", "2mlp4", "2bmlp2"):
        adv = ItemAdversary(30, struct, nstd=1.5, density=density)
        assert not adv.centred
        w = adv(items)
        assert w.shape == (12,)
        np.testing.assert_allclose(w.detach().numpy(), 0.5)  # zero first layer: every weight ½
    b = ItemAdversary(30, "b2mlp2", nstd=1.5, density=density)
    assert b.centred and float(b.first.weight.detach().abs().sum()) > 0  # default init, not zero
    assert float(b(items).detach().std()) > 0.01
    dense = torch.tensor(x.T)
    centred = (dense - density) / math.sqrt(density * (1 - density))
    # b2mlpN: centred input, no ×nstd before tanh: BN → tanh → Linear → BN, then ×nstd → sigmoid
    assert [type(m).__name__ for m in b.head] == ["BatchNorm1d", "Tanh", "Linear", "BatchNorm1d"]
    torch.testing.assert_close(b(items), torch.sigmoid(1.5 * b.head(centred @ b.first.weight.T)).squeeze(1))
    # 2bmlpN: ×nstd before tanh, input not centred
    adv = ItemAdversary(30, "2bmlp2", nstd=1.0, density=density)
    assert [type(m).__name__ for m in adv.head] == ["BatchNorm1d", "_Scale", "Tanh", "Linear", "BatchNorm1d"]
    with torch.no_grad():
        adv.first.weight.normal_()
    torch.testing.assert_close(adv(items), torch.sigmoid(adv.head(dense @ adv.first.weight.T)).squeeze(1))
    for bad in ("3mlp2", "bmlp2", "2mlp0", "b2bmlp2"):
        with pytest.raises(ConfigError, match="adversary: expected linear, 2mlpN, 2bmlpN or b2mlpN"):
            ItemAdversary(30, bad, 1.0, 0.1)
    with pytest.raises(ConfigError, match="adv_init: unknown value 'xavier'"):
        ItemAdversary(30, "2mlp2", 1.0, 0.1, init="xavier")


def _reversal_drift(x: sp.csr_matrix, struct: str, init: str, alr: float, steps: int = 20) -> tuple[float, float]:
    """One SGD step of the adversary alone on a fixed disadvantage d, then ``steps`` on −d: the
    mean |Δω| of the first step and of the later ones."""
    items = to_torch_sparse(x.T.tocsr())
    d = torch.tensor(np.random.default_rng(0).normal(size=x.shape[1]), dtype=torch.float32)
    torch.manual_seed(0)
    adv = ItemAdversary(x.shape[0], struct, 1.5, x.nnz / np.prod(x.shape), init=init)
    opt = torch.optim.SGD(adv.parameters(), lr=alr)
    w = [mean_one(adv(items)).detach()]
    for t in range(steps + 1):
        opt.zero_grad()
        (-(mean_one(adv(items)) * (d if t == 0 else -d)).mean()).backward()
        opt.step()
        w.append(mean_one(adv(items)).detach())
    return float((w[1] - w[0]).abs().mean()), float((w[-1] - w[1]).abs().mean())


def test_paper_init_freezes_after_the_first_step_and_scaled_init_keeps_adapting(split):
    x = split.train
    for struct in ("2bmlp2", "2mlp8"):
        first, later = _reversal_drift(x, struct, "paper", alr=0.1)
        assert first > 0.1 and later < 1e-4, (struct, first, later)  # one large step, then (almost) frozen
        s_first, s_later = _reversal_drift(x, struct, "scaled", alr=0.1)
        assert s_later > 1000 * later and s_later > 0.05, (struct, s_later, later)
    # the scaled init's first layer gives every hidden unit unit standard deviation over the items
    torch.manual_seed(0)
    adv = ItemAdversary(x.shape[0], "2mlp8", 1.0, x.nnz / np.prod(x.shape), init="scaled")
    items = to_torch_sparse(x.T.tocsr())
    adv(items)
    np.testing.assert_allclose(adv._hidden(items).std(dim=0).detach().numpy(), 1.0, rtol=1e-4)


def test_adversary_upweights_items_with_low_utility():
    # 6 items; the learner's lists always hit items 0-2 (utility high) and never 3-5
    rng = np.random.default_rng(2)
    x = sp.csr_matrix((rng.random((50, 6)) < 0.5).astype(np.float32))
    torch.manual_seed(0)
    adv = ItemAdversary(50, "linear", nstd=1.0, density=0.5)
    obj = AdversarialObjective(1.0, adv, to_torch_sparse(x.T.tocsr()), lam=1.0, kind="recall", dist_ones=True, k=3,
                               momentum=0.9, optimizer=torch.optim.Adam(adv.parameters(), lr=0.05))
    pred = torch.tensor([[3.0, 2.0, 1.0, -1.0, -2.0, -3.0]]).repeat(50, 1)
    xd = torch.tensor(x.toarray())
    for _ in range(30):
        obj.after_learner_step(pred, xd)
    w = obj.item_weights().numpy()
    assert w[3:].min() > w[:3].max()
    assert w.mean() == pytest.approx(1.0, abs=1e-5)
    assert mean_one(torch.tensor([1.0, 3.0])).tolist() == [0.5, 1.5]


# --------------------------------------------------------------------------- lists
def test_topk_ties_by_lower_index_and_empty_slots():
    s = torch.tensor([[0.0, 1.0, 1.0, 0.0, float("-inf")], [3.0, 0.0, 0.0, 0.0, 0.0]])
    assert _topk_rows(s, 3).tolist() == [[1, 2, 0], [0, 1, 2]]
    assert _topk_rows(torch.tensor([[1.0, float("-inf"), float("-inf")]]), 3).tolist() == [[0, -1, -1]]


def test_topk_lists_mask_fold_in_and_pop_rerank():
    b = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 0.2], [0.5, 0.2, 0.0]], dtype=np.float32)
    fold_in = sp.csr_matrix([[1.0, 0.0, 0.0]])
    # scores of user = row 0 of B: [0, 1, .5]; item 0 is folded in -> list [1, 2, -1]
    assert topk_lists(b, fold_in, 3).tolist() == [[1, 2, -1]]
    # popularity penalty: counts [1, 100, 0] -> π = log1p(c)/log1p(100) = [.150, 1, 0]
    pen = popularity_penalty(np.array([1, 100, 0]))
    np.testing.assert_allclose(pen, [math.log(2) / math.log(101), 1.0, 0.0])
    # γ = 0.6: s' = s − 0.6 · max(s) · π = [−, 1 − 0.6, 0.5 − 0] -> item 2 before item 1
    assert topk_lists(b, fold_in, 2, penalty=pen, gamma=0.6).tolist() == [[2, 1]]


def test_topk_lists_reject_nan_scores():
    b = np.array([[0.0, np.nan, 0.5], [1.0, 0.0, 0.2], [0.5, 0.2, 0.0]], dtype=np.float32)
    # user 0 folds in item 2 only: scores = row 2 of B, all finite; user 1 folds in item 0: row 0 holds NaN
    fold_in = sp.csr_matrix([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert topk_lists(b, fold_in[:1], 3).tolist() == [[0, 1, -1]]
    with pytest.raises(InputError, match=r"scores X·B of fold-in row 1 hold NaN.*B has 1 NaN or infinite entries of 3²"):
        topk_lists(b, fold_in, 3)


def test_heldout_hits():
    topk = np.array([[2, 0, 1], [-1, -1, -1], [1, 2, -1]])
    # user 0 holds out items 0 and 3, user 1 (empty list) item 1, user 2 nothing
    heldout = sp.csr_matrix(([1.0, 1.0, 1.0], ([0, 0, 1], [0, 3, 1])), shape=(3, 4))
    hits = heldout_hits(topk, heldout)
    assert hits.users.tolist() == [0]
    assert hits.offsets.tolist() == [0, 2] and hits.items.tolist() == [0, 3]
    assert hits.positions.tolist() == [1, 3]  # item 0 at position 1; item 3 not in the list -> K = 3


def test_tail_and_buckets():
    counts = np.array([50, 30, 10, 5, 3, 2])
    # least popular half of the items
    assert tail_items(counts, type("T", (), {"by": "items", "fraction": 0.5})()).tolist() == [False, False, False, True, True, True]
    # least popular items holding <= 10 % of 100 interactions: 2 + 3 + 5 = 10
    assert tail_items(counts, type("T", (), {"by": "interactions", "fraction": 0.1})()).tolist() == [False, False, False, True, True, True]
    # equal-mass buckets of 100 interactions: cumulative before = 0, 50, 80, 90, 95, 98 -> ×2/100 -> 0, 1, 1, 1, 1, 1
    assert popularity_buckets(counts, 2).tolist() == [0, 1, 1, 1, 1, 1]


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="cuda"):
            resolve_device("cuda")


# --------------------------------------------------------------------------- training loop
@pytest.mark.parametrize("name, extra", [("ease_gd", {}), ("ipw", {"alpha": 0.01}), ("tail_opt", {"beta": 0.2}),
                                         ("adversarial", {"adversary": "2bmlp2", "alr": 0.01})])
def test_fit_is_reproducible_and_early_stops(split, name, extra):
    counts = np.diff(split.train.tocsc().indptr)
    m = MethodSpec(name=name, training=Training(epochs=4, batch_size=128, lr=3e-3, wd=0.5, patience=2), **extra)
    a = fit_item_item(m, split.train, split.valid_tr, split.valid_te, counts, seed=3, log=lambda s: None)
    b = fit_item_item(m, split.train, split.valid_tr, split.valid_te, counts, seed=3, log=lambda s: None)
    np.testing.assert_array_equal(a.B, b.B)
    assert 1 <= a.best_epoch <= a.epochs <= 4
    assert a.history.height == a.epochs
    assert (np.diag(a.B) == 0).all()
    best = a.history["valid_ndcg_at_100"].max()
    assert a.history["valid_ndcg_at_100"][a.best_epoch - 1] == best
    if name in ("ipw", "adversarial"):
        assert a.item_weights is not None and a.item_weights.mean() == pytest.approx(1.0, abs=1e-5)


def test_diverging_training_names_method_epoch_and_lr():
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((40, 6)) < 0.5).astype(np.float32))
    m = MethodSpec(name="ease_gd", training=Training(epochs=3, batch_size=2, optimizer="sgd", lr=1e6))
    with pytest.raises(InputError, match=r"ease_gd: the item-item matrix B became non-finite in epoch 1; lower lr \(now 1000000.0\)"):
        fit_item_item(m, x[:30], x[30:], x[30:], np.diff(x[:30].tocsc().indptr), seed=0, log=lambda s: None)


def test_item_weights_come_from_the_best_epoch(split):
    counts = np.diff(split.train.tocsc().indptr)
    tr = Training(epochs=4, batch_size=128, lr=1e-2, wd=0.5, patience=3, schedule="constant")
    m = MethodSpec(name="adversarial", training=tr, adversary="2bmlp2", alr=0.05)
    full = fit_item_item(m, split.train, split.valid_tr, split.valid_te, counts, seed=3, log=lambda s: None)
    assert full.best_epoch < full.epochs  # the weights moved on after the best epoch
    # a run that stops at the best epoch follows the same (constant-lr) path: its last weights are the best epoch's
    upto = MethodSpec(name="adversarial", training=Training(**{**tr.__dict__, "epochs": full.best_epoch}), adversary="2bmlp2", alr=0.05)
    short = fit_item_item(upto, split.train, split.valid_tr, split.valid_te, counts, seed=3, log=lambda s: None)
    np.testing.assert_array_equal(short.B, full.B)
    np.testing.assert_array_equal(short.item_weights, full.item_weights)


def test_eta_moves_as_the_reference_code():
    """eta_lr 1e-9, no momentum: one full-batch SGD step from η = 0 moves η by −1e-9·∂L/∂η, with
    ∂L/∂η = λ·s·(1 − share of cells with e > 0 / β) at B = 0 (e = x², so the positive cells)."""
    rng = np.random.default_rng(4)
    x = sp.csr_matrix((rng.random((40, 8)) < 0.25).astype(np.float32))
    train, valid = x[:30], x[30:]
    density = train.nnz / (30 * 8)
    tr = Training(epochs=1, batch_size=64, optimizer="sgd", lr=0.05, loss_scale=1000, schedule="constant")
    m = MethodSpec(name="tail_opt", training=tr, beta=0.5, lam=10.0, eta_lr=1e-9, eta_momentum=0.0)
    fit = fit_item_item(m, train, valid, valid, np.diff(train.tocsc().indptr), seed=0, log=lambda s: None)
    grad = 10.0 * 1000 * (1 - density / 0.5)
    assert fit.history["eta"][0] == pytest.approx(-1e-9 * grad, rel=1e-5)


def test_batch_starts_and_drop_last():
    assert list(batch_starts(10, 4)) == [0, 4, 8]
    assert list(batch_starts(10, 4, drop_last=True)) == [0, 4]
    assert list(batch_starts(8, 4, drop_last=True)) == [0, 4]
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((40, 6)) < 0.5).astype(np.float32))
    m = MethodSpec(name="ease_gd", training=Training(epochs=1, batch_size=50, drop_last=True))
    with pytest.raises(InputError, match="drop_last with batch_size 50 > 30 training users leaves no batch"):
        fit_item_item(m, x[:30], x[30:], x[30:], np.diff(x[:30].tocsc().indptr), seed=0, log=lambda s: None)
    # dropping the last partial batch changes the path; keeping it (the default) is the old loop
    kw = dict(epochs=2, batch_size=7, lr=1e-2, wd=0.5, schedule="constant")
    runs = {d: fit_item_item(MethodSpec(name="ease_gd", training=Training(**kw, drop_last=d)), x[:30], x[30:], x[30:],
                             np.diff(x[:30].tocsc().indptr), seed=0, log=lambda s: None) for d in (False, True)}
    assert not np.array_equal(runs[False].B, runs[True].B)


def test_select_epoch_last_returns_the_last_epoch(split):
    counts = np.diff(split.train.tocsc().indptr)
    tr = Training(epochs=4, batch_size=128, lr=1e-2, wd=0.5, patience=3, schedule="constant")
    best = fit_item_item(MethodSpec(name="adversarial", training=tr, alr=0.05), split.train, split.valid_tr,
                         split.valid_te, counts, seed=3, log=lambda s: None)
    assert best.best_epoch < best.epochs and best.selected_epoch == best.best_epoch
    tr_last = Training(**{**tr.__dict__, "select_epoch": "last"})
    last = fit_item_item(MethodSpec(name="adversarial", training=tr_last, alr=0.05), split.train, split.valid_tr,
                         split.valid_te, counts, seed=3, log=lambda s: None)
    assert (last.epochs, last.best_epoch, last.selected_epoch) == (best.epochs, best.best_epoch, best.epochs)
    # the returned model scores what the last epoch scored, not what the best did
    from steps.tail.train import validation_scores
    got = validation_scores(torch.as_tensor(last.B), split.valid_tr, split.valid_te, 1000, "cpu")
    assert got["ndcg_at_100"] == pytest.approx(last.history["valid_ndcg_at_100"][-1], abs=1e-6)
    assert got["ndcg_at_100"] < last.history["valid_ndcg_at_100"].max()
    assert not np.array_equal(last.item_weights, best.item_weights)


def test_weight_diagnostics_hand_checked():
    assert weight_drift(np.array([1.0, 1.0, 1.0]), np.array([1.5, 0.5, 1.0])) == pytest.approx(1 / 3)
    assert spearman(np.array([3.0, 1.0, 2.0]), np.array([30, 10, 20])) == pytest.approx(1.0)
    # ties get average ranks: x ranks [1, 2.5, 2.5, 4], y ranks [4, 3, 2, 1] -> −4.5 / √(4.5 · 5)
    assert spearman(np.array([1.0, 2.0, 2.0, 3.0]), np.array([4, 3, 2, 1])) == pytest.approx(-4.5 / math.sqrt(22.5))
    assert math.isnan(spearman(np.ones(3), np.arange(3)))


def test_weight_diagnostics_in_the_fit(split):
    counts = np.diff(split.train.tocsc().indptr)
    tr = Training(epochs=3, batch_size=128, lr=3e-3, wd=0.5, patience=3)
    # IPW: fixed weights exp(−α·count), so no drift and ρ = −1 with popularity (ties on both sides alike)
    ipw = fit_item_item(MethodSpec(name="ipw", training=tr, alpha=0.01), split.train, split.valid_tr, split.valid_te,
                        counts, seed=3, log=lambda s: None)
    assert ipw.diagnostics == {"weight_first_step": 0.0, "weight_drift_after_first_step": 0.0,
                               "weight_popularity_spearman": pytest.approx(-1.0)}
    assert ipw.history["weight_drift"].to_list() == [0.0, 0.0, 0.0]
    # the adversary's first step moves the weights; per epoch the drift and ρ are recorded
    adv = fit_item_item(MethodSpec(name="adversarial", training=tr, alr=0.01), split.train, split.valid_tr, split.valid_te,
                        counts, seed=3, log=lambda s: None)
    assert adv.diagnostics["weight_first_step"] > 0
    assert adv.diagnostics["weight_popularity_spearman"] == pytest.approx(spearman(adv.item_weights, counts))
    assert adv.history["weight_drift"].is_not_null().all() and adv.history["weight_popularity_spearman"].is_between(-1, 1).all()
    ease = fit_item_item(MethodSpec(name="ease_gd", training=tr), split.train, split.valid_tr, split.valid_te,
                         counts, seed=3, log=lambda s: None)
    assert ease.diagnostics is None and "weight_drift" not in ease.history.columns


def test_weight_diagnostics_card_text():
    import polars as pl

    from steps.tail.report import weight_diagnostics_text

    results = pl.DataFrame({"dataset": ["d", "d", "d"], "method": ["ease", "adversarial", "adversarial"],
                            "split": ["test", "validation", "test"], "selected_epoch": [0, 2, 2],
                            "weight_first_step": [None, 0.4, 0.4], "weight_drift_after_first_step": [None, 1e-7, 1e-7],
                            "weight_popularity_spearman": [None, -0.99, -0.99]})
    history = pl.DataFrame({"dataset": ["d", "d"], "method": ["adversarial"] * 2, "epoch": [2, 1],
                            "weight_drift": [2e-8, 3e-7], "weight_popularity_spearman": [-0.99, -0.98]})
    text = weight_diagnostics_text(results, history)
    assert "d / Adversarial (POSIT): first step 0.4, after it 1e-07, ρ = -0.990 (epoch 2); per epoch drift 3e-07, 2e-08, ρ -0.98, -0.99." in text
    assert "EASE" not in text
    assert weight_diagnostics_text(results.filter(pl.col("method") == "ease"), history.clear()) == "No method with learner item weights in this run."
