"""GRU4Rec (ReChorus layout), checkpoints, losses, held-out ranking metrics, training."""

import numpy as np
import polars as pl
import pytest
import torch

from steps.errors import InputError
from steps.explain.config import ExplainConfig
from steps.explain.data import user_histories
from steps.explain.attribute import explain_user, feature_codes
from steps.explain.model import RECHORUS_KEYS, GRU4Rec, as_dtype, load_rechorus_checkpoint, save_checkpoint
from steps.explain.synthetic import synthetic_dataset
from steps.explain.train import bpr_loss, full_softmax_loss, metric_rows, model_metrics, train_gru4rec
from steps.metrics import heldout_ranking_metrics, pessimistic_positions
from steps.uncertainty import UncertaintySpec


# --------------------------------------------------------------------------- metrics (steps/metrics.py)
def test_pessimistic_positions_by_hand():
    pos = np.array([0.5, 0.5, 0.9])
    other = np.array([[0.1, 0.5, 0.7], [0.2, 0.3, -np.inf], [1.0, 0.9, 0.9]])
    # row 0: 0.5 and 0.7 are >= 0.5 → position 2; row 1: none → 0; row 2: all three (ties count) → 3
    assert pessimistic_positions(pos, other).tolist() == [2, 0, 3]


def test_heldout_metrics_by_hand():
    m = heldout_ranking_metrics(np.array([0, 1, 3]), ks=(1, 2))
    # ranks 1, 2, 4: HR@1 = [1,0,0]; HR@2 = [1,1,0]; nDCG@2 = [1/log2(2), 1/log2(3), 0] = [1, 0.6309, 0]
    np.testing.assert_allclose(m["hr_at_1"], [1, 0, 0])
    np.testing.assert_allclose(m["hr_at_2"], [1, 1, 0])
    np.testing.assert_allclose(m["ndcg_at_1"], [1, 0, 0])
    np.testing.assert_allclose(m["ndcg_at_2"], [1, 1 / np.log2(3), 0])
    np.testing.assert_allclose(m["mrr"], [1, 0.5, 0.25])


SPEC = UncertaintySpec(resamples=500, seed=3)


def test_metric_rows_identical_models_differ_by_exactly_zero():
    """GRU4Rec == POP on every row: the difference is 0 on every resample ([0, 0]) and p = 1."""
    per_row = heldout_ranking_metrics(np.array([0, 1, 3, 0, 2, 5] * 10), ks=(1, 2))
    gru, pop = metric_rows({"GRU4Rec": per_row, "POP": dict(per_row)}, "test", "sampled", SPEC)
    assert list(gru)[:8] == ["model", "split", "protocol", "rows", "hr_at_1", "hr_at_2", "ndcg_at_1", "ndcg_at_2"]
    assert gru["rows"] == 60 and gru["hr_at_1"] == pytest.approx(2 / 6)  # positions 0 in 2 of every 6 rows
    for m in ("hr_at_1", "hr_at_2", "ndcg_at_1", "ndcg_at_2", "mrr"):
        assert gru[f"delta_{m}"] == pytest.approx(0, abs=1e-12) and gru[f"p_{m}"] == pytest.approx(1.0)
        assert gru[f"delta_{m}_lo"] == pytest.approx(0, abs=1e-6) and gru[f"delta_{m}_hi"] == pytest.approx(0, abs=1e-6)
        assert (pop[f"delta_{m}"], pop[f"delta_{m}_lo"], pop[f"delta_{m}_hi"], pop[f"p_{m}"]) == (0.0, 0.0, 0.0, None)
        assert gru[f"{m}_lo"] == pop[f"{m}_lo"] and gru[f"{m}_lo"] <= gru[m] <= gru[f"{m}_hi"]


