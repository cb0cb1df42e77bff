"""One explanation's record and its three tables (the contract between the attribution code, the
join and the report; no torch here, so the tasks that join and report do not import it).

Tables (Polars):

* attributions — ``user_id, event_position, item_id, attribution, estimator, baseline``;
  ``event_position`` −1 is the most recent event, −L the oldest. With the ``pruned`` estimator the
  events older than the pruning horizon form one player, reported as one row with a null
  ``event_position`` and ``item_id`` (a "group" of a single event is reported as that event).
* explained users — ``user_id, estimator, baseline, f_x, f_baseline, top_k_items, n_events,
  n_events_kept, seconds``: for every (user, estimator) the attributions sum to ``f_x − f_baseline``.
* feature attributions — ``user_id, feature, n_events, attribution, estimator, baseline``.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

ATTRIBUTION_SCHEMA = {
    "user_id": pl.Int64, "event_position": pl.Int64, "item_id": pl.Int64,
    "attribution": pl.Float64, "estimator": pl.String, "baseline": pl.String,
}
USER_SCHEMA = {
    "user_id": pl.Int64, "estimator": pl.String, "baseline": pl.String, "f_x": pl.Float64,
    "f_baseline": pl.Float64, "top_k_items": pl.List(pl.Int64), "n_events": pl.Int64,
    "n_events_kept": pl.Int64, "seconds": pl.Float64,
}
FEATURE_SCHEMA = {
    "user_id": pl.Int64, "feature": pl.String, "n_events": pl.Int64,
    "attribution": pl.Float64, "estimator": pl.String, "baseline": pl.String,
}


@dataclass
class Explanation:
    attributions: pl.DataFrame
    users: pl.DataFrame
    features: pl.DataFrame
