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