def test_metric_rows_intervals_bracket_the_estimates_and_repeat_with_the_seed():
    """GRU4Rec hits on half of 200 rows, POP on none: HR@1 0.5 ± about 1.96·√(0.25/200) = 0.069,
    POP's interval [0, 0], the difference 0.5 with p ≈ 0; same seed, same columns."""
    n = 200
    gru = {"hr_at_1": np.tile([1.0, 0.0], n // 2), "mrr": np.tile([1.0, 0.5], n // 2)}
    pop = {"hr_at_1": np.zeros(n), "mrr": np.full(n, 0.25)}
    a, b = metric_rows({"GRU4Rec": gru, "POP": pop}, "dev", "full", SPEC)
    assert a["hr_at_1"] == 0.5 and a["mrr"] == 0.75 and (b["hr_at_1_lo"], b["hr_at_1_hi"]) == (0.0, 0.0)
    assert 0.40 < a["hr_at_1_lo"] < 0.46 and 0.54 < a["hr_at_1_hi"] < 0.60
    assert a["delta_hr_at_1"] == pytest.approx(0.5) and a["delta_hr_at_1_lo"] < 0.5 < a["delta_hr_at_1_hi"]
    assert a["delta_mrr"] == pytest.approx(0.5) and a["p_hr_at_1"] < 1e-6 and b["p_mrr"] is None
    again = metric_rows({"GRU4Rec": gru, "POP": pop}, "dev", "full", SPEC)
    for row, first in zip(again, (a, b)):  # the same values, and the same replicates (<m>_star: B resampled values)
        assert row.keys() == first.keys() and len(row["hr_at_1_star"]) == SPEC.resamples
        assert all(np.array_equal(v, first[k]) if k.endswith("_star") else v == first[k] for k, v in row.items())
    other = metric_rows({"GRU4Rec": gru, "POP": pop}, "dev", "full", UncertaintySpec(resamples=500, seed=4))[0]
    assert other["hr_at_1"] == a["hr_at_1"] and other["hr_at_1_lo"] != a["hr_at_1_lo"]
    off = metric_rows({"GRU4Rec": gru, "POP": pop}, "dev", "full", UncertaintySpec(resamples=0))
    assert list(off[0]) == ["model", "split", "protocol", "rows", "hr_at_1", "mrr"]


def test_losses_by_hand():
    # BPR with one negative: softplus(−(2 − 1)) = log(1 + e^−1) = 0.31326
    assert float(bpr_loss(torch.tensor([[2.0, 1.0]]))) == pytest.approx(np.log1p(np.exp(-1.0)), abs=1e-6)
    # two negatives 1 and 3: softmax weights (e^−2, 1)/(1 + e^−2) → pooled neg = (e^−2·1 + 3)/(1 + e^−2)
    pooled = (np.exp(-2) + 3) / (1 + np.exp(-2))
    assert float(bpr_loss(torch.tensor([[2.0, 1.0, 3.0]]))) == pytest.approx(np.log1p(np.exp(pooled - 2)), abs=1e-6)
    # cross-entropy over items 1..2 (item 0 masked): −log(e^2 / (e^2 + e^1))
    ce = float(full_softmax_loss(torch.tensor([[9.0, 2.0, 1.0]]), torch.tensor([1])))
    assert ce == pytest.approx(np.log1p(np.exp(-1.0)), abs=1e-6)


# --------------------------------------------------------------------------- the model
def test_state_dict_has_rechorus_keys_and_init():
    m = GRU4Rec(30, 8, 6, seed=0)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {
        "i_embeddings.weight": (30, 8), "rnn.weight_ih_l0": (18, 8), "rnn.weight_hh_l0": (18, 6),
        "rnn.bias_ih_l0": (18,), "rnn.bias_hh_l0": (18,), "out.weight": (8, 6), "out.bias": (8,),
    }
    assert set(RECHORUS_KEYS) == set(m.state_dict())
    assert torch.all(m.i_embeddings.weight[0] == 0)
    assert 0.005 < float(m.i_embeddings.weight[1:].detach().std()) < 0.02
    assert torch.equal(GRU4Rec(30, 8, 6, seed=0).rnn.weight_hh_l0, m.rnn.weight_hh_l0)


def test_padded_batch_equals_unpadded_runs():
    m = as_dtype(GRU4Rec(30, 8, 6, seed=1), torch.float64)
    hist = torch.tensor([[3, 4, 5, 0, 0], [7, 8, 9, 10, 11]])
    lengths = torch.tensor([3, 5])
    batch = m.score_all(hist, lengths)
    for b in range(2):
        seq = hist[b, : lengths[b]][None]
        _, h = m.rnn(m.i_embeddings(seq))
        np.testing.assert_allclose(batch[b].numpy(), (m.out(h[-1]) @ m.i_embeddings.weight.T)[0].numpy(), atol=1e-12)
    cands = torch.tensor([[1, 2], [3, 4]])
    np.testing.assert_allclose(m(hist, lengths, cands).numpy(), batch.gather(1, cands).numpy(), atol=1e-12)


def test_checkpoint_round_trip_and_rechorus_state_dict(tmp_path):
    m = GRU4Rec(30, 8, 6, seed=2)
    ref = save_checkpoint(m, tmp_path / "m.pt")
    loaded = load_rechorus_checkpoint(ref.path, n_items=30)
    assert (loaded.spec.n_items, loaded.spec.emb_size, loaded.spec.hidden_size) == (30, 8, 6)
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    # a state_dict as ReChorus saves it: plain tensors under its own key names, other sizes
    state = {k: torch.randn(*[{"n": 50, "e": 4, "h": 5, "3h": 15}[d] for d in dims]) for k, dims in RECHORUS_KEYS.items()}
    torch.save(state, tmp_path / "rechorus.pt")
    other = load_rechorus_checkpoint(tmp_path / "rechorus.pt", n_items=40)
    assert torch.equal(other.out.weight, state["out.weight"])


def test_bad_checkpoints(tmp_path):
    state = GRU4Rec(30, 8, 6, seed=2).state_dict()
    torch.save(state, tmp_path / "ok.pt")
    with pytest.raises(InputError, match="30 item embeddings .* item ids up to 44: unknown item ids"):
        load_rechorus_checkpoint(tmp_path / "ok.pt", n_items=45)
    torch.save({**state, "pred_embeddings.weight": torch.zeros(3)}, tmp_path / "extra.pt")
    with pytest.raises(InputError, match=r"unexpected keys \['pred_embeddings.weight'\]"):
        load_rechorus_checkpoint(tmp_path / "extra.pt")
    torch.save({**state, "out.bias": torch.zeros(3)}, tmp_path / "shape.pt")
    with pytest.raises(InputError, match=r"out.bias has shape \(3,\), expected \(8,\)"):
        load_rechorus_checkpoint(tmp_path / "shape.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint"):
        load_rechorus_checkpoint(tmp_path / "junk.pt")


# --------------------------------------------------------------------------- training on synthetic data
TINY = {"emb_size": 8, "hidden_size": 8, "history_max": 6, "max_epochs": 2, "n_neg": 20, "lr": 0.01,
        "synthetic": {"n_users": 60, "n_items": 40, "n_genres": 4, "min_len": 6, "max_len": 12}}


def test_training_is_reproducible():
    cfg = ExplainConfig.from_dict(TINY)
    data = synthetic_dataset(cfg.synthetic, cfg.n_neg)
    a, log_a = train_gru4rec(data, cfg, log=lambda s: None)
    b, log_b = train_gru4rec(data, cfg, log=lambda s: None)
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v)
    assert log_a.drop("seconds").equals(log_b.drop("seconds")) and log_a.height == 2
    ce_cfg = ExplainConfig.from_dict({**TINY, "loss": "ce", "max_epochs": 1, "full_ranking": True, "ks": [1, 5]})
    c, _ = train_gru4rec(data, ce_cfg, log=lambda s: None)
    metrics = model_metrics(c, data, ce_cfg)
    assert metrics.select("model", "split", "protocol").rows() == [
        ("GRU4Rec", "dev", "sampled"), ("POP", "dev", "sampled"), ("GRU4Rec", "dev", "full"), ("POP", "dev", "full"),
        ("GRU4Rec", "test", "sampled"), ("POP", "test", "sampled"), ("GRU4Rec", "test", "full"), ("POP", "test", "full"),
    ]
    points = ["model", "split", "protocol", "rows", "hr_at_1", "hr_at_5", "ndcg_at_1", "ndcg_at_5", "mrr"]
    assert metrics.columns[:9] == points and "p_ndcg_at_5" in metrics.columns
    for m in points[4:]:  # the default uncertainty: intervals over the evaluated rows bracket the estimates
        assert ((metrics[f"{m}_lo"] <= metrics[m] + 1e-12) & (metrics[m] <= metrics[f"{m}_hi"] + 1e-12)).all(), m
    assert metrics.filter(pl.col("model") == "POP")["p_mrr"].null_count() == 4
    with pytest.raises(InputError, match="K = 50 is larger than the 21 candidates"):
        model_metrics(c, data, ExplainConfig.from_dict({**TINY, "ks": [5, 50]}))


def test_checkpoint_with_more_item_embeddings_ranks_only_the_datas_items():
    """A ReChorus checkpoint may hold more item embeddings than the data has items (accepted on
    load); full ranking then scores the data's catalogue only."""
    cfg = ExplainConfig.from_dict({**TINY, "full_ranking": True, "ks": [1, 5]})
    data = synthetic_dataset(cfg.synthetic, cfg.n_neg)
    big = GRU4Rec(data.n_items + 5, 8, 8, seed=1)
    same = GRU4Rec(data.n_items, 8, 8, seed=1)
    with torch.no_grad():  # the same weights for the data's items
        for name, p in same.named_parameters():
            src = dict(big.named_parameters())[name]
            p.copy_(src[: data.n_items] if name == "i_embeddings.weight" else src)
    a, b = model_metrics(big, data, cfg), model_metrics(same, data, cfg)
    assert a.filter(pl.col("protocol") == "full").height == 4
    assert a.equals(b)


@pytest.mark.slow
def test_trained_gru4rec_beats_popularity_and_recent_events_matter_most():
    cfg = ExplainConfig.from_dict({
        "emb_size": 32, "hidden_size": 32, "history_max": 10, "max_epochs": 5, "lr": 0.01, "batch_size": 256,
        "estimators": ["exact"], "top_k": 10, "feature_level": False, "seed": 5,
        "synthetic": {"n_users": 300, "n_items": 200, "n_genres": 5, "min_len": 15, "max_len": 30, "seed": 3},
    })
    data = synthetic_dataset(cfg.synthetic, cfg.n_neg)
    model, log = train_gru4rec(data, cfg, log=lambda s: None)
    metrics = model_metrics(model, data, cfg).filter(pl.col("split") == "test")
    ndcg = dict(zip(metrics["model"], metrics["ndcg_at_10"]))
    assert ndcg["GRU4Rec"] > ndcg["POP"] + 0.05
    users = list(range(1, 21))
    m64 = as_dtype(model, torch.float64)
    histories = user_histories(data, users, cfg.history_max)
    att = pl.concat([explain_user(m64, u, histories[u], cfg, feature_codes(data)).attributions for u in users])
    by_position = att.group_by("event_position").agg(pl.col("attribution").abs().mean().alias("mean_abs")).sort("event_position")
    mean_abs = dict(by_position.iter_rows())
    assert max(mean_abs, key=mean_abs.get) == -1
    assert np.mean([mean_abs[p] for p in (-1, -2)]) > 2 * np.mean([mean_abs[p] for p in range(-10, -4)])
