"""One user's explanation: the top-K (computed once, from the unperturbed history), f(x),
f(baseline), and event-level attributions from each requested estimator (plus feature-level
attributions when items carry a feature).

The three tables and their schemas: :mod:`steps.explain.explanation`.
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl
import torch

from steps.errors import InputError
from steps.explain.config import ExplainConfig
from steps.explain.data import FEATURE, ITEM, SeqData
from steps.explain.explanation import ATTRIBUTION_SCHEMA, FEATURE_SCHEMA, USER_SCHEMA, Explanation
from steps.explain.game import SequenceGame, all_coalitions, single_threaded_kernels
from steps.explain.model import GRU4Rec
from steps.explain.shapley import kernel_shap, prune_horizon, pruned_players, shapley_from_values
from steps.seeding import rng_for

#: Feature-level games with more distinct features than this use Kernel SHAP instead of enumeration.
FEATURE_EXACT_MAX = 14
NO_FEATURE = "<none>"



@torch.no_grad()
def top_k_items(
    model: GRU4Rec, history: np.ndarray, k: int, exclude_history: bool = True, consumed: np.ndarray | None = None,
    n_items: int | None = None,
) -> np.ndarray:
    """The model's top-``k`` items after the unperturbed ``history`` (highest score first; equal
    scores: lower item id first). The padding item is never recommended; with ``exclude_history``
    neither is anything the user consumed: ``consumed`` (all their earlier items, also those older
    than the ``history_max`` window) or, when not given, the history's items. ``n_items`` limits
    the catalogue to the data's items when a loaded checkpoint has more embeddings."""
    history = np.asarray(history, dtype=np.int64)
    n_items = model.spec.n_items if n_items is None else min(int(n_items), model.spec.n_items)
    if len(history) == 0:
        raise InputError("history: an empty history has no top-K to explain")
    with single_threaded_kernels():  # the thread policy of every evaluation (game.run_chunks)
        scores = model.score_all(torch.from_numpy(history)[None, :], torch.tensor([len(history)]))[0, :n_items].double().numpy()
    eligible = np.ones(n_items, dtype=bool)
    eligible[0] = False
    if exclude_history:
        eligible[history[history < n_items]] = False
        if consumed is not None:
            consumed = np.asarray(consumed, dtype=np.int64)
            eligible[consumed[consumed < n_items]] = False
    n_eligible = int(eligible.sum())
    if k > n_eligible:
        raise InputError(
            f"top_k: K = {k} is larger than the {n_eligible} items that can be recommended "
            f"(catalogue of {n_items - 1} items{', minus the items the user consumed' if exclude_history else ''})"
        )
    order = np.argsort(np.where(eligible, -scores, np.inf), kind="stable")
    return order[:k].astype(np.int64)


def feature_codes(data: SeqData) -> tuple[np.ndarray, list[str]] | None:
    """``(codes, feature names)``: categorical data gives one code per item id (−1 for items
    without the feature); multi-valued (multi-hot) data a boolean ``(n_items, n_names)`` matrix
    of which values each item holds."""
    if data.item_features is None:
        return None
    feats = data.item_features.filter(pl.col(FEATURE).is_not_null())
    names = sorted(feats[FEATURE].unique().to_list())
    lookup = {n: i for i, n in enumerate(names)}
    items = feats[ITEM].to_numpy()
    idx = feats[FEATURE].replace_strict(lookup, return_dtype=pl.Int64).to_numpy()
    if data.multi_hot:
        member = np.zeros((data.n_items, len(names)), dtype=bool)
        member[items, idx] = True
        return member, names
    codes = np.full(data.n_items, -1, dtype=np.int64)
    codes[items] = idx
    return codes, names


