"""Decorators shared by recalign's flows."""

from __future__ import annotations

from metaflow import StepMutator, catch

from steps.faults import CELL_FAILURE


class catch_cells(StepMutator):
    """Add ``@catch`` to a fan-out step when the config says a partial grid is still useful.

    With ``run.on_cell_failure: stop`` (the default) a failing cell fails the run, which can then
    be resumed (``resume --origin-run-id``); with ``continue`` the run goes on, the failed cell's
    exception is kept in the artifact ``cell_failure`` and the report lists the failed cells.
    """

    def pre_mutate(self, mutable_step) -> None:
        config = mutable_step.flow.config
        if config.get("run", {}).get("on_cell_failure", "stop") == "continue":
            mutable_step.add_decorator(catch, deco_kwargs={"var": CELL_FAILURE, "print_exception": True})


def resources_from(group: str):
    """``@resources`` with cpu/memory/gpu read from ``config.resources.<group>``."""
    from metaflow import config_expr, resources

    return resources(
        cpu=config_expr(f"config.resources.{group}.cpu"),
        memory=config_expr(f"config.resources.{group}.memory"),
        gpu=config_expr(f"config.resources.{group}.gpu"),
    )


def retry_from_config():
    """``@retry`` for steps that read remote inputs (count and delay from ``config.run``)."""
    from metaflow import config_expr, retry

    return retry(times=config_expr("config.run.retries"), minutes_between_retries=config_expr("config.run.minutes_between_retries"))


def timeout_from_config():
    """``@timeout`` for long steps (``config.run.timeout_minutes``)."""
    from metaflow import config_expr, timeout

    return timeout(minutes=config_expr("config.run.timeout_minutes"))
