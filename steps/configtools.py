"""Validation helpers shared by every flow's config parser (errors name the key and the value)."""

from __future__ import annotations

import math
from dataclasses import field
from typing import Any, Mapping

import yaml

from configs import config_path
from steps.errors import ConfigError


def _read_defaults() -> dict[str, Any]:
    with open(config_path("defaults.yaml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


#: ``configs/defaults.yaml``: the run settings and every flow's per-step resources.
DEFAULTS: dict[str, Any] = _read_defaults()
#: How a flow runs on a cluster (``run:`` in ``configs/defaults.yaml``).
DEFAULT_RUN: dict[str, Any] = dict(DEFAULTS["run"])


def resources_field(defaults: Mapping[str, Mapping[str, int]]):
    """A config dataclass's ``resources`` field: a fresh copy of ``defaults`` per instance."""
    return field(default_factory=lambda: {k: dict(v) for k, v in defaults.items()})


def run_field():
    """A config dataclass's ``run`` field: a fresh copy of :data:`DEFAULT_RUN` per instance."""
    return field(default_factory=lambda: dict(DEFAULT_RUN))


def default_resources(flow: str) -> dict[str, dict[str, int]]:
    """The per-step compute requests of ``flow`` (``align``, ``newsrec``, ``tail``, ``explain``)
    from ``configs/defaults.yaml``: step group -> {cpu, memory, gpu}."""
    return {step: dict(req) for step, req in DEFAULTS["resources"][flow].items()}


def number(key: str, value: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ConfigError(f"{key}: {value!r} is out of range ({'>' if lo_open else '>='} {lo} required)")
    if hi is not None and value > hi:
        raise ConfigError(f"{key}: {value!r} is out of range (<= {hi} required)")
    return float(value)


def integer(key: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{key}: expected an integer >= {lo}, got {value!r}")
    return int(value)


#: What a step group's ``resources`` may set: the compute request (``@resources``) and
#: ``blas_threads``, the cap on OpenBLAS threads in its tasks (0 = the library's default).
RESOURCE_KEYS = ("cpu", "memory", "gpu", "blas_threads")


def parse_resources(raw: Any, defaults: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """``resources: {step: {cpu, memory, gpu, blas_threads}}`` merged over ``defaults`` (every step
    keeps all its keys)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"resources: expected a mapping step -> {{cpu, memory, gpu}}, got {raw!r}")
    out = {k: dict(v) for k, v in defaults.items()}
    for step_name, req in raw.items():
        if step_name not in defaults:
            raise ConfigError(f"resources: unknown step group {step_name!r}; use {sorted(defaults)}")
        if not isinstance(req, Mapping):
            raise ConfigError(f"resources.{step_name}: expected a mapping, got {req!r}")
        for key, value in req.items():
            if key not in RESOURCE_KEYS:
                raise ConfigError(f"resources.{step_name}: unknown key {key!r}; use {', '.join(RESOURCE_KEYS)}")
            out[step_name][key] = integer(f"resources.{step_name}.{key}", value, 1 if key in ("cpu", "memory") else 0)
    return out


def parse_run_settings(raw: Any, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``run: {retries, minutes_between_retries, timeout_minutes, on_cell_failure}``."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"run: expected a mapping, got {raw!r}")
    out = dict(defaults)
    for key, value in raw.items():
        if key not in defaults:
            raise ConfigError(f"run: unknown key {key!r}; use {sorted(defaults)}")
        if key == "on_cell_failure":
            if value not in ("stop", "continue"):
                raise ConfigError(f"run.on_cell_failure: expected 'stop' or 'continue', got {value!r}")
            out[key] = value
        else:
            out[key] = integer(f"run.{key}", value, 1 if key == "timeout_minutes" else 0)
    return out


def yaml_mapping(text: str) -> Mapping[str, Any]:
    """Parse a config's YAML text; an empty document is an empty mapping."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config is not valid YAML: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config must be a mapping of keys to values, got {type(raw).__name__}")
    return raw


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{key}: unknown value {value!r}; choose from {list(choices)}")
    return value


def common_fields(raw: Mapping[str, Any], allowed: set[str] | frozenset[str],
                  resources: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, Any]:
    """The part every flow config shares: reject unknown keys, then parse ``name`` (non-empty
    string), ``seed`` (integer >= 0), ``resources`` (over ``resources`` defaults) and ``run``."""
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; allowed keys: {sorted(allowed)}")
    d: dict[str, Any] = {}
    if "name" in raw:
        if not isinstance(raw["name"], str) or not raw["name"]:
            raise ConfigError(f"name: expected a non-empty string, got {raw['name']!r}")
        d["name"] = raw["name"]
    if "seed" in raw:
        d["seed"] = integer("seed", raw["seed"], 0)
    if "resources" in raw and resources is not None:
        d["resources"] = parse_resources(raw["resources"], resources)
    if "run" in raw:
        d["run"] = parse_run_settings(raw["run"], DEFAULT_RUN)
    return d


def refuse_unknown_keys(section: str, d: Mapping[str, Any], cls, listed: str = "allowed:") -> None:
    """A :class:`ConfigError` naming the keys of ``d`` that are not fields of the dataclass ``cls``
    (then ``listed`` and the fields)."""
    unknown = set(d) - set(cls.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {sorted(unknown)}; {listed} {sorted(cls.__dataclass_fields__)}")


def refuse_failed_checks(section: str, spec: Any, checks) -> None:
    """A :class:`ConfigError` for the first ``(field name, ok)`` of ``checks`` that is not ok."""
    for name, ok in checks:
        if not ok:
            raise ConfigError(f"{section}.{name}: invalid value {getattr(spec, name)!r}")


def training_seeds(raw: Mapping[str, Any], seed: int) -> tuple[int, ...]:
    """``seeds:`` of a training flow (a non-empty list of distinct integers >= 0); absent: ``(seed,)``."""
    if "seeds" not in raw or raw["seeds"] is None:
        return (seed,)
    value = raw["seeds"]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"seeds: expected a non-empty list of distinct integers >= 0 (training seeds), got {value!r}")
    seeds = tuple(integer(f"seeds[{i}]", v, 0) for i, v in enumerate(value))
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ConfigError(f"seeds: {value!r} repeats {dup}; the training seeds must be distinct")
    return seeds


class TrainingSeedsMixin:
    """For frozen config dataclasses with ``seed`` and ``seeds`` fields: an empty ``seeds`` means
    "train once, with ``seed``" (configs written before ``seeds`` existed behave as they did)."""

    def __post_init__(self) -> None:
        if not self.seeds:
            object.__setattr__(self, "seeds", (self.seed,))

    @property
    def several_seeds(self) -> bool:
        return len(self.seeds) > 1