def explain_user(
    model: GRU4Rec, user_id: int, history: np.ndarray, cfg: ExplainConfig,
    features: tuple[np.ndarray, list[str]] | None = None, consumed: np.ndarray | None = None,
    n_items: int | None = None,
) -> Explanation:
    """Explain ``model``'s top-K for one user with every estimator of ``cfg`` (see the module
    docstring). ``model`` sets the arithmetic: pass a float64 copy for float64 attributions.
    ``consumed``: every item the user consumed before (see :func:`top_k_items`).

    The exact Shapley values of the event game are computed at most once: ``pruned`` reuses them
    when its horizon keeps every event (or all but the oldest one, a "group" of one event)."""
    history = np.asarray(history, dtype=np.int64)
    top_k = top_k_items(model, history, cfg.top_k, cfg.exclude_history_from_top_k, consumed, n_items)
    game = SequenceGame(model, history, top_k, cfg.baseline, scale=cfg.scale)
    L = len(history)
    f_x, f_b = game.full_value(), game.empty_value()
    positions = np.arange(L) - L
    baseline = cfg.baseline_name
    att_rows, user_rows = [], []
    exact: list[np.ndarray] = []  # the event game's exact Shapley values, once computed

    def exact_phi() -> np.ndarray:
        if not exact:
            exact.append(shapley_from_values(game.all_values()))
        return exact[0]

    for estimator in cfg.estimators:
        t0 = time.perf_counter()
        n_kept, played = L, game
        if estimator == "kernel":
            rng = rng_for(cfg.seed, "explain", estimator, int(user_id))
            phi = kernel_shap(game.values, L, cfg.kernel_samples, rng, f_b, f_x)
        else:
            if estimator == "pruned":
                n_kept = prune_horizon(game.event_values, L, cfg.pruning_tolerance).n_kept
                players = pruned_players(L, n_kept)
                if players.max() + 1 < L:
                    played = game.with_players(players)
            phi = exact_phi() if played is game else shapley_from_values(played.all_values())
        seconds = time.perf_counter() - t0
        grouped = played.n_players < L  # pruned: player 0 is the group of older events
        n_single = played.n_players - int(grouped)
        pos, items = positions[L - n_single :].tolist(), history[L - n_single :].tolist()
        if grouped:
            pos, items = [None] + pos, [None] + items
        att_rows.append(pl.DataFrame(
            {"user_id": int(user_id), "event_position": pos, "item_id": items, "attribution": phi,
             "estimator": estimator, "baseline": baseline}, schema=ATTRIBUTION_SCHEMA,
        ))
        user_rows.append({"user_id": int(user_id), "estimator": estimator, "baseline": baseline, "f_x": f_x,
                          "f_baseline": f_b, "top_k_items": top_k.tolist(), "n_events": L, "n_events_kept": n_kept,
                          "seconds": seconds})
    attributions = pl.concat(att_rows)
    feature_table = pl.DataFrame(schema=FEATURE_SCHEMA)
    if cfg.feature_level and features is not None:
        feature_table = explain_features(game, features, user_id, cfg, (f_b, f_x))
    return Explanation(attributions, pl.DataFrame(user_rows, schema=USER_SCHEMA), feature_table)


def feature_membership(features: tuple[np.ndarray, list[str]], history: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """``(member, labels)``: ``member[t, p]`` = event ``t``'s item holds feature value ``p``, over the
    values present in the history (sorted), with a last player :data:`NO_FEATURE` for events whose
    item holds none."""
    codes, names = features
    rows = codes[history]
    if rows.ndim == 1:
        member = rows[:, None] == np.arange(len(names))[None, :]
    else:
        member = rows.astype(bool)
    used = np.flatnonzero(member.any(axis=0))
    member, labels = member[:, used], [names[i] for i in used]
    none = ~member.any(axis=1)
    if none.any():
        member, labels = np.column_stack([member, none]), labels + [NO_FEATURE]
    return member, labels


def events_present(coalitions: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Event masks ``(B, L)`` of feature coalitions ``(B, M)``: an event is present when every
    feature value its item holds is present (leaving out a genre leaves out all its films)."""
    missing = (~np.asarray(coalitions, dtype=bool)).astype(np.int32) @ member.T.astype(np.int32)
    return missing == 0


def explain_features(
    game: SequenceGame, features: tuple[np.ndarray, list[str]], user_id: int, cfg: ExplainConfig,
    ends: tuple[float, float],
) -> pl.DataFrame:
    """Feature-level attributions: one player per feature value among the history's items; an
    event is present when all the values of its item are (a categorical feature: its one value;
    a multi-valued one such as a film's genres: every genre of the film). Exact up to
    :data:`FEATURE_EXACT_MAX` players, Kernel SHAP above; they sum to f(x) − f(baseline).
    ``n_events``: the history's events whose item holds the value."""
    member, labels = feature_membership(features, game.history)
    m = len(labels)

    def value_fn(coalitions: np.ndarray) -> np.ndarray:
        return game.event_values(events_present(coalitions, member))

    if m <= FEATURE_EXACT_MAX:
        estimator, phi = "exact", shapley_from_values(value_fn(all_coalitions(m)))
    else:
        estimator = "kernel"
        phi = kernel_shap(value_fn, m, cfg.kernel_samples, rng_for(cfg.seed, "explain_features", int(user_id)), *ends)
    return pl.DataFrame({
        "user_id": int(user_id), "feature": labels, "n_events": member.sum(axis=0),
        "attribution": phi, "estimator": estimator, "baseline": cfg.baseline_name,
    }, schema=FEATURE_SCHEMA)
