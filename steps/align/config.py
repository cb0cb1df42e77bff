"""The alignment experiment's configuration: parsed from YAML, validated with clear messages."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import yaml

from steps.align.synthetic import SyntheticDumpSpec
from steps.align.targets import BUILTIN_TARGETS
from steps.configtools import integer as _integer
from steps.configtools import number as _number
from steps.configtools import choice, common_fields, default_resources, resources_field, run_field, yaml_mapping
from steps.errors import ConfigError
from steps.metrics import DEFAULT_TIES, TIE_RULES
from steps.uncertainty import UncertaintySpec, uncertainty_key

METHODS = ("nails", "steck", "nails_steck")
#: Per-step compute requests, memory in MB (``resources.align`` in ``configs/defaults.yaml``).
DEFAULT_RESOURCES = default_resources("align")

SELECTIONS = ("det", "stoch")
BEST_LAMBDA_KEYS = ("nails_det", "nails_stoch", "steck", "nails_steck")
AUTO = "auto"


#: Per-user targets (candidate-list datasets with histories): the user's own history, or its mix
#: with a global target.
PER_USER_TARGETS = ("history", "history_mix")
TARGET_HELP = (
    "Editorial, Uniform or {name, distribution} (distribution: {CATEGORY: probability}), or a per-user target: "
    "history, {name, kind: history, half_life_days: D} or {name, kind: history_mix, weight: W, mix_with: Uniform|Editorial}"
)


def _per_user_target(spec: Mapping, i: int, name: str) -> None:
    kind = spec.get("kind")
    allowed = {"name", "kind", "half_life_days"} | ({"weight", "mix_with"} if kind == "history_mix" else set())
    if kind not in PER_USER_TARGETS:
        raise ConfigError(f"targets[{i}] ({name}).kind: expected one of {list(PER_USER_TARGETS)}, got {kind!r}")
    extra = set(spec) - allowed
    if extra:
        raise ConfigError(f"targets[{i}] ({name}): unknown key(s) {sorted(extra)} for kind {kind}; expected {sorted(allowed)}")
    if spec.get("half_life_days") is not None:
        _number(f"targets[{i}] ({name}).half_life_days", spec["half_life_days"], 0.0, lo_open=True)
    if kind == "history_mix":
        if "weight" not in spec:
            raise ConfigError(f"targets[{i}] ({name}): history_mix needs a weight in [0, 1] (the global target's share)")
        _number(f"targets[{i}] ({name}).weight", spec["weight"], 0.0, 1.0)
        other = spec.get("mix_with", "Uniform")
        if other not in BUILTIN_TARGETS:
            raise ConfigError(f"targets[{i}] ({name}).mix_with: expected {' or '.join(BUILTIN_TARGETS)}, got {other!r}")


def is_per_user_target(spec: Any) -> bool:
    return spec == "history" or (isinstance(spec, Mapping) and spec.get("kind") in PER_USER_TARGETS)


def _target_name(spec: Any, i: int) -> str:
    if isinstance(spec, str):
        if spec not in (*BUILTIN_TARGETS, "history"):
            raise ConfigError(f"targets[{i}]: unknown target {spec!r}; use {TARGET_HELP}")
        return spec
    if not isinstance(spec, Mapping) or "name" not in spec or set(spec) == {"name"}:
        raise ConfigError(f"targets[{i}]: expected {TARGET_HELP}; got {spec!r}")
    name = spec["name"]
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"targets[{i}].name: expected a name of letters, digits, '-' or '_', got {name!r}")
    if "kind" in spec:
        _per_user_target(spec, i, name)
        return name
    if set(spec) != {"name", "distribution"}:
        raise ConfigError(f"targets[{i}]: expected {TARGET_HELP}; got {spec!r}")
    dist = spec["distribution"]
    if not isinstance(dist, Mapping) or not dist:
        raise ConfigError(f"targets[{i}] ({name}).distribution: expected a non-empty mapping category -> probability")
    for cat, p in dist.items():
        _number(f"targets[{i}] ({name}).distribution.{cat}", p, lo=0.0)
    return name


STECK_RELEVANCE = ("probability", "score")
DATASET_KINDS = ("ebnerd", "candidates", "ml100k_ease")
_DATASET_KEYS = {
    "ebnerd": {"name", "kind", "predictions", "articles", "from_run", "targets"},
    "candidates": {"name", "kind", "path", "from_run", "synthetic", "targets"},
    "ml100k_ease": {"name", "kind", "source", "top_m", "split", "test_fraction", "positive_rating", "l2", "seed", "targets"},
}


def parse_targets(t: Any, where: str = "targets") -> tuple:
    if not isinstance(t, list) or not t:
        raise ConfigError(f"{where}: expected a non-empty list, got {t!r}")
    names = [_target_name(s, i) for i, s in enumerate(t)]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: names must be unique, got {names}")
    return tuple(dict(s) if isinstance(s, Mapping) else s for s in t)


def parse_datasets(raw: Any) -> tuple[dict, ...]:
    """``datasets:`` — a list of {name, kind, ...}; kinds ``ebnerd`` (a NAILS dump: predictions +
    articles, a NewsRecFlow run, or synthetic when neither is given), ``candidates`` (a candidate
    bundle folder, a TailFlow/ExplainFlow run, or synthetic) and ``ml100k_ease`` (real MovieLens-100K
    → EASE → top-M, built in the flow)."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"datasets: expected a non-empty list of {{name, kind, ...}}, got {raw!r}")
    out, names = [], set()
    for i, ds in enumerate(raw):
        if not isinstance(ds, Mapping) or "name" not in ds or "kind" not in ds:
            raise ConfigError(f"datasets[{i}]: expected a mapping with name and kind, got {ds!r}")
        name, kind = ds["name"], ds["kind"]
        if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"datasets[{i}].name: expected letters, digits, '-' or '_', got {name!r}")
        if name in names:
            raise ConfigError(f"datasets[{i}].name: {name!r} is used twice")
        names.add(name)
        if kind not in DATASET_KINDS:
            raise ConfigError(f"datasets[{i}] ({name}).kind: expected one of {list(DATASET_KINDS)}, got {kind!r}")
        extra = set(ds) - _DATASET_KEYS[kind]
        if extra:
            raise ConfigError(f"datasets[{i}] ({name}): unknown key(s) {sorted(extra)} for kind {kind}; expected {sorted(_DATASET_KEYS[kind])}")
        d = dict(ds)
        if "targets" in d:
            try:
                d["targets"] = list(parse_targets(d["targets"]))
            except ConfigError as exc:
                raise ConfigError(f"datasets[{i}] ({name}).{exc}") from None
            if kind == "ebnerd" and any(is_per_user_target(t) for t in d["targets"]):
                raise ConfigError(f"datasets[{i}] ({name}).targets: per-user targets need candidate lists with histories, "
                                  "not an EB-NeRD dump")
        if kind == "ebnerd" and bool(d.get("predictions")) != bool(d.get("articles")):
            raise ConfigError(f"datasets[{i}] ({name}): give both predictions and articles, or neither (synthetic)")
        if kind == "candidates":
            given = [k for k in ("path", "from_run", "synthetic") if d.get(k) is not None]
            if len(given) != 1:
                raise ConfigError(f"datasets[{i}] ({name}): give exactly one of path, from_run or synthetic, got {given or 'none'}")
            if "synthetic" in d:
                from steps.align.synthetic_lists import SyntheticListsSpec

                d["synthetic"] = SyntheticListsSpec.from_dict(d["synthetic"], f"datasets[{i}] ({name}).synthetic").as_dict()
        if kind == "ml100k_ease":
            from steps.align.ease_candidates import EaseCandidatesSpec

            own = {k: v for k, v in d.items() if k not in ("name", "kind", "targets")}
            d = {"name": name, "kind": kind, **EaseCandidatesSpec.from_dict(own, f"datasets[{i}] ({name})").as_dict(),
                 **({"targets": d["targets"]} if "targets" in d else {})}
        out.append(d)
    return tuple(out)


