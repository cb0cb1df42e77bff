"""Normative alignment of news predictions: NAILS, Steck's calibrated re-ranking, and both.

* :mod:`steps.align.config` — the validated settings of an AlignFlow run;
* :mod:`steps.align.data` — the prediction-dump contract (schema, reader, validation) and the
  prepared on-disk layout the methods read;
* :mod:`steps.align.datasets` — which inputs a run aligns, and how each is made ready;
* :mod:`steps.align.synthetic` — synthetic EB-NeRD articles and prediction dumps;
  :mod:`steps.align.synthetic_lists` — a synthetic candidate bundle with multi-genre items;
* :mod:`steps.align.ease_candidates` — EASE top-M candidate lists from a ratings table;
* :mod:`steps.align.categories` — EB-NeRD category names and the paper's short codes;
* :mod:`steps.align.targets` — target distributions p*(E) and the model's p(E);
* :mod:`steps.align.nails` — NAILS re-weighting; :mod:`steps.align.steck` — Steck's greedy
  re-ranking; :mod:`steps.align.selection` — deterministic or sampled top-N;
* :mod:`steps.align.calibration` — per-user targets and multi-genre Steck / NAILS for candidate lists;
* :mod:`steps.align.evaluate` — one method toward one target over the λ grid (prediction dumps);
  :mod:`steps.align.lists` — the same over candidate lists;
* :mod:`steps.align.report` — each method at its best λ, side by side;
  :mod:`steps.align.submission` — EB-NeRD submission files;
* :mod:`steps.align.pipeline` — inputs, joins, exports, summaries of the flow;
  :mod:`steps.align.plots` — figures.
"""
