"""Semantic item-tail promotion: data protocol, item-item models, training, evaluation.

* :mod:`steps.tail.data` — loaders for ML-20M / Netflix Prize / MSD raw files and the
  strong-generalisation split of Liang et al. (2018), cached as sparse-matrix files;
* :mod:`steps.tail.synthetic` — a synthetic ML-20M ``ratings.csv`` with a popularity long tail and
  item clusters (latent item "semantics");
* :mod:`steps.tail.models` — closed-form EASE and the gradient-trained item-item model;
* :mod:`steps.tail.objectives` — the objectives of the gradient-trained methods (ease_gd, IPW,
  tail_opt's CVaR, adversarial) and the item adversary;
* :mod:`steps.tail.train` — the one training loop shared by every gradient-trained method;
* :mod:`steps.tail.evaluate` — top-k lists for held-out users and every metric of the report;
* :mod:`steps.tail.report` — tables, figures and the export of a TailFlow run.
"""