@dataclass(frozen=True)
class AlignConfig:
    """Validated settings of one alignment experiment (see ``configs/align_nails_paper.yaml``)."""

    name: str = "align"
    seed: int = 123
    targets: tuple = ("Editorial", "Uniform")
    methods: tuple[str, ...] = METHODS
    selections: tuple[str, ...] = SELECTIONS
    lambdas: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99)
    top_n: int = 10
    alpha: float = 1e-4
    repeats: int = 1
    steck_smoothing_select: float = 0.5
    steck_smoothing_rerank: float = 1e-4
    exclude_categories: tuple[str, ...] = ("auto",)
    unknown_category_weight: float = 1e-6
    missing_category: str = "error"
    best_lambda: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    nails_steck_nails_lambda: Mapping[str, float] = field(default_factory=dict)
    nails_steck_nails_lambda_default: float = 0.7
    submissions: bool = True
    # how MRR/nDCG rank equal scores (steps.metrics.TIE_RULES); ebrec = the ebnerd-benchmark's rule
    ties: str = DEFAULT_TIES
    ba_chunk_rows: int = 20_000
    batch_impressions: int = 100_000
    synthetic: SyntheticDumpSpec = field(default_factory=SyntheticDumpSpec)
    # candidate-list datasets (steps.align.lists)
    datasets: tuple = ()
    calibration_alpha: float = 0.01
    steck_relevance: str = "probability"
    missing_history: str = "error"
    list_chunk_cells: int = 4_000_000
    resources: Mapping[str, Mapping[str, int]] = resources_field(DEFAULT_RESOURCES)
    run: Mapping[str, Any] = run_field()
    # bootstrap intervals and paired differences of the results (steps.uncertainty; resamples: 0 = off)
    uncertainty: UncertaintySpec = field(default_factory=UncertaintySpec)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> "AlignConfig":
        raw = dict(raw or {})
        d = common_fields(raw, set(cls.__dataclass_fields__), DEFAULT_RESOURCES)
        d.update(_grid_fields(raw))
        d.update(_data_fields(raw))
        d.update(uncertainty_key(raw))
        cfg = cls(**d)
        _check_per_user_targets(cfg)
        target_names = sorted({*cfg.target_names, *(n for ds in cfg.datasets for n in cfg.target_names_for(ds['name']))})
        if "best_lambda" in raw:
            object.__setattr__(cfg, "best_lambda", _best_lambda(raw["best_lambda"], target_names, cfg.lambdas))
        if "nails_steck_nails_lambda" in raw:
            object.__setattr__(cfg, "nails_steck_nails_lambda",
                               _nails_steck_nails_lambda(raw["nails_steck_nails_lambda"], target_names))
        return cfg

    # ------------------------------------------------------------------ helpers
    @property
    def target_names(self) -> list[str]:
        return [t if isinstance(t, str) else t["name"] for t in self.targets]

    def targets_for(self, dataset: str) -> tuple:
        """The dataset's own ``targets`` list, or the run's."""
        for ds in self.datasets:
            if ds["name"] == dataset and "targets" in ds:
                return tuple(ds["targets"])
        return self.targets

    def target_names_for(self, dataset: str) -> list[str]:
        return [t if isinstance(t, str) else t["name"] for t in self.targets_for(dataset)]

    def target_spec_for(self, dataset: str, name: str):
        return self.targets_for(dataset)[self.target_names_for(dataset).index(name)]

    def cells(self, method: str) -> list[tuple[str, float]]:
        """(selection, λ) cells evaluated for ``method``."""
        selections = self.selections if method == "nails" else ("det",)
        return [(s, lam) for s in selections for lam in self.lambdas]

    def nails_lambda_for(self, target: str) -> float:
        """NAILS λ of the composed ``nails_steck`` method for ``target``."""
        return float(self.nails_steck_nails_lambda.get(target, self.nails_steck_nails_lambda_default))

    def best_lambda_for(self, target: str, key: str):
        return self.best_lambda.get(target, {}).get(key, AUTO)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["synthetic"] = self.synthetic.as_dict()
        d["datasets"] = [dict(x) for x in self.datasets]
        for k, v in list(d.items()):
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

