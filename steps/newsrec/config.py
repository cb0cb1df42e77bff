"""NewsRecFlow's configuration: parsed from YAML and validated with messages naming key and value."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from steps.align.config import AlignConfig
from steps.configtools import choice, common_fields, default_resources, resources_field, TrainingSeedsMixin, run_field, training_seeds, yaml_mapping
from steps.errors import ConfigError
from steps.metrics import DEFAULT_TIES, TIE_RULES
from steps.newsrec.ebnerd import UNKNOWN_POLICIES
from steps.newsrec.schema import DEFAULT_DOCUMENT_VECTORS
from steps.newsrec.synthetic import SyntheticEbnerdSpec

MODEL_NAMES = ("nrms", "nrms_docvec")
#: Per-step compute requests, memory in MB (``resources.newsrec`` in ``configs/defaults.yaml``).
DEFAULT_RESOURCES = default_resources("newsrec")
TOKENIZERS = ("vocabulary", "transformers")


def _check(key: str, value: Any, default: Any) -> Any:
    """``value`` must have the type of ``default`` (ints are accepted for floats, never bools)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, tuple):
        elem = type(default[0])
        ok = isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, elem) and not isinstance(v, bool) for v in value)
        ok = ok and (elem is not int or all(v > 0 for v in value))
        value = tuple(value) if ok else value
    else:  # pragma: no cover - no other field types
        ok = True
    if not ok:
        kind = f"a non-empty list of {type(default[0]).__name__}" if isinstance(default, tuple) else type(default).__name__
        raise ConfigError(f"{key}: expected {kind}, got {value!r}")
    return value


def _section(cls, key: str, raw: Any):
    """Build dataclass ``cls`` from the mapping ``raw`` (unknown keys rejected, types checked)."""
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {raw!r}")
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    defaults = cls()
    values = {k: _check(f"{key}.{k}", v, getattr(defaults, k)) for k, v in raw.items()}
    obj = cls(**values)
    obj.validate(key)
    return obj


def seed_label(name: str, seed: int, several: bool) -> str:
    """The label of one (model, seed) branch: the model name with one seed, ``<name>@<seed>`` with several."""
    return f"{name}@{seed}" if several else name


def _positive(key: str, value, lo=0, strict=True) -> None:
    if value < lo or (strict and value == lo):
        raise ConfigError(f"{key}: {value!r} is out of range ({'>' if strict else '>='} {lo} required)")


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from: the embedded synthetic bundle, or EB-NeRD under ``--data-root``."""

    bundle: str = "ebnerd_small"  # ebnerd_demo / ebnerd_small / ebnerd_large (with --data-root)
    document_vectors: str = DEFAULT_DOCUMENT_VECTORS  # relative to the data root
    vector_column: str = "auto"
    # zeros: an article missing from articles.parquet gets the zero *input* (an all-padding token row
    # for NRMS, a zero document vector for NRMSDocVec, whose dense layers still give it a non-zero
    # encoding); error: reject it
    unknown_article: str = "zeros"
    # impressions whose every in-view article is clicked: skipped in train/validation; in the test
    # split kept without their labels (scored and submitted, not evaluated). False: an error
    drop_without_negative: bool = False
    train_fraction: float = 1.0
    batch_rows: int = 100_000

    def validate(self, key: str) -> None:
        if self.unknown_article not in UNKNOWN_POLICIES:
            raise ConfigError(f"{key}.unknown_article: expected one of {list(UNKNOWN_POLICIES)}, got {self.unknown_article!r}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ConfigError(f"{key}.train_fraction: {self.train_fraction!r} is out of range (0, 1]")
        _positive(f"{key}.batch_rows", self.batch_rows)


@dataclass(frozen=True)
class TextConfig:
    """Tokenisation of the article texts for NRMS."""

    columns: tuple = ("title", "subtitle")
    title_size: int = 30
    tokenizer: str = "vocabulary"
    vocab_min_count: int = 1
    vocab_max_size: int = 100_000
    transformers_path: str = ""

    def validate(self, key: str) -> None:
        if not self.columns or not all(isinstance(c, str) and c for c in self.columns):
            raise ConfigError(f"{key}.columns: expected a list of article text columns, got {list(self.columns)!r}")
        if self.tokenizer not in TOKENIZERS:
            raise ConfigError(f"{key}.tokenizer: expected one of {list(TOKENIZERS)}, got {self.tokenizer!r}")
        if self.tokenizer == "transformers" and not self.transformers_path:
            raise ConfigError(f"{key}.transformers_path: required with tokenizer: transformers (a local folder)")
        for k in ("title_size", "vocab_min_count", "vocab_max_size"):
            _positive(f"{key}.{k}", getattr(self, k))


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of one model (NRMS uses the word-level keys, NRMSDocVec the dense ones)."""

    head_num: int = 20
    head_dim: int = 20
    attention_hidden_dim: int = 200
    dropout: float = 0.2
    word_emb_dim: int = 300  # nrms
    units: tuple = (512, 512, 512)  # nrms_docvec: dense layers of the news encoder
    l2: float = 1e-4  # nrms_docvec: L2 on the dense layers

    def validate(self, key: str) -> None:
        for k in ("head_num", "head_dim", "attention_hidden_dim", "word_emb_dim"):
            _positive(f"{key}.{k}", getattr(self, k))
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{key}.dropout: {self.dropout!r} is out of range [0, 1)")
        _positive(f"{key}.l2", self.l2, strict=False)


