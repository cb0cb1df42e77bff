"""Explanations of a sequential recommender: GRU4Rec (as in ReChorus) and event-level Shapley
attributions of its top-K (exact, Kernel SHAP, TimeSHAP-style pruning).

Modules: ``config`` (validated experiment settings), ``data`` (ReChorus sequential format,
MovieLens-1M converter, leave-one-out split), ``synthetic`` (sequences with planted structure),
``model`` (GRU4Rec, ReChorus checkpoints), ``train`` (training, evaluation, popularity baseline),
``game`` (the value function v(S) of a user's history), ``shapley`` (estimators), ``attribute``
(one user's explanation), ``pipeline`` (inputs, stored data and model, user sample, joins, report,
export), ``plots`` (figures).
"""