# --------------------------------------------------------------------------- AlignConfig.from_dict's parts
def _grid_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Targets, methods, selections and the λ grid with its list settings."""
    d: dict[str, Any] = {}
    if "targets" in raw:
        d["targets"] = parse_targets(raw["targets"])
    for key, choices in (("methods", METHODS), ("selections", SELECTIONS)):
        if key in raw:
            v = raw[key]
            if not isinstance(v, list) or not v:
                raise ConfigError(f"{key}: expected a non-empty list from {list(choices)}, got {v!r}")
            for x in v:
                if x not in choices:
                    raise ConfigError(f"{key}: unknown value {x!r}; choose from {list(choices)}")
            if len(set(v)) != len(v):
                raise ConfigError(f"{key}: repeated values in {v}")
            d[key] = tuple(v)
    if "lambdas" in raw:
        v = raw["lambdas"]
        if not isinstance(v, list) or not v:
            raise ConfigError(f"lambdas: expected a non-empty list of numbers in [0, 1], got {v!r}")
        lams = tuple(_number(f"lambdas[{i}]", x, 0.0, 1.0) for i, x in enumerate(v))
        if len(set(lams)) != len(lams):
            raise ConfigError(f"lambdas: repeated values in {list(lams)}")
        d["lambdas"] = lams
    if "top_n" in raw:
        d["top_n"] = _integer("top_n", raw["top_n"], 1)
    if "alpha" in raw:
        d["alpha"] = _number("alpha", raw["alpha"], 0.0, 1.0, lo_open=True)
    if "repeats" in raw:
        d["repeats"] = _integer("repeats", raw["repeats"], 1)
    for key in ("steck_smoothing_select", "steck_smoothing_rerank"):
        if key in raw:
            d[key] = _number(key, raw[key], 0.0, 1.0, lo_open=True)
    return d


def _data_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Category handling, output, chunking, the synthetic dump and the datasets."""
    d: dict[str, Any] = {}
    if "exclude_categories" in raw:
        v = raw["exclude_categories"]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"exclude_categories: expected a list of category names, got {v!r}")
        d["exclude_categories"] = tuple(v)
    if "unknown_category_weight" in raw:
        d["unknown_category_weight"] = _number("unknown_category_weight", raw["unknown_category_weight"], 0.0)
    if "missing_category" in raw:
        if raw["missing_category"] not in ("error", "exclude"):
            raise ConfigError(f"missing_category: expected 'error' or 'exclude', got {raw['missing_category']!r}")
        d["missing_category"] = raw["missing_category"]
    if "submissions" in raw:
        if not isinstance(raw["submissions"], bool):
            raise ConfigError(f"submissions: expected true or false, got {raw['submissions']!r}")
        d["submissions"] = raw["submissions"]
    if "ties" in raw:
        d["ties"] = choice("ties", raw["ties"], TIE_RULES)
    for key in ("ba_chunk_rows", "batch_impressions"):
        if key in raw:
            d[key] = _integer(key, raw[key], 1)
    if "nails_steck_nails_lambda_default" in raw:
        d["nails_steck_nails_lambda_default"] = _number(
            "nails_steck_nails_lambda_default", raw["nails_steck_nails_lambda_default"], 0.0, 1.0
        )
    if "synthetic" in raw:
        d["synthetic"] = SyntheticDumpSpec.from_dict(raw["synthetic"])
    if "calibration_alpha" in raw:
        d["calibration_alpha"] = _number("calibration_alpha", raw["calibration_alpha"], 0.0, 1.0, lo_open=True)
    if "steck_relevance" in raw:
        d["steck_relevance"] = choice("steck_relevance", raw["steck_relevance"], STECK_RELEVANCE)
    if "missing_history" in raw:
        d["missing_history"] = choice("missing_history", raw["missing_history"], ("error", "skip"))
    if "list_chunk_cells" in raw:
        d["list_chunk_cells"] = _integer("list_chunk_cells", raw["list_chunk_cells"], 1000)
    if raw.get("datasets"):  # an empty list (as as_dict writes it) means: one dataset from the parameters
        d["datasets"] = parse_datasets(raw["datasets"])
    return d


