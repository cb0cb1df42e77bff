"""Errors raised for bad user input: each names the file, column, row/parameter and value."""

from __future__ import annotations


class RecalignError(Exception):
    """Base class of recalign's own errors."""


class InputError(RecalignError, ValueError):
    """A data file is missing, malformed or holds a value the methods cannot use."""


class ConfigError(RecalignError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class InjectedFailure(RecalignError, RuntimeError):
    """Raised on purpose by :func:`steps.faults.maybe_fail` to test resume."""
