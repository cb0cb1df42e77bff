"""Reading inputs from finished runs through the Metaflow Client."""

from __future__ import annotations

from steps.align.pipeline import dump_of_run, parse_predictions_from
from steps.errors import InputError


def finished_run(pathspec: str, what: str, error=InputError, require_success: bool = True):
    """The Metaflow ``Run`` at ``pathspec`` (any namespace); ``error(f"{what}: …")`` when it does not
    exist or (``require_success``) did not finish successfully."""
    from metaflow import Run, namespace

    namespace(None)
    try:
        run = Run(pathspec)
    except Exception as exc:  # the Client raises several types for a missing run
        raise error(f"{what}: run {pathspec} not found ({exc})") from exc
    if require_success and not run.successful:
        raise error(f"{what}: run {pathspec} did not finish successfully")
    return run


def dump_source(predictions_from: str, predictions: str, articles: str) -> tuple[str, str]:
    """The prediction dump and articles file to align: ``--predictions``/``--articles`` as given, or
    the dump of a finished run named by ``--predictions-from NewsRecFlow/<run_id>[/<model>]``."""
    if not predictions_from:
        return predictions, articles
    if predictions or articles:
        raise InputError("give either --predictions-from or --predictions/--articles, not both")
    pathspec, model = parse_predictions_from(predictions_from)
    source = finished_run(pathspec, f"--predictions-from {predictions_from!r}", require_success=False).data
    return dump_of_run(predictions_from, source.predictions, source.articles_path, model)


def candidates_of_run(spec: str):
    """The verified local folder of a finished run's candidate bundle, named by
    ``TailFlow/<run_id>[/<dataset>]/<method>`` or ``ExplainFlow/<run_id>[/gru4rec]`` (see
    :mod:`steps.bundles`); read it with :func:`steps.candidates.read_candidate_bundle`."""
    from steps.bundles import bundle_of_run, parse_candidates_from

    pathspec, name = parse_candidates_from(spec)
    run = finished_run(pathspec, f"--candidates-from {spec!r}")
    try:
        candidates = run.data.candidates
    except (AttributeError, KeyError):
        candidates = None
    return bundle_of_run(spec, candidates, name)
