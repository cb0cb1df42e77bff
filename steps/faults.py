"""Deliberate failures for fault-injection tests (resume after a crashed fan-out task).

A step calls ``maybe_fail("align", "Uniform/steck")``; it raises when the environment variable
``RECALIGN_FAIL_AT`` holds ``align:Uniform/steck`` (several comma-separated entries allowed, ``*``
matches any key). An environment variable is used rather than a flow parameter because Metaflow
freezes parameters on ``resume``: the resumed task must be able to succeed.
"""

from __future__ import annotations

import fnmatch
import os

from steps.errors import InjectedFailure

FAIL_AT_ENV = "RECALIGN_FAIL_AT"
#: Artifact holding a fan-out task's exception when the flow continues past failed cells (@catch).
CELL_FAILURE = "cell_failure"


def maybe_fail(stage: str, key: str = "", environ: dict[str, str] | None = None) -> None:
    """Raise :class:`InjectedFailure` when ``stage:key`` matches an entry of ``RECALIGN_FAIL_AT``."""
    spec = (environ if environ is not None else os.environ).get(FAIL_AT_ENV, "")
    here = f"{stage}:{key}"
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        if fnmatch.fnmatchcase(here, entry):
            raise InjectedFailure(f"injected failure at {here} ({FAIL_AT_ENV}={spec!r})")


def failed_cells(tasks, label) -> list[str]:
    """``"<label(task)>: <exception>"`` for every joined task that failed under ``@catch``."""
    return [f"{label(t)}: {getattr(t, CELL_FAILURE)}" for t in tasks if getattr(t, CELL_FAILURE, None)]
