"""YAML config text → a mapping, with a :class:`ConfigError` for anything else (shared by the flows' configs)."""

from __future__ import annotations

from typing import Any, Mapping

import yaml

from steps.errors import ConfigError


def yaml_mapping(text: str) -> Mapping[str, Any]:
    """Parse ``text``; an empty document is an empty mapping."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config is not valid YAML: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config must be a mapping of keys to values, got {type(raw).__name__}")
    return raw