@dataclass(frozen=True)
class TrainConfig:
    """Training: Wu et al. (2019) sampling, Adam, early stopping and LR reduction on validation AUC."""

    history_size: int = 20
    npratio: int = 4
    batch_size: int = 32
    epochs: int = 10
    learning_rate: float = 1e-4
    early_stopping_patience: int = 3
    lr_factor: float = 0.2
    lr_patience: int = 2
    min_lr: float = 1e-6
    eval_batch_users: int = 4096
    score_chunk: int = 1_000_000

    def validate(self, key: str) -> None:
        for k in ("history_size", "npratio", "batch_size", "epochs", "early_stopping_patience", "lr_patience",
                  "eval_batch_users", "score_chunk"):
            _positive(f"{key}.{k}", getattr(self, k))
        _positive(f"{key}.learning_rate", self.learning_rate)
        _positive(f"{key}.min_lr", self.min_lr, strict=False)
        if self.min_lr > self.learning_rate:
            raise ConfigError(
                f"{key}.min_lr: {self.min_lr!r} is above {key}.learning_rate {self.learning_rate!r}; the floor of the "
                "learning-rate reduction must not exceed the starting rate"
            )
        if not 0.0 < self.lr_factor < 1.0:
            raise ConfigError(f"{key}.lr_factor: {self.lr_factor!r} is out of range (0, 1)")


@dataclass(frozen=True)
class NewsRecConfig(TrainingSeedsMixin):
    """Validated settings of a NewsRecFlow run (see ``configs/newsrec_quick.yaml``)."""

    name: str = "newsrec"
    seed: int = 42  # data synthesis, sampling; and the training seed when seeds is not given
    # training seeds: the train foreach runs every (model, seed); default (seed,)
    seeds: tuple[int, ...] = ()
    # how MRR/nDCG rank equal scores (steps.metrics.TIE_RULES) in the accuracy table, the training
    # curves, the submission and the alignment (align.ties follows it); ebrec = the ebnerd-benchmark's
    ties: str = DEFAULT_TIES
    models: Mapping[str, ModelConfig] = field(default_factory=lambda: {m: ModelConfig() for m in MODEL_NAMES})
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    synthetic: SyntheticEbnerdSpec = field(default_factory=SyntheticEbnerdSpec)
    align: AlignConfig = field(default_factory=AlignConfig)
    resources: Mapping[str, Mapping[str, int]] = resources_field(DEFAULT_RESOURCES)
    run: Mapping[str, Any] = run_field()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> "NewsRecConfig":
        raw = dict(raw or {})
        d = common_fields(raw, {f.name for f in fields(cls)}, DEFAULT_RESOURCES)
        if "models" in raw:
            m = raw["models"]
            if not isinstance(m, Mapping) or not m:
                raise ConfigError(f"models: expected a non-empty mapping model -> hyper-parameters, got {m!r}")
            for name in m:
                if name not in MODEL_NAMES:
                    raise ConfigError(f"models: unknown model {name!r}; choose from {list(MODEL_NAMES)}")
            d["models"] = {name: _section(ModelConfig, f"models.{name}", hp) for name, hp in m.items()}
        d["data"] = _section(DataConfig, "data", raw.get("data"))
        d["text"] = _section(TextConfig, "text", raw.get("text"))
        d["training"] = _section(TrainConfig, "training", raw.get("training"))
        if "synthetic" in raw:
            d["synthetic"] = SyntheticEbnerdSpec.from_dict(raw["synthetic"])
        ties = d["ties"] = choice("ties", raw["ties"], TIE_RULES) if "ties" in raw else DEFAULT_TIES
        align = raw.get("align")
        if align is not None and not isinstance(align, Mapping):
            raise ConfigError(f"align: expected a mapping (an AlignFlow config), got {align!r}")
        align = dict(align or {})
        if align.setdefault("ties", ties) != ties:
            raise ConfigError(f"align.ties: {align['ties']!r} differs from ties {ties!r}; set the tie rule once, with the "
                              "top-level ties (the alignment ranks ties as the accuracy table does)")
        try:
            d["align"] = AlignConfig.from_dict(align)
        except ConfigError as exc:
            raise ConfigError(f"align: {exc}") from exc
        if "seeds" in raw:
            d["seeds"] = training_seeds(raw, 0)
        return cls(**d)

    @property
    def train_cells(self) -> list[tuple[str, int]]:
        """The train foreach: every (model, training seed), models first."""
        return [(m, s) for m in self.models for s in self.seeds]

    @property
    def model_names(self) -> list[str]:
        return list(self.models)

    def as_dict(self) -> dict:
        out = {
            "name": self.name, "seed": self.seed, "seeds": list(self.seeds), "ties": self.ties,
            "models": {k: asdict(v) for k, v in self.models.items()},
            "data": asdict(self.data), "text": asdict(self.text), "training": asdict(self.training),
            "synthetic": self.synthetic.as_dict(), "align": self.align.as_dict(),
            "resources": {k: dict(v) for k, v in self.resources.items()}, "run": dict(self.run),
        }
        return out


def parse_newsrec_config(text: str) -> dict:
    """Metaflow ``Config`` parser: validate the YAML now (clear errors at start-up) and return the
    complete settings (defaults filled in, so ``config_expr`` finds every key)."""
    return NewsRecConfig.from_dict(yaml_mapping(text)).as_dict()
