"""Figures of the explanation experiment (matplotlib, headless): each returns a Figure."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from steps.figures import plt

COLORS = {"exact": "C0", "kernel": "C1", "pruned": "C2"}
OLDER = "older"  # x label of the pruned group of older events


def attribution_bars(attributions: pl.DataFrame, users: pl.DataFrame, max_users: int = 12) -> plt.Figure:
    """One panel per explained user: attribution of events −1 … −L (most recent on the left),
    one bar per estimator; the pruned group of older events is the last bar (``older``)."""
    user_ids = users["user_id"].unique(maintain_order=True).to_list()[:max_users]
    estimators = attributions["estimator"].unique(maintain_order=True).to_list()
    cols = min(3, max(len(user_ids), 1))
    rows = max(1, math.ceil(len(user_ids) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.2 * rows), squeeze=False)
    width = 0.8 / max(len(estimators), 1)
    for ax, user in zip(axes.ravel(), user_ids):
        sub = attributions.filter(pl.col("user_id") == user)
        n_events = int(users.filter(pl.col("user_id") == user)["n_events"][0])
        x = np.arange(n_events + 1)  # positions −1..−L, then the "older" slot
        for i, est in enumerate(estimators):
            e = sub.filter(pl.col("estimator") == est)
            heights = np.full(n_events + 1, np.nan)
            slots = (-e["event_position"] - 1).fill_null(n_events).to_numpy()  # −1 → 0, …, group → L
            heights[slots] = e["attribution"].to_numpy()
            ax.bar(x + (i - (len(estimators) - 1) / 2) * width, heights, width, color=COLORS.get(est), label=est)
        f = users.filter(pl.col("user_id") == user).row(0, named=True)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(x, [str(-(j + 1)) for j in range(n_events)] + [OLDER], fontsize=7)
        ax.set_title(f"user {user}: f(x) − f(baseline) = {f['f_x'] - f['f_baseline']:.3g}", fontsize=9)
        ax.set_xlabel("event (−1 = most recent)", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    for ax in axes.ravel()[len(user_ids):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def recency_profile_plot(profile: pl.DataFrame) -> plt.Figure:
    """Average |attribution| by event position across users, one line per estimator."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for (est,), grp in profile.group_by(["estimator"], maintain_order=True):
        grp = grp.sort("event_position", descending=True)
        ax.plot(-grp["event_position"].to_numpy(), grp["mean_abs_attribution"], "o-", color=COLORS.get(est), label=est)
    ax.set_xlabel("events back (1 = most recent)")
    ax.set_ylabel("mean |attribution| over users")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def pruning_horizon_hist(users: pl.DataFrame) -> plt.Figure:
    """Distribution of TimeSHAP's pruning horizon (events kept) over the explained users."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    kept = users.filter(pl.col("estimator") == "pruned")["n_events_kept"].to_numpy()
    if len(kept):
        ax.hist(kept, bins=np.arange(kept.min() - 0.5, kept.max() + 1.5), color=COLORS["pruned"], rwidth=0.85)
    else:
        ax.text(0.5, 0.5, "the pruned estimator was not run", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("events kept as individual players (the rest form one group)")
    ax.set_ylabel("users")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig
