"""Reading inputs from finished runs through the Metaflow Client."""

from __future__ import annotations

from steps.align.pipeline import dump_of_run, parse_predictions_from
from steps.errors import InputError


def dump_source(predictions_from: str, predictions: str, articles: str) -> tuple[str, str]:
    """The prediction dump and articles file to align: ``--predictions``/``--articles`` as given, or
    the dump of a finished run named by ``--predictions-from NewsRecFlow/<run_id>[/<model>]``."""
    if not predictions_from:
        return predictions, articles
    if predictions or articles:
        raise InputError("give either --predictions-from or --predictions/--articles, not both")
    from metaflow import Run, namespace

    pathspec, model = parse_predictions_from(predictions_from)
    namespace(None)
    try:
        source = Run(pathspec).data
    except Exception as exc:  # the Client raises several types for a missing run
        raise InputError(f"--predictions-from {predictions_from!r}: run {pathspec} not found ({exc})") from exc
    return dump_of_run(predictions_from, source.predictions, source.articles_path, model)


def candidates_of_run(spec: str):
    """The verified local folder of a finished run's candidate bundle, named by
    ``TailFlow/<run_id>[/<dataset>]/<method>`` or ``ExplainFlow/<run_id>[/gru4rec]`` (see
    :mod:`steps.bundles`); read it with :func:`steps.candidates.read_candidate_bundle`."""
    from metaflow import Run, namespace

    from steps.bundles import bundle_of_run, parse_candidates_from

    pathspec, name = parse_candidates_from(spec)
    namespace(None)
    try:
        run = Run(pathspec)
    except Exception as exc:  # the Client raises several types for a missing run
        raise InputError(f"--candidates-from {spec!r}: run {pathspec} not found ({exc})") from exc
    if not run.successful:
        raise InputError(f"--candidates-from {spec!r}: run {pathspec} did not finish successfully")
    try:
        candidates = run.data.candidates
    except (AttributeError, KeyError):
        candidates = None
    return bundle_of_run(spec, candidates, name)
