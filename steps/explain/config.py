"""The explanation experiment's configuration: parsed from YAML, validated with clear messages."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from steps.configtools import common_fields, default_resources, resources_field, TrainingSeedsMixin, run_field, training_seeds, yaml_mapping
from steps.configtools import boolean as _bool
from steps.configtools import choice as _choice
from steps.configtools import integer as _integer
from steps.configtools import number as _number
from steps.errors import ConfigError
from steps.explain.candidates import DataSpec
from steps.explain.synthetic import SyntheticSeqSpec
from steps.uncertainty import UncertaintySpec, uncertainty_key

LOSSES = ("bpr", "ce")
ESTIMATORS = ("exact", "kernel", "pruned")
BASELINE_MODES = ("padding", "removal")
DTYPES = ("float64", "float32")
#: ``value_scale``: the factor on v = mean of the top-K scores. ``notebook`` is the reference
#: notebook's (extpersonalization's ``GRU4Recold.forward`` divides the top-10 mean by 10 again).
VALUE_SCALES = {"mean": 1.0, "notebook": 0.1}
#: Per-step compute requests, memory in MB (``resources.explain`` in ``configs/defaults.yaml``).
DEFAULT_RESOURCES = default_resources("explain")
#: Exact Shapley enumerates 2^M coalitions; above this many events it is refused.
MAX_EXACT_EVENTS = 24


def _int_list(key: str, value: Any, lo: int, allow_empty: bool = False) -> tuple[int, ...]:
    if not isinstance(value, list) or (not value and not allow_empty):
        raise ConfigError(f"{key}: expected a {'' if allow_empty else 'non-empty '}list of integers, got {value!r}")
    out = tuple(_integer(f"{key}[{i}]", x, lo) for i, x in enumerate(value))
    if len(set(out)) != len(out):
        raise ConfigError(f"{key}: repeated values in {list(out)}")
    return out


def parse_baseline(value: Any, key: str = "baseline") -> str | int:
    """``padding`` (item id 0), ``removal`` (the event is skipped) or an item id (int >= 1)."""
    if isinstance(value, str):
        if value in BASELINE_MODES:
            return value
        if value.strip().isdigit():
            value = int(value.strip())
        else:
            raise ConfigError(f"{key}: expected 'padding', 'removal' or an item id, got {value!r}")
    return _integer(key, value, 1)


@dataclass(frozen=True)
class ExplainConfig(TrainingSeedsMixin):
    """Validated settings of one explanation experiment (see ``configs/explain_synthetic.yaml``)."""

    name: str = "explain"
    seed: int = 2024  # data, the users to explain; and the training seed when seeds is not given
    # training seeds: GRU4Rec is trained once per seed; default (seed,). The first seed's model is explained
    seeds: tuple[int, ...] = ()
    # data (used when this project builds the split: synthetic data or the ML-1M converter)
    n_neg: int = 99
    # GRU4Rec
    emb_size: int = 64
    hidden_size: int = 64
    history_max: int = 20
    # training
    loss: str = "bpr"
    num_neg: int = 1
    lr: float = 1e-3
    l2: float = 0.0
    batch_size: int = 256
    eval_batch_size: int = 1024
    max_epochs: int = 30
    early_stop_patience: int = 5
    # evaluation
    ks: tuple[int, ...] = (5, 10, 20, 50)
    full_ranking: bool = False
    # explanation
    explain_users: int = 8
    explain_user_ids: tuple[int, ...] = ()
    top_k: int = 10
    exclude_history_from_top_k: bool = True
    baseline: str | int = "padding"
    value_scale: str = "mean"
    estimators: tuple[str, ...] = ESTIMATORS
    kernel_samples: int = 2048
    pruning_tolerance: float = 0.05
    feature_level: bool = True
    item_feature: str = "auto"
    explain_dtype: str = "float64"
    synthetic: SyntheticSeqSpec = field(default_factory=SyntheticSeqSpec)
    # data: {source: ml100k, path: ""} converts MovieLens-100K (steps/explain/candidates.py)
    data: DataSpec = field(default_factory=DataSpec)
    candidates_top_m: int = 100  # GRU4Rec's top-M for the test rows as a candidate bundle (0: none)
    resources: Mapping[str, Mapping[str, int]] = resources_field(DEFAULT_RESOURCES)
    run: Mapping[str, Any] = run_field()
    # bootstrap intervals of model_metrics and GRU4Rec − POP differences (steps.uncertainty; resamples: 0 = off)
    uncertainty: UncertaintySpec = field(default_factory=UncertaintySpec)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> "ExplainConfig":
        raw = dict(raw or {})
        d = common_fields(raw, set(cls.__dataclass_fields__), DEFAULT_RESOURCES)
        d.update(_model_fields(raw))
        d.update(_explanation_fields(raw))
        d.update(uncertainty_key(raw))
        cfg = cls(**d)
        exact_like = {"exact", "pruned"} & set(cfg.estimators)
        if exact_like and cfg.history_max > MAX_EXACT_EVENTS:
            raise ConfigError(
                f"history_max: {cfg.history_max} events is too many for the {sorted(exact_like)} estimator(s) "
                f"(2^{cfg.history_max} coalitions); use <= {MAX_EXACT_EVENTS} or only 'kernel'"
            )
        if "synthetic" in raw:  # a synthetic section was written for this config: check it now
            cfg.check_synthetic_room()
        if cfg.explain_users == 0 and not cfg.explain_user_ids:
            raise ConfigError("explain_users: 0 users to explain and no explain_user_ids; set explain_users >= 1 "
                              "or list explain_user_ids")
        return cfg

    def check_synthetic_room(self) -> None:
        """Synthetic users need ``n_neg`` negatives besides their own items (checked when the run
        synthesises data; real data is checked against ``n_neg`` by its converter)."""
        if self.synthetic.n_items <= self.n_neg + self.synthetic.max_len:
            raise ConfigError(
                f"synthetic.n_items: {self.synthetic.n_items} items leave too few negatives to sample n_neg = "
                f"{self.n_neg} per row for users with up to synthetic.max_len = {self.synthetic.max_len} events "
                f"(n_items > n_neg + max_len required)"
            )

    @property
    def scale(self) -> float:
        """The factor on v (see :data:`VALUE_SCALES`)."""
        return VALUE_SCALES[self.value_scale]

    @property
    def baseline_name(self) -> str:
        """How the baseline is written in tables: ``padding``, ``removal`` or ``item:<id>``."""
        return self.baseline if isinstance(self.baseline, str) else f"item:{self.baseline}"

    def as_dict(self) -> dict[str, Any]:
        """Plain data (nested dataclasses as dicts, tuples as lists), as the YAML would hold it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _model_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Sizes, training and evaluation settings."""
    d: dict[str, Any] = {}
    positive_ints = ("n_neg", "emb_size", "hidden_size", "history_max", "num_neg", "batch_size",
                     "eval_batch_size", "max_epochs", "early_stop_patience", "top_k", "kernel_samples")
    for key in positive_ints:
        if key in raw:
            d[key] = _integer(key, raw[key], 1)
    for key in ("explain_users",):
        if key in raw:
            d[key] = _integer(key, raw[key], 0)
    if "lr" in raw:
        d["lr"] = _number("lr", raw["lr"], 0.0, lo_open=True)
    if "l2" in raw:
        d["l2"] = _number("l2", raw["l2"], 0.0)
    if "pruning_tolerance" in raw:
        d["pruning_tolerance"] = _number("pruning_tolerance", raw["pruning_tolerance"], 0.0, 1.0)
    if "loss" in raw:
        d["loss"] = _choice("loss", raw["loss"], LOSSES)
    if "value_scale" in raw:
        d["value_scale"] = _choice("value_scale", raw["value_scale"], tuple(VALUE_SCALES))
    return d


def _explanation_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    """What is explained and how; the data sections."""
    d: dict[str, Any] = {}
    if "item_feature" in raw:
        v = raw["item_feature"]
        if not isinstance(v, str) or not (v == "auto" or (v.startswith("i_") and len(v) > 2)):
            raise ConfigError(f"item_feature: expected 'auto' or an item_meta.csv column name starting with 'i_', got {v!r}")
        d["item_feature"] = v
    if "explain_dtype" in raw:
        d["explain_dtype"] = _choice("explain_dtype", raw["explain_dtype"], DTYPES)
    for key in ("full_ranking", "exclude_history_from_top_k", "feature_level"):
        if key in raw:
            d[key] = _bool(key, raw[key])
    if "seeds" in raw:
        d["seeds"] = training_seeds(raw, 0)
    if "ks" in raw:
        d["ks"] = tuple(sorted(_int_list("ks", raw["ks"], 1)))
    if "explain_user_ids" in raw:
        d["explain_user_ids"] = _int_list("explain_user_ids", raw["explain_user_ids"], 1, allow_empty=True)
    if "baseline" in raw:
        d["baseline"] = parse_baseline(raw["baseline"])
    if "estimators" in raw:
        v = raw["estimators"]
        if not isinstance(v, list) or not v:
            raise ConfigError(f"estimators: expected a non-empty list from {list(ESTIMATORS)}, got {v!r}")
        for x in v:
            _choice("estimators", x, ESTIMATORS)
        if len(set(v)) != len(v):
            raise ConfigError(f"estimators: repeated values in {v}")
        d["estimators"] = tuple(v)
    if "synthetic" in raw:
        d["synthetic"] = SyntheticSeqSpec.from_dict(raw["synthetic"])
    if "data" in raw:
        d["data"] = DataSpec.from_dict(raw["data"])
    if "candidates_top_m" in raw:
        d["candidates_top_m"] = _integer("candidates_top_m", raw["candidates_top_m"], 0)
    return d


def parse_explain_config(text: str) -> dict[str, Any]:
    """Metaflow ``Config`` parser: YAML text -> validated, complete settings dict."""
    return ExplainConfig.from_dict(yaml_mapping(text)).as_dict()