def _check_per_user_targets(cfg: AlignConfig) -> None:
    """Per-user targets need candidate-list datasets: no EB-NeRD dump may inherit them."""
    news = [ds["name"] for ds in cfg.datasets if ds["kind"] == "ebnerd" and "targets" not in ds]
    per_user = [n for n, t in zip(cfg.target_names, cfg.targets) if is_per_user_target(t)]
    if per_user and news:
        raise ConfigError(
            f"targets: {per_user[0]!r} is a per-user target, which needs candidate-list datasets with histories; "
            f"dataset {news[0]!r} is an EB-NeRD dump (give per-user targets to candidate-list datasets only)"
        )


def _best_lambda(bl: Any, target_names: list[str], lambdas: tuple[float, ...]) -> dict[str, dict[str, Any]]:
    if not isinstance(bl, Mapping):
        raise ConfigError(f"best_lambda: expected a mapping target -> {{method: lambda}}, got {bl!r}")
    out: dict[str, dict[str, Any]] = {}
    for tname, per in bl.items():
        if tname not in target_names:
            raise ConfigError(f"best_lambda: {tname!r} is not one of the targets {target_names}")
        if not isinstance(per, Mapping):
            raise ConfigError(f"best_lambda.{tname}: expected a mapping, got {per!r}")
        out[tname] = {}
        for key, lam in per.items():
            if key not in BEST_LAMBDA_KEYS:
                raise ConfigError(f"best_lambda.{tname}: unknown key {key!r}; use {list(BEST_LAMBDA_KEYS)}")
            if lam != AUTO:
                lam = _number(f"best_lambda.{tname}.{key}", lam, 0.0, 1.0)
                if lam not in lambdas:
                    raise ConfigError(f"best_lambda.{tname}.{key}: {lam} is not in the lambda grid {list(lambdas)}")
            out[tname][key] = lam
    return out


def _nails_steck_nails_lambda(v: Any, target_names: list[str]) -> dict[str, float]:
    if not isinstance(v, Mapping):
        raise ConfigError(f"nails_steck_nails_lambda: expected a mapping target -> lambda, got {v!r}")
    out = {}
    for tname, lam in v.items():
        if tname not in target_names:
            raise ConfigError(f"nails_steck_nails_lambda: {tname!r} is not one of the targets {target_names}")
        out[tname] = _number(f"nails_steck_nails_lambda.{tname}", lam, 0.0, 1.0)
    return out



def parse_align_config(text: str) -> dict[str, Any]:
    """Metaflow ``Config`` parser: YAML text -> validated, complete settings dict."""
    return AlignConfig.from_dict(yaml_mapping(text)).as_dict()


def load_align_config(path: str) -> AlignConfig:
    with open(path, encoding="utf-8") as f:
        return AlignConfig.from_dict(yaml.safe_load(f) or {})
