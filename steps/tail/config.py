"""TailFlow's configuration: parsed from YAML, validated with messages naming the key and value.

A config has ``datasets`` (each a synthetic or raw public dataset plus its split protocol),
``training`` (settings of the shared training loop), ``methods`` (an ordered mapping of method
name to its options; any ``training`` key may be overridden per method) and ``evaluation``.
See ``configs/tail_quick.yaml`` for every key.

The adversarial method's ``loss`` option is validated only: ``l2`` (the reference's best settings
all use it) is the one learner loss there is, so the training code never reads it. It is accepted
so configs can spell out the reference's settings.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

from steps.configtools import common_fields, training_seeds, default_resources, resources_field, run_field, yaml_mapping
from steps.uncertainty import UncertaintySpec, uncertainty_key
from steps.configtools import boolean as _bool
from steps.configtools import choice as _choice
from steps.configtools import integer as _integer
from steps.configtools import number as _number
from steps.errors import ConfigError

#: Per-step compute requests, memory in MB (``resources.tail`` in ``configs/defaults.yaml``).
DEFAULT_RESOURCES = default_resources("tail")

SOURCES = ("synthetic", "ml20m", "netflix", "msd", "ml100k")
METHODS = ("ease", "ease_gd", "ipw", "tail_opt", "adversarial", "pop_rerank")
#: Methods trained by the shared gradient loop (the others are closed-form).
TRAINED_METHODS = ("ease_gd", "ipw", "tail_opt", "adversarial")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")
EARLY_STOPPING = ("recall_at_20", "ndcg_at_100")
#: Which epoch's model is evaluated: the best by the early-stopping metric (recalign's default), or
#: the last one run, as the reference code does (its "best" snapshot is a ``state_dict()`` that
#: references the live weights, so it always evaluates the last epoch).
SELECT_EPOCH = ("best", "last")
ADV_LOSSES = ("recall", "recall_dist")
LOSSES = ("l2",)  # the only learner loss; ``loss`` is validated, not read (see the module docstring)
DEVICES = ("auto", "cpu", "cuda")
TAIL_BY = ("items", "interactions")
_ADVERSARY = re.compile(r"^(linear|(2|2b|b2)mlp([1-9][0-9]*))$")
ADV_INITS = ("paper", "scaled")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _mapping(key: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    return value


def _reject_unknown(key: str, raw: Mapping[str, Any], cls) -> None:
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {unknown}; allowed keys: {sorted(allowed)}")


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Protocol:
    """Liang et al. (2018) strong generalisation: binarise, filter, hold out users, fold in 80 %."""

    min_rating: float = 4.0  # interactions with rating >= min_rating are positives (MSD: all plays)
    min_item_users: int = 0  # keep items with at least this many users (MSD: 200), applied first
    min_user_items: int = 5  # then keep users with at least this many items (MSD: 20)
    heldout_users: int = 10_000  # users in validation, and as many in test
    test_fraction: float = 0.2  # share of a held-out user's items to evaluate on (the rest are folded in)
    min_items_to_split: int = 5  # held-out users with fewer items keep them all as fold-in


@dataclass(frozen=True)
class SyntheticSpec:
    """A synthetic ML-20M ``ratings.csv``: Zipf popularity, item clusters, cluster-loving users."""

    n_users: int = 20_000
    n_items: int = 2_000
    n_clusters: int = 20
    mean_items_per_user: float = 40.0
    zipf_exponent: float = 1.1  # item popularity ∝ (popularity rank + 1)^-exponent
    popularity_weight: float = 0.5  # exponent on popularity in a user's item probabilities
    cluster_affinity: float = 12.0  # weight of a user's favourite clusters over the rest
    clusters_per_user: int = 2
    low_rating_share: float = 0.2  # extra ratings below 4 (removed by binarisation)
    seed: int = 2024


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: str = "synthetic"
    path: str = ""  # ML-20M ratings.csv; Netflix training_set/ folder or combined_data_*.txt; MSD train_triplets.txt;
    # ML-100K: "" or "recbole" (the RecBole wheel's copy) or GroupLens' ml-100k/ folder
    items_path: str = ""  # ML-20M movies.csv: item genres for the candidate bundles (optional)
    protocol: Protocol = field(default_factory=Protocol)
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)


def _protocol(key: str, raw: Any, source: str) -> Protocol:
    raw = _mapping(key, raw)
    _reject_unknown(key, raw, Protocol)
    base = Protocol(min_rating=0.0, min_item_users=200, min_user_items=20, heldout_users=50_000) if source == "msd" else Protocol()
    if source == "ml100k":  # 943 users: 100 validation and 100 test users by default
        base = Protocol(heldout_users=100)
    d: dict[str, Any] = {}
    if "min_rating" in raw:
        d["min_rating"] = _number(f"{key}.min_rating", raw["min_rating"])
    for k, lo in (("min_item_users", 0), ("min_user_items", 1), ("heldout_users", 1), ("min_items_to_split", 1)):
        if k in raw:
            d[k] = _integer(f"{key}.{k}", raw[k], lo)
    if "test_fraction" in raw:
        d["test_fraction"] = _number(f"{key}.test_fraction", raw["test_fraction"], 0.0, 1.0, lo_open=True)
        if d["test_fraction"] >= 1.0:
            raise ConfigError(f"{key}.test_fraction: {raw['test_fraction']!r} is out of range (< 1 required)")
    protocol = replace(base, **d)
    if protocol.test_fraction * protocol.min_items_to_split < 1:  # held-out count = int(test_fraction · items)
        raise ConfigError(
            f"{key}: test_fraction={protocol.test_fraction:g} × min_items_to_split={protocol.min_items_to_split} < 1, "
            f"so a held-out user with {protocol.min_items_to_split} items gets no evaluation item and is silently "
            f"not evaluated; raise {key}.test_fraction or {key}.min_items_to_split so that their product is >= 1"
        )
    return protocol


def _synthetic(key: str, raw: Any) -> SyntheticSpec:
    raw = _mapping(key, raw)
    _reject_unknown(key, raw, SyntheticSpec)
    d: dict[str, Any] = {}
    for k, lo in (("n_users", 10), ("n_items", 10), ("n_clusters", 1), ("clusters_per_user", 1), ("seed", 0)):
        if k in raw:
            d[k] = _integer(f"{key}.{k}", raw[k], lo)
    for k, lo in (("mean_items_per_user", 1.0), ("zipf_exponent", 0.0), ("popularity_weight", 0.0), ("cluster_affinity", 1.0)):
        if k in raw:
            d[k] = _number(f"{key}.{k}", raw[k], lo)
    if "low_rating_share" in raw:
        d["low_rating_share"] = _number(f"{key}.low_rating_share", raw["low_rating_share"], 0.0, 0.9)
    spec = SyntheticSpec(**d)
    if spec.clusters_per_user > spec.n_clusters:
        raise ConfigError(f"{key}.clusters_per_user: {spec.clusters_per_user} exceeds n_clusters = {spec.n_clusters}")
    if spec.mean_items_per_user * 2 > spec.n_items:
        raise ConfigError(f"{key}.mean_items_per_user: {spec.mean_items_per_user} is too large for n_items = {spec.n_items}")
    return spec


def _dataset(i: int, raw: Any) -> DatasetSpec:
    key = f"datasets[{i}]"
    if raw in ("ml100k", "synthetic"):  # `datasets: [ml100k]`: a source that needs no path, named after itself
        raw = {"name": raw, "source": raw}
    raw = _mapping(key, raw)
    _reject_unknown(key, raw, DatasetSpec)
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{key}.name: expected a name of letters, digits, '-' or '_', got {name!r}")
    source = _choice(f"{key}.source", raw.get("source", "synthetic"), SOURCES)
    path = raw.get("path", "")
    if not isinstance(path, str):
        raise ConfigError(f"{key}.path: expected a file or folder path, got {path!r}")
    if source not in ("synthetic", "ml100k") and not path:
        raise ConfigError(f"{key}.path: a {source} dataset needs the path of its raw file(s)")
    items_path = raw.get("items_path", "")
    if not isinstance(items_path, str):
        raise ConfigError(f"{key}.items_path: expected the path of ML-20M's movies.csv, got {items_path!r}")
    if items_path and source != "ml20m":
        raise ConfigError(f"{key}.items_path: {items_path!r} is set but source is {source!r}; only an ml20m dataset "
                          "takes an items file (movies.csv)")
    if source == "synthetic" and path:
        raise ConfigError(f"{key}.path: {path!r} is set but source is 'synthetic'; set {key}.source to ml20m, netflix or msd")
    if source != "synthetic" and "synthetic" in raw:
        raise ConfigError(f"{key}.synthetic: only a synthetic dataset takes synthetic settings")
    return DatasetSpec(
        name=name, source=source, path=path, items_path=items_path, protocol=_protocol(f"{key}.protocol", raw.get("protocol"), source),
        synthetic=_synthetic(f"{key}.synthetic", raw.get("synthetic")),
    )


# --------------------------------------------------------------------------- training / methods
@dataclass(frozen=True)
class Training:
    """Settings of the shared training loop (any of them may be overridden per method)."""

    epochs: int = 50
    batch_size: int = 1024
    optimizer: str = "adam"  # adam, or sgd (momentum 0.9, as the reference code)
    lr: float = 1e-3
    wd: float = 0.0  # weight decay of the item-item matrix
    loss_scale: float = 1000.0  # the per-cell squared error is multiplied by this (reference: 1e3)
    schedule: str = "cosine"  # cosine annealing over ``epochs`` (reference) or constant
    patience: int = 10  # epochs without a better validation score before stopping
    early_stopping: str = "ndcg_at_100"
    select_epoch: str = "best"  # best (by early_stopping) or last (the reference code's protocol)
    drop_last: bool = False  # skip each epoch's last partial batch (the reference code does)


@dataclass(frozen=True)
class MethodSpec:
    """One method and its options (unused options keep their defaults)."""

    name: str
    training: Training = field(default_factory=Training)
    l2: float = 500.0  # ease / pop_rerank: EASE's λ
    alpha: float = 1e-3  # ipw: w_i ∝ exp(−alpha · count_i)
    beta: float = 0.1  # tail_opt: CVaR level (share of the worst cells optimised)
    eta_lr: float = 0.01  # tail_opt: learning rate of η (the reference code: 1e-9, see configs/tail_ml20m.yaml)
    eta_momentum: float = 0.9  # tail_opt: SGD momentum of η (the reference code: 0); ignored by adam
    adversary: str = "2bmlp2"  # adversarial: linear, 2mlpN, 2bmlpN or b2mlpN (only b2mlpN centres the input)
    adv_init: str = "paper"  # adversarial: paper (as the reference) or scaled (recalign's; keeps adapting)
    nstd: float = 1.0  # adversarial: output (and hidden, for b) scale before the sigmoid/tanh
    alr: float = 1e-3  # adversarial: adversary learning rate
    awd: float = 0.0  # adversarial: adversary weight decay
    lam: float = 1.0  # adversarial: item weight = (1 − lam) + lam · normalised adversary weight (0 <= lam <= 1);
    # tail_opt: λ > 0, the CVaR loss's weight, as the reference's ``lamda`` (loss = λ·s·mean(η + ReLU(e − η)/β))
    aloss: str = "recall"  # adversarial: per-item utility the adversary targets (recall or recall_dist)
    dist_ones: bool = False  # adversarial: normalise that utility by the item's holders (else by users)
    loss: str = "l2"  # learner loss: validated only, l2 is the one loss there is (the reference's choice)
    adv_k: int = 100  # adversarial: list length of the utility
    momentum: float = 0.9  # adversarial: moving average of the per-item utility
    gamma: float = 0.3  # pop_rerank: popularity penalty

    @property
    def trained(self) -> bool:
        return self.name in TRAINED_METHODS


_METHOD_OPTIONS = {
    "ease": {"l2"},
    "ease_gd": set(),
    "ipw": {"alpha"},
    "tail_opt": {"beta", "eta_lr", "eta_momentum", "lam"},
    "adversarial": {"adversary", "adv_init", "nstd", "alr", "awd", "lam", "aloss", "dist_ones", "loss", "adv_k", "momentum"},
    "pop_rerank": {"l2", "gamma"},
}


def _choices(key: str, raw: Mapping[str, Any], d: dict[str, Any], keys) -> None:
    """``d[k]`` = the checked choice of ``raw[k]`` for each ``(k, choices)`` of ``keys`` present in ``raw``."""
    for k, choices in keys:
        if k in raw:
            d[k] = _choice(f"{key}.{k}", raw[k], choices)


def _training(key: str, raw: Any, base: Training) -> Training:
    raw = _mapping(key, raw)
    _reject_unknown(key, raw, Training)
    d: dict[str, Any] = {}
    for k, lo in (("epochs", 1), ("batch_size", 1), ("patience", 1)):
        if k in raw:
            d[k] = _integer(f"{key}.{k}", raw[k], lo)
    _choices(key, raw, d, (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("early_stopping", EARLY_STOPPING),
                           ("select_epoch", SELECT_EPOCH)))
    if "drop_last" in raw:
        d["drop_last"] = _bool(f"{key}.drop_last", raw["drop_last"])
    for k, lo_open in (("lr", True), ("wd", False), ("loss_scale", True)):
        if k in raw:
            d[k] = _number(f"{key}.{k}", raw[k], 0.0, lo_open=lo_open)
    return replace(base, **d)


def _method(name: str, raw: Any, training: Training) -> MethodSpec:
    key = f"methods.{name}"
    if name not in METHODS:
        raise ConfigError(f"methods: unknown method {name!r}; choose from {list(METHODS)}")
    raw = dict(_mapping(key, raw))
    train_keys = {f.name for f in fields(Training)}
    allowed = _METHOD_OPTIONS[name] | (train_keys if name in TRAINED_METHODS else set())
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {unknown}; allowed keys: {sorted(allowed)}")
    tr = _training(key, {k: v for k, v in raw.items() if k in train_keys}, training)
    d: dict[str, Any] = {}
    for k, lo, lo_open in (("l2", 0.0, True), ("alpha", 0.0, False), ("eta_lr", 0.0, True), ("nstd", 0.0, True),
                           ("alr", 0.0, True), ("awd", 0.0, False), ("gamma", 0.0, False)):
        if k in raw:
            d[k] = _number(f"{key}.{k}", raw[k], lo, lo_open=lo_open)
    if "beta" in raw:
        d["beta"] = _number(f"{key}.beta", raw["beta"], 0.0, 1.0, lo_open=True)
    for k in ("momentum", "eta_momentum"):
        if k in raw:
            d[k] = _number(f"{key}.{k}", raw[k], 0.0, 1.0)
    if "lam" in raw:  # adversarial: a mixing weight in [0, 1]; tail_opt: a loss weight > 0
        d["lam"] = (_number(f"{key}.lam", raw["lam"], 0.0, lo_open=True) if name == "tail_opt"
                    else _number(f"{key}.lam", raw["lam"], 0.0, 1.0))
    if "adversary" in raw:
        if not isinstance(raw["adversary"], str) or not _ADVERSARY.match(raw["adversary"]):
            raise ConfigError(f"{key}.adversary: unknown structure {raw['adversary']!r}; expected linear, 2mlpN, 2bmlpN or "
                              f"b2mlpN (N = hidden width >= 1; only names starting with 'b' centre the input)")
        d["adversary"] = raw["adversary"]
    _choices(key, raw, d, (("adv_init", ADV_INITS), ("aloss", ADV_LOSSES), ("loss", LOSSES)))
    if "dist_ones" in raw:
        d["dist_ones"] = _bool(f"{key}.dist_ones", raw["dist_ones"])
    if "adv_k" in raw:
        d["adv_k"] = _integer(f"{key}.adv_k", raw["adv_k"], 1)
    return MethodSpec(name=name, training=tr, **d)


@dataclass(frozen=True)
class TailSpec:
    by: str = "items"  # tail = the least popular `fraction` of items, or the least popular items
    fraction: float = 0.8  # holding `fraction` of the training interactions


@dataclass(frozen=True)
class Evaluation:
    ks: tuple[int, ...] = (20, 50, 100)
    tail: TailSpec = field(default_factory=TailSpec)
    buckets: int = 5  # popularity buckets of equal training-interaction mass (head → tail)
    batch_users: int = 1000

    @property
    def k_max(self) -> int:
        return max(self.ks)


def _evaluation(raw: Any) -> Evaluation:
    raw = _mapping("evaluation", raw)
    _reject_unknown("evaluation", raw, Evaluation)
    d: dict[str, Any] = {}
    if "ks" in raw:
        ks = raw["ks"]
        if not isinstance(ks, list) or not ks:
            raise ConfigError(f"evaluation.ks: expected a non-empty list of integers, got {ks!r}")
        d["ks"] = tuple(sorted({_integer(f"evaluation.ks[{i}]", k, 1) for i, k in enumerate(ks)}))
    if "tail" in raw:
        t = _mapping("evaluation.tail", raw["tail"])
        _reject_unknown("evaluation.tail", t, TailSpec)
        td: dict[str, Any] = {}
        if "by" in t:
            td["by"] = _choice("evaluation.tail.by", t["by"], TAIL_BY)
        if "fraction" in t:
            td["fraction"] = _number("evaluation.tail.fraction", t["fraction"], 0.0, 1.0, lo_open=True)
        d["tail"] = TailSpec(**td)
    if "buckets" in raw:
        d["buckets"] = _integer("evaluation.buckets", raw["buckets"], 2)
    if "batch_users" in raw:
        d["batch_users"] = _integer("evaluation.batch_users", raw["batch_users"], 1)
    ev = Evaluation(**d)
    for k in (20, 50, 100):
        if k not in ev.ks:
            raise ConfigError(f"evaluation.ks: {list(ev.ks)} must include {k} (the results table reports it)")
    return ev


# --------------------------------------------------------------------------- the whole config
@dataclass(frozen=True)
class TailConfig:
    name: str = "tail"
    seed: int = 7  # the data split (synthetic data has its own seed); the training seed when ``seeds`` is absent
    device: str = "auto"
    datasets: tuple[DatasetSpec, ...] = ()
    training: Training = field(default_factory=Training)
    methods: tuple[MethodSpec, ...] = ()
    evaluation: Evaluation = field(default_factory=Evaluation)
    save_models: bool = False  # also write every item-item matrix B as .npy (n² floats each)
    candidates_top_m: int = 100  # each method's top-M for the test users as a candidate bundle (0: none)
    resources: Mapping[str, Mapping[str, int]] = resources_field(DEFAULT_RESOURCES)
    run: Mapping[str, Any] = run_field()
    # bootstrap intervals and paired differences of the results (steps.uncertainty; resamples: 0 = off)
    uncertainty: UncertaintySpec = field(default_factory=UncertaintySpec)
    # training seeds: every method is trained once per seed (a fan-out); default (seed,)
    seeds: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.seeds:
            object.__setattr__(self, "seeds", (self.seed,))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> "TailConfig":
        raw = dict(raw or {})
        d = common_fields(raw, {f.name for f in fields(cls)}, DEFAULT_RESOURCES)
        if "device" in raw:
            d["device"] = _choice("device", raw["device"], DEVICES)
        if "save_models" in raw:
            d["save_models"] = _bool("save_models", raw["save_models"])
        if "candidates_top_m" in raw:
            d["candidates_top_m"] = _integer("candidates_top_m", raw["candidates_top_m"], 0)
        ds = raw.get("datasets")
        if not isinstance(ds, list) or not ds:
            raise ConfigError(f"datasets: expected a non-empty list of datasets, got {ds!r}")
        datasets = tuple(_dataset(i, x) for i, x in enumerate(ds))
        names = [x.name for x in datasets]
        if len(set(names)) != len(names):
            raise ConfigError(f"datasets: names must be unique, got {names}")
        training = _training("training", raw.get("training"), Training())
        ms = raw.get("methods")
        if not isinstance(ms, Mapping) or not ms:
            raise ConfigError(f"methods: expected a mapping of method name to options, got {ms!r}")
        methods = tuple(_method(str(n), opts, training) for n, opts in ms.items())
        d.update(uncertainty_key(raw))
        d["seeds"] = training_seeds(raw, d.get("seed", cls.seed))
        return cls(datasets=datasets, training=training, methods=methods, evaluation=_evaluation(raw.get("evaluation")), **d)

    @property
    def dataset_names(self) -> list[str]:
        return [d.name for d in self.datasets]

    @property
    def method_names(self) -> list[str]:
        return [m.name for m in self.methods]

    @property
    def cell_names(self) -> list[str]:
        """The train fan-out: one cell per (method, seed), ``"<method>"`` with one seed (as before
        seeds existed), else ``"<method>@<seed>"``, method-major."""
        if len(self.seeds) == 1:
            return list(self.method_names)
        return [f"{m}@{s}" for m in self.method_names for s in self.seeds]

    def cell(self, name: str) -> tuple[MethodSpec, int]:
        """``(method, training seed)`` of a :attr:`cell_names` entry."""
        method, sep, seed = name.partition("@")
        if not sep:
            return self.method(method), self.seeds[0]
        if not seed.isdigit() or int(seed) not in self.seeds:
            raise ConfigError(f"cell {name!r}: seed {seed!r} is not one of seeds {list(self.seeds)}")
        return self.method(method), int(seed)

    def dataset(self, name: str) -> DatasetSpec:
        for d in self.datasets:
            if d.name == name:
                return d
        raise ConfigError(f"no dataset named {name!r}; datasets are {self.dataset_names}")

    def method(self, name: str) -> MethodSpec:
        for m in self.methods:
            if m.name == name:
                return m
        raise ConfigError(f"no method named {name!r}; methods are {self.method_names}")

    def as_dict(self) -> dict[str, Any]:
        """A plain dict that :meth:`from_dict` turns back into the same config."""
        def clean(x):
            if isinstance(x, tuple):
                return [clean(v) for v in x]
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            return x

        out = {"name": self.name, "seed": self.seed, "device": self.device, "save_models": self.save_models,
               "candidates_top_m": self.candidates_top_m,
               "datasets": [clean(asdict(d)) for d in self.datasets],
               "training": clean(asdict(self.training)), "methods": {}, "evaluation": clean(asdict(self.evaluation)),
               "resources": {k: dict(v) for k, v in self.resources.items()}, "run": dict(self.run),
               "uncertainty": self.uncertainty.as_dict(), "seeds": list(self.seeds)}
        for m in self.methods:
            opts = {k: v for k, v in clean(asdict(m)).items() if k in _METHOD_OPTIONS[m.name]}
            if m.trained:
                opts.update(clean(asdict(m.training)))
            out["methods"][m.name] = opts
        for d in out["datasets"]:
            if d["source"] != "synthetic":
                del d["synthetic"]
            if d["source"] != "ml20m":
                del d["items_path"]
        return out


def parse_tail_config(text: str) -> dict[str, Any]:
    """Metaflow ``Config`` parser: YAML text -> validated, complete settings dict."""
    return TailConfig.from_dict(yaml_mapping(text)).as_dict()

